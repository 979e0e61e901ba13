"""The annotation workspace in real Chromium, against the live server and a real frame store:
drawing the nodule on two keyframes and a microcalcification, interpolation, reload, keyboard
stepping, two windows editing one annotation (409 and merge), a dropped network, the review
round trip with a frame-pinned comment, the lock, and tenancy."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from annotations.models import Annotation
from tests.conftest import make_user

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
FRAMES, CHUNK, W, H = 40, 16, 160, 120


def frame_image(index: int) -> np.ndarray:
    image = np.full((H, W, 3), 50, np.uint8)
    x = (index * 3) % (W - 10)
    image[:, x:x + 10] = 220  # a bar whose position encodes the frame
    return image


@pytest.fixture
def video(settings, tmp_path, centre_a, case_tree):
    from annotations.framestore import ChunkWriter

    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(tmp_path / "media")}}}
    tree = case_tree(centre_a)
    v = tree["video"]
    prefix = f"frames/CA/{v.pk}/v1"
    folder = tmp_path / "media" / prefix
    folder.mkdir(parents=True)
    writer = ChunkWriter(folder, CHUNK)
    for i in range(FRAMES):
        writer.add(cv2.imencode(".jpg", frame_image(i))[1].tobytes())
    writer.flush()
    v.frames_prefix, v.frames_chunk_size, v.frames_version = prefix, CHUNK, 1
    v.frame_count, v.width, v.height, v.fps = FRAMES, W, H, 25.0
    v.save()
    return v


def signed_in(browser, live_server, user):
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME,
                          "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
                          "url": live_server.url}])
    page = context.new_page()
    page.set_default_timeout(15000)
    # Shown with a failing test's output: what the page itself complained about.
    page.on("pageerror", lambda exc: print(f"[{user.username}] page error: {exc}"))
    page.on("console", lambda msg: print(f"[{user.username}] console: {msg.text}"))
    return context, page


def open_workspace(page, url):
    page.goto(url)
    page.wait_for_function("document.querySelector('#player canvas').dataset.frame === '0'")
    page.wait_for_function(
        "document.querySelector('[data-testid=save-status]').textContent.length > 0")


def goto_frame(page, frame: int):
    page.evaluate(f"thyroWorkspace.player.seek({frame})")
    page.wait_for_function(f"document.querySelector('#player canvas').dataset.frame === '{frame}'")


def client_xy(page, x, y):
    return page.evaluate(f"thyroWorkspace.frameToClient({x}, {y})")


def drag_box(page, box):
    page.locator("#player canvas").scroll_into_view_if_needed()
    x0, y0 = client_xy(page, box[0], box[1])
    x1, y1 = client_xy(page, box[2], box[3])
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=4)
    page.mouse.up()


def click_frame_point(page, x, y):
    page.locator("#player canvas").scroll_into_view_if_needed()
    cx, cy = client_xy(page, x, y)
    page.mouse.click(cx, cy)


def wait_saved(page):
    page.wait_for_function(
        "document.querySelector('[data-testid=save-status]').dataset.kind === 'saved'")


def pixel_at(page, x, y) -> list[int]:
    return page.evaluate(f"""() => {{
        const c = document.querySelector('#player canvas');
        const p = thyroWorkspace.player.view().toCanvas({x}, {y});
        return Array.from(c.getContext('2d').getImageData(Math.round(p[0]),
                                                          Math.round(p[1]), 1, 1).data);
    }}""")


def canvas_sum(page) -> int:
    return page.evaluate("""() => {
        const c = document.querySelector('#player canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] * (i % 997); return s;
    }""")


def test_draw_interpolate_mark_and_reload(live_server, chromium_browser, video, centre_a):
    user = make_user("annotator", centre_a)
    context, page = signed_in(chromium_browser, live_server, user)
    open_workspace(page, f"{live_server.url}/videos/{video.pk}/annotate/")
    annotation = Annotation.objects.get(video=video, annotator=user)

    drag_box(page, (20, 20, 60, 50))  # frame 0
    # Keyboard stepping lands on exact frames, and the picture changes between frames.
    before = canvas_sum(page)
    page.keyboard.press("ArrowRight")
    page.wait_for_function("document.querySelector('#player canvas').dataset.frame === '1'")
    assert canvas_sum(page) != before
    page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("document.querySelector('#player canvas').dataset.frame === '20'")
    assert "Frame 20 / 39" in page.get_by_test_id("frame-counter").inner_text()
    drag_box(page, (80, 40, 140, 100))  # frame 20

    goto_frame(page, 10)
    info = page.get_by_test_id("track-info").inner_text()
    assert info.startswith("Frame 10: interpolated box")
    got = [float(v) for v in info.split("box ")[1].split(", ")]
    assert got == pytest.approx([50, 30, 100, 75], abs=0.6)  # halfway between the keyframes

    # "Outside" from frame 30 on; the timeline strip takes a click to a frame.
    goto_frame(page, 30)
    page.get_by_role("button", name="Nodule leaves the view here").click()
    assert page.get_by_test_id("track-info").inner_text() == (
        "Frame 30: nodule outside the view (keyframe)")
    strip = page.get_by_test_id("timeline").bounding_box()
    page.mouse.click(strip["x"] + strip["width"] * 35.5 / FRAMES, strip["y"] + 5)
    page.wait_for_function("document.querySelector('#player canvas').dataset.frame === '35'")
    assert page.get_by_test_id("track-info").inner_text() == "Frame 35: nodule not visible"

    page.keyboard.press("c")  # calcification tool; microcalcification is the first type
    goto_frame(page, 7)
    click_frame_point(page, 100, 60)
    wait_saved(page)
    red = pixel_at(page, 100, 60)
    assert red[0] - red[1] > 60, red  # the mark is drawn (red) on frame 7

    # The TI-RADS form: points add up on the server; 12 mm at TR5 calls for FNA (ACR 2017).
    page.get_by_label("TI-RADS composition").select_option("solid")
    page.get_by_label("TI-RADS echogenicity").select_option("hypo")
    page.get_by_label("TI-RADS shape").select_option("wider")
    page.get_by_label("TI-RADS margin").select_option("smooth")
    result = page.get_by_test_id("tirads-result")
    wait_saved(page)
    assert "Fill in every category" in result.inner_text()
    page.get_by_label("Punctate echogenic foci").check()
    page.get_by_label("Macrocalcifications").check()
    page.wait_for_function("document.querySelector('[data-testid=tirads-result]')"
                           ".textContent.startsWith('TR5')")
    assert result.inner_text() == "TR5 Highly suspicious: 8 points \u00b7 FNA"
    wait_saved(page)

    page.reload()
    open_workspace(page, page.url)
    assert page.get_by_label("Macrocalcifications").is_checked()
    assert page.get_by_label("TI-RADS echogenicity").input_value() == "hypo"
    assert result.inner_text().startswith("TR5 Highly suspicious: 8 points")
    annotation.refresh_from_db()
    keys = annotation.data["tracks"][0]["keyframes"]
    assert [k["frame"] for k in keys] == [0, 20, 30] and keys[2]["outside"]
    assert keys[0]["box"] == pytest.approx([20, 20, 60, 50], abs=0.6)
    [mark] = annotation.data["marks"]
    assert (mark["type"], mark["shape"], mark["frame_start"], mark["frame_end"]) == (
        "punctate", "point", 7, 7)
    assert mark["points"][0] == pytest.approx([100, 60], abs=0.6)
    assert "frame 7" in page.get_by_test_id("marks").inner_text()
    goto_frame(page, 10)
    assert page.get_by_test_id("track-info").inner_text() == info
    goto_frame(page, 7)
    red = pixel_at(page, 100, 60)
    assert red[0] - red[1] > 60, red
    goto_frame(page, 8)
    grey = pixel_at(page, 100, 60)
    assert abs(grey[0] - grey[1]) < 20, grey  # on its own frame only
    context.close()


def test_two_windows_conflict_merge_and_offline_draft(live_server, chromium_browser, video,
                                                      centre_a):
    user = make_user("annotator", centre_a)
    ctx_a, a = signed_in(chromium_browser, live_server, user)
    ctx_b, b = signed_in(chromium_browser, live_server, user)
    open_workspace(a, f"{live_server.url}/videos/{video.pk}/annotate/")
    open_workspace(b, a.url)
    for page in (a, b):
        page.keyboard.press("c")

    goto_frame(a, 3)
    click_frame_point(a, 30, 30)
    wait_saved(a)
    goto_frame(b, 5)
    click_frame_point(b, 90, 90)  # based on version 1: stale
    dialog = b.get_by_role("alertdialog", name="Conflicting change")
    dialog.wait_for()
    assert "now version 2" in dialog.inner_text()
    b.get_by_role("button", name="Merge: keep both, mine on top").click()
    wait_saved(b)
    annotation = Annotation.objects.get(video=video, annotator=user)
    assert sorted(m["frame_start"] for m in annotation.data["marks"]) == [3, 5]
    assert annotation.version == 3

    # The merge itself, three-way by id: my deletion and my edit win, their edit of an item I
    # left alone stays, their new item stays.
    merged = b.evaluate("""() => {
        const m = (id, x) => ({id: id, type: 'punctate', shape: 'point', frame_start: 1,
                               frame_end: 1, points: [[x, x]]});
        const base = {tracks: [], marks: [m('a', 1), m('b', 2), m('c', 3)], tirads: {}};
        const theirs = {tracks: [], marks: [m('a', 1), m('b', 20), m('c', 3), m('d', 4)],
                        tirads: {margin: 'smooth'}};
        const mine = {tracks: [], marks: [m('b', 2), m('c', 30)], tirads: {shape: 'taller'}};
        const out = thyroWorkspace.merge(base, theirs, mine);
        return {marks: out.marks.map(x => x.id + ':' + x.points[0][0]).sort(),
                tirads: out.tirads};
    }""")
    assert merged == {"marks": ["b:20", "c:30", "d:4"],
                      "tirads": {"margin": "smooth", "shape": "taller"}}

    # A dropped network keeps a local draft and retries until the server has it.
    ctx_b.set_offline(True)
    goto_frame(b, 9)
    click_frame_point(b, 60, 60)
    b.wait_for_function(
        "document.querySelector('[data-testid=save-status]').dataset.kind === 'offline'")
    draft = b.evaluate(f"localStorage.getItem('thyrocine-annotation-draft-{annotation.pk}')")
    assert '"frame_start":9' in draft
    ctx_b.set_offline(False)
    b.wait_for_function(
        "document.querySelector('[data-testid=save-status]').dataset.kind === 'saved'",
        timeout=30000)
    annotation.refresh_from_db()
    assert sorted(m["frame_start"] for m in annotation.data["marks"]) == [3, 5, 9]
    assert b.evaluate(f"localStorage.getItem('thyrocine-annotation-draft-{annotation.pk}')") \
        is None
    # Undo removes the last mark, redo brings it back (both saved).
    b.keyboard.press("Control+z")
    b.wait_for_function("document.querySelector('[data-testid=mark-count]').textContent === '(2)'")
    b.keyboard.press("Control+Shift+z")
    b.wait_for_function("document.querySelector('[data-testid=mark-count]').textContent === '(3)'")
    wait_saved(b)
    ctx_a.close()
    ctx_b.close()


def test_review_round_trip_and_lock(live_server, chromium_browser, video, centre_a):
    annotator = make_user("annotator", centre_a)
    reviewer = make_user("centre_admin", centre_a)
    ctx_a, a = signed_in(chromium_browser, live_server, annotator)
    ctx_r, r = signed_in(chromium_browser, live_server, reviewer)
    open_workspace(a, f"{live_server.url}/videos/{video.pk}/annotate/")
    drag_box(a, (20, 20, 60, 50))
    wait_saved(a)
    a.get_by_role("button", name="Submit for review").click()
    a.get_by_test_id("state").filter(has_text="Submitted").wait_for()

    r.goto(f"{live_server.url}/centres/{centre_a.code}/review/")
    r.get_by_role("link", name=annotator.username).click()
    r.wait_for_function("document.querySelector('#player canvas').dataset.frame === '0'")
    goto_frame(r, 12)
    r.get_by_label("Comment on this frame").fill("The nodule is larger here")
    r.get_by_role("button", name="Request changes").click()
    r.get_by_test_id("state").filter(has_text="Changes requested").wait_for()

    a.reload()
    open_workspace(a, a.url)
    comment = a.get_by_test_id("comment")
    assert "The nodule is larger here" in comment.inner_text()
    comment.get_by_role("button", name="Frame 12").click()
    a.wait_for_function("document.querySelector('#player canvas').dataset.frame === '12'")
    drag_box(a, (10, 10, 90, 80))  # the fix: a keyframe on frame 12
    assert a.get_by_test_id("track-info").inner_text().startswith("Frame 12: keyframe")
    wait_saved(a)
    comment.get_by_label("addressed").check()  # the annotator ticks the comment off
    a.wait_for_function(
        "document.querySelector('[data-testid=comment]').classList.contains('resolved')")
    a.get_by_role("button", name="Submit for review").click()
    a.get_by_test_id("state").filter(has_text="Submitted").wait_for()

    r.reload()
    # The reviewer sees it ticked before accepting.
    r.get_by_test_id("comment").get_by_label("addressed").wait_for()
    assert r.get_by_test_id("comment").get_by_label("addressed").is_checked()
    r.get_by_role("button", name="Accept").click()
    r.get_by_test_id("state").filter(has_text="Accepted").wait_for()
    annotation = Annotation.objects.get(video=video, annotator=annotator)
    assert annotation.state == "accepted"
    assert [k["frame"] for k in annotation.data["tracks"][0]["keyframes"]] == [0, 12]

    # The reviewer adjudicates the consensus from it: what training uses, once accepted.
    from annotations.selectors import consensus_annotations_for

    r.get_by_role("button", name="Start the consensus from this annotation").click()
    r.wait_for_url("**/annotations/*/")
    r.get_by_role("heading", name="Consensus annotation").wait_for()
    r.wait_for_function("document.querySelector('#player canvas').dataset.frame === '0'")
    assert not consensus_annotations_for(centre=centre_a).exists()
    r.get_by_role("button", name="Accept").click()
    r.get_by_test_id("state").filter(has_text="Accepted").wait_for()
    [consensus] = consensus_annotations_for(centre=centre_a)
    assert consensus.data["tracks"] == annotation.data["tracks"]

    a.reload()
    open_workspace(a, a.url)
    assert "Read only: accepted" in a.get_by_test_id("save-status").inner_text()
    assert a.get_by_role("button", name="Submit for review").is_hidden()
    goto_frame(a, 30)
    drag_box(a, (5, 5, 50, 50))  # ignored: locked
    a.wait_for_timeout(800)
    annotation.refresh_from_db()
    assert annotation.state == "accepted" and len(annotation.data["tracks"][0]["keyframes"]) == 2
    status = a.evaluate(f"""fetch('/api/annotations/{annotation.pk}/', {{method: 'PUT',
        headers: {{'Content-Type': 'application/json', 'X-CSRFToken':
                  document.cookie.match(/csrftoken=([^;]+)/)[1]}},
        body: JSON.stringify({{version: {annotation.version}, data: {{}}}})}})
        .then(r => r.status)""")
    assert status == 403
    ctx_a.close()
    ctx_r.close()


def test_other_centre_annotator_gets_404(live_server, chromium_browser, video, centre_a,
                                        centre_b):
    owner = make_user("annotator", centre_a)
    from annotations import workspace

    annotation, _ = workspace.annotation_start(video=video, user=owner)
    stranger = make_user("annotator", centre_b)
    context, page = signed_in(chromium_browser, live_server, stranger)
    for url in (f"/videos/{video.pk}/annotate/", f"/annotations/{annotation.pk}/",
                f"/api/annotations/{annotation.pk}/", f"/api/videos/{video.pk}/annotations/",
                f"/files/videos/{video.pk}/v1/chunks/0"):
        response = page.goto(live_server.url + url)
        assert response.status == 404, url
    context.close()
