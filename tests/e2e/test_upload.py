"""Browser: a person creates a case, drops two files on the form, watches a progress bar per
file, and sees the video become ready (processed by a real Celery worker subprocess) and the
other refused with its reason; the nodule page then shows the thumbnail and steps frames."""

from __future__ import annotations

import numpy as np
import pytest

from tests.annotations.conftest import write_video
from tests.conftest import make_user

pytestmark = pytest.mark.e2e


@pytest.fixture
def shared_storage(monkeypatch, settings, tmp_path):
    """Media and incoming folders that the live server and the worker subprocess share."""
    media, incoming = tmp_path / "media", tmp_path / "incoming"
    monkeypatch.setenv("MEDIA_ROOT", str(media))
    monkeypatch.setenv("THYROCINE_INCOMING_DIR", str(incoming))
    monkeypatch.setenv("VIDEO_MIN_FRAMES", "8")
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                    "OPTIONS": {"location": str(media)}},
    }
    settings.THYROCINE = {**settings.THYROCINE, "INCOMING_DIR": incoming, "MIN_FRAMES": 8}
    return media


@pytest.fixture
def worker(shared_storage, celery_worker_process):
    return celery_worker_process


def test_upload_through_the_page_becomes_ready(worker, live_server, browser_page, centre_a,
                                               tmp_path):
    user = make_user("annotator", centre_a)
    user.set_password("pw-e2e-123")
    user.save()
    frames = np.zeros((12, 120, 160, 3), np.uint8)
    rng = np.random.default_rng(1)
    for t in range(12):
        frames[t, 10:110, 10:150] = rng.integers(30, 220, (100, 140, 1), dtype=np.uint8)
    good = write_video(tmp_path / "sweep.mp4", frames)
    bad = tmp_path / "notes.mp4"
    bad.write_text("patient notes, not a video\n" * 20)

    page = browser_page
    page.goto(f"{live_server.url}/centres/{centre_a.code}/cases/new/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill("pw-e2e-123")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="New case at").wait_for()

    page.get_by_label("Patient pseudonym").fill("E2E-P1")
    page.get_by_label("Nodule").fill("N1")
    page.get_by_test_id("file-input").set_input_files([str(good), str(bad)])
    page.get_by_role("button", name="Create case and upload").click()

    ready = page.locator('li.upload[data-filename="sweep.mp4"][data-status="ready"]')
    ready.wait_for(timeout=90000)
    assert ready.locator("progress").get_attribute("value") == "100"
    assert "12 frames" in ready.inner_text()
    failed = page.locator('li.upload[data-filename="notes.mp4"][data-status="failed"]')
    failed.wait_for(timeout=60000)
    assert "the file is text, not a video" in failed.inner_text()

    page.get_by_test_id("nodule-link").click()
    page.get_by_role("heading", name="Nodule N1 of E2E-P1").wait_for()
    assert page.locator("img.thumb").count() == 1
    statuses = page.get_by_test_id("video-status").all_inner_texts()
    assert sorted(statuses) == ["Failed", "Ready"]
    files: list[str] = []
    page.on("request", lambda r: files.append(r.url) if "/files/videos/" in r.url else None)
    page.get_by_role("link", name="Video", exact=False).first.click()
    page.get_by_test_id("frame-index").wait_for()
    page.get_by_role("button", name="Next ▶").click()
    assert page.get_by_test_id("frame-index").inner_text() == "2 / 12"
    # The next frame's JPEG loads asynchronously: wait until it has, then check its size.
    page.wait_for_function(
        "() => { const img = document.querySelector('[data-testid=frame]');"
        " return img && img.complete && img.naturalWidth > 0; }")
    assert page.get_by_test_id("frame").evaluate("img => img.naturalWidth") == 160
    page.get_by_role("button", name="Next ▶").click()
    page.get_by_role("button", name="◀ Previous").click()
    # All 12 frames are one chunk of the frame store: one request, none per frame.
    assert [u.split("/files/videos/")[1].split("/", 1)[1] for u in files] == ["v1/chunks/0"]
