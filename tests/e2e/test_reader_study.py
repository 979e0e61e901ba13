"""Browser: a reader reads a two-case study in real Chromium, unaided then aided, sees the
model's probability only in the aided read, resumes after a reload, and finishes."""

import cv2
import numpy as np
import pytest

from tests.conftest import make_user
from tests.factories import UserFactory
from tests.webapp.review.conftest import labelled_video, predict, production_version

pytestmark = pytest.mark.e2e
FRAMES, CHUNK, W, H = 12, 8, 96, 64


def with_frames(video, tmp_path):
    from annotations.framestore import ChunkWriter

    prefix = f"frames/CA/{video.pk}/v1"
    folder = tmp_path / "media" / prefix
    folder.mkdir(parents=True)
    writer = ChunkWriter(folder, CHUNK)
    for i in range(FRAMES):
        image = np.full((H, W, 3), 40 + 10 * i, np.uint8)
        writer.add(cv2.imencode(".jpg", image)[1].tobytes())
    writer.flush()
    video.frames_prefix, video.frames_chunk_size, video.frames_version = prefix, CHUNK, 1
    video.frame_count, video.width, video.height, video.fps = FRAMES, W, H, 25.0
    video.save()
    return video


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
    page.on("pageerror", lambda exc: print(f"page error: {exc}"))
    return context, page


def read_case(page, likelihood: str, call: str, level: str):
    page.get_by_label("Likelihood of malignancy (0-100)").fill(likelihood)
    page.get_by_label(call, exact=True).check()
    page.get_by_label("TI-RADS level").select_option(level)
    page.get_by_test_id("submit-read").click()


@pytest.mark.django_db(transaction=True)
def test_reader_reads_unaided_then_aided(live_server, chromium_browser, settings, tmp_path,
                                         centre_a):
    from webapp.review import services
    from webapp.review.models import Read, StudyStatus

    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(tmp_path / "media")}}}
    videos = [with_frames(labelled_video(centre_a, malignant=m), tmp_path) for m in (True, False)]
    version = production_version()
    predict(videos[0], version, 0.87)
    predict(videos[1], version, 0.23)
    reader = UserFactory(username="rita")
    study = services.study_create(
        user=make_user("platform_admin", centre_a), name="Two-case study", design="sequential",
        videos=videos, readers=[(reader, "junior"), (UserFactory(username="sam"), "senior")])
    shown = {r.case.video_id: r for r in Read.objects.filter(reader__user=reader)}
    assert len(shown) == 2

    context, page = signed_in(chromium_browser, live_server, reader)
    page.goto(f"{live_server.url}/review/studies/")
    page.get_by_role("link", name="Two-case study").click()
    page.get_by_test_id("start-reading").click()
    for case_number in (1, 2):
        heading = page.get_by_test_id("read-heading")
        assert heading.inner_text().startswith(f"Case {case_number} of 2")
        assert page.get_by_test_id("modality").inner_text() == "Unaided read"
        page.wait_for_function("document.querySelector('#player canvas').dataset.frame === '0'")
        assert page.get_by_test_id("model-panel").count() == 0
        assert "Malignant" not in page.locator("main h1").inner_text()
        if case_number == 2:  # a reload resumes the same case, same modality
            page.reload()
            assert page.get_by_test_id("read-heading").inner_text().startswith("Case 2 of 2")
        read_case(page, "70", "Malignant", "TR4")

        assert page.get_by_test_id("modality").inner_text() == "Aided read"
        read = Read.objects.get(reader__user=reader, modality="aided", started_at__isnull=False,
                                submitted_at__isnull=True)
        expected = {videos[0].pk: "0.87", videos[1].pk: "0.23"}[read.case.video_id]
        assert page.get_by_test_id("model-probability").inner_text() == expected
        read_case(page, "80" if expected == "0.87" else "30",
                  "Malignant" if expected == "0.87" else "Benign", "TR3")

    assert page.get_by_test_id("reading-done").is_visible()
    reads = Read.objects.filter(reader__user=reader).order_by("order")
    assert [r.modality for r in reads] == ["unaided", "aided"] * 2
    assert all(r.submitted_at and r.seconds is not None for r in reads)
    aided = {r.case.video_id: r for r in reads if r.modality == "aided"}
    assert aided[videos[1].pk].likelihood == 30 and aided[videos[1].pk].call == "benign"
    study.refresh_from_db()
    assert study.status == StudyStatus.OPEN  # the senior has yet to read
    context.close()
