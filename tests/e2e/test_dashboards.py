"""The dashboards in real Chromium against the live server: the performance dashboard draws a
centre's ROC curve with the Plotly bundle served locally, and the case review page draws the
model's heatmap over the video from a real frame store (the canvas changes when the overlay is
toggled, and the overlay changes between frames)."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from tests.conftest import make_user
from tests.e2e.test_annotation_workspace import signed_in
from tests.webapp.dashboards.conftest import blob_maps, heatmaps_npz, make_world

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
FRAMES, CHUNK, W, H = 40, 16, 160, 120


def frame_image(index: int) -> np.ndarray:
    image = np.full((H, W, 3), 60, np.uint8)
    image[:, (index * 3) % (W - 10):(index * 3) % (W - 10) + 10] = 200
    return image


@pytest.fixture
def media(settings, tmp_path):
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(tmp_path / "media")}}}
    return tmp_path / "media"


@pytest.fixture
def world(media, centre_a, centre_b):
    from annotations.framestore import ChunkWriter

    world = make_world(centre_a, centre_b, n=6)
    video = world.videos["CA"][0]
    prefix = f"frames/CA/{video.pk}/v1"
    folder = media / prefix
    folder.mkdir(parents=True)
    writer = ChunkWriter(folder, CHUNK)
    for i in range(FRAMES):
        writer.add(cv2.imencode(".jpg", frame_image(i))[1].tobytes())
    writer.flush()
    video.frames_prefix, video.frames_chunk_size, video.frames_version = prefix, CHUNK, 1
    video.frame_count, video.width, video.height, video.fps = FRAMES, W, H, 25.0
    video.save()
    prediction = world.predictions[("irv2_cam", video.pk)]
    prediction.heatmaps = default_storage.save(
        f"predictions/CA/{video.pk}/m1.npz",
        ContentFile(heatmaps_npz(seed=2, frames=FRAMES, h=12, w=16)))
    prediction.region = [0, 0, W, H]
    prediction.save()
    world.review = prediction
    return world


# Canvas snapshots stay in the page; only sums of differences cross to Python.
SNAP = """(name) => {
  const c = document.querySelector('#player canvas');
  window.snaps = window.snaps || {};
  window.snaps[name] = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
}"""
DIFF = """([a, b, c, d]) => {
  // sum |(a - b) - (c - d)|, or sum |a - b| without c and d
  const s = window.snaps;
  let total = 0;
  for (let i = 0; i < s[a].length; i++) {
    total += Math.abs((s[a][i] - s[b][i]) - (c ? s[c][i] - s[d][i] : 0));
  }
  return total;
}"""


def snap(page, name: str):
    page.evaluate(SNAP, name)


def diff(page, *names) -> int:
    return page.evaluate(DIFF, [*names, None, None][:4])


def show_frame(page, frame: int):
    page.evaluate(f"thyroReview.player.seek({frame})")
    page.wait_for_function(
        f"document.querySelector('#player canvas').dataset.frame === '{frame}'")


def test_dashboard_roc_and_case_review_heatmap(live_server, chromium_browser, world, centre_a):
    context, page = signed_in(chromium_browser, live_server, make_user("ml_engineer", centre_a))
    study = world.versions["irv2_cam"]
    page.goto(f"{live_server.url}/dashboards/?model={study.pk}&split=test")
    page.wait_for_selector("#roc-chart svg.main-svg")
    legend = page.eval_on_selector_all("#roc-chart .legendtext",
                                       "els => els.map(e => e.textContent)")
    assert any(t.startswith("CA (n=6") for t in legend), legend
    assert page.locator("#roc-chart .scatterlayer .trace").count() >= 3
    assert page.locator("#calibration-chart svg.main-svg").count() >= 1
    scripts = page.eval_on_selector_all("script[src]", "els => els.map(e => e.src)")
    assert all(s.startswith(live_server.url) for s in scripts), scripts

    page.goto(f"{live_server.url}/dashboards/cases/{world.review.pk}/?model={study.pk}"
              "&split=test")
    page.wait_for_function("document.querySelector('#player').dataset.heatmaps === 'loaded'")
    page.uncheck("#show-marks")
    show_frame(page, 20)
    snap(page, "on20")
    page.uncheck("#show-gradcam")
    snap(page, "off20")
    assert diff(page, "on20", "off20") > 1000  # the heatmap is drawn over the video
    page.check("#show-gradcam")
    snap(page, "on20again")
    assert diff(page, "on20", "on20again") == 0

    # Between frames, the overlay itself changes (not just the video under it).
    show_frame(page, 5)
    snap(page, "on5")
    page.uncheck("#show-gradcam")
    snap(page, "off5")
    assert diff(page, "on5", "off5", "on20", "off20") > 1000

    # Clicking the timeline seeks.
    timeline = page.locator("#heat-timeline")
    timeline.scroll_into_view_if_needed()
    box = timeline.bounding_box()
    timeline.click(position={"x": box["width"] * 0.76, "y": box["height"] / 2})
    page.wait_for_function(
        "document.querySelector('#player canvas').dataset.frame === '30'")
    context.close()


def test_an_empty_grad_cam_is_named_and_the_attention_map_shown(live_server, chromium_browser,
                                                                 world, centre_a):
    # A model that found nothing to argue for malignancy leaves a Grad-CAM of zeros; its
    # attention map still shows where it looked.
    buf = io.BytesIO()
    np.savez_compressed(buf, gradcam=np.zeros((FRAMES, 12, 16), np.uint8),
                        attention=np.stack([blob_maps(5, FRAMES, 12, 16),
                                            blob_maps(9, FRAMES, 12, 16)]))
    prediction = world.review
    prediction.heatmaps = default_storage.save(
        f"predictions/CA/{prediction.video_id}/m1-empty.npz", ContentFile(buf.getvalue()))
    prediction.save()
    context, page = signed_in(chromium_browser, live_server, make_user("ml_engineer", centre_a))
    study = world.versions["irv2_cam"]
    page.goto(f"{live_server.url}/dashboards/cases/{prediction.pk}/?model={study.pk}"
              "&split=test")
    page.wait_for_function("document.querySelector('#player').dataset.heatmaps === 'loaded'")
    assert page.locator("#heatmap-status").inner_text() == (
        "The heatmap is zero in every frame: showing the attention map")
    assert not page.is_checked("#show-gradcam") and page.is_checked("#show-attention")
    page.uncheck("#show-marks")
    show_frame(page, 20)
    snap(page, "attention20")
    page.uncheck("#show-attention")
    snap(page, "bare20")
    assert diff(page, "attention20", "bare20") > 1000
    context.close()
