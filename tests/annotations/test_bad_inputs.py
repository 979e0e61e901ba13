"""Bad input never crashes a worker and never loses data: each case below ends `failed` with
a reason a person understands, through the REST API and through `import_cases` alike, and
the upload is kept so that `manage.py reprocess` can run it again: in storage with its
burned-in text blanked when it decoded to the end, de-identified in the private incoming
folder when it could not be blanked, quarantined there as uploaded when it is not a video."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.utils.html import escape
from rest_framework.test import APIClient

from annotations.conf import incoming_dir
from annotations.models import Video, VideoStatus
from ml import video as mlvideo
from tests.annotations.conftest import dicom_file, sweep_frames, write_video
from tests.conftest import make_user
from tests.factories import NoduleFactory, PatientFactory


def empty(tmp: Path) -> Path:
    path = tmp / "empty.mp4"
    path.write_bytes(b"")
    return path


def truncated(tmp: Path) -> Path:
    path = write_video(tmp / "whole.mp4", sweep_frames(12))
    data = path.read_bytes()
    cut = tmp / "truncated.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    return cut


def not_a_video(tmp: Path) -> Path:
    import cv2

    path = tmp / "scan.mp4"  # the name says video; the content is a PNG
    ok, png = cv2.imencode(".png", sweep_frames(1)[0])
    path.write_bytes(png.tobytes())
    return path


def unsupported_codec(tmp: Path) -> Path:
    # An AVI whose video stream uses a codec (fourcc "ZZ99") no decoder here knows.
    path = write_video(tmp / "mjpg.avi", sweep_frames(10), fourcc="MJPG")
    odd = tmp / "odd-codec.avi"
    odd.write_bytes(path.read_bytes().replace(b"MJPG", b"ZZ99"))
    return odd


def too_few_frames(tmp: Path) -> Path:
    return write_video(tmp / "short.mp4", sweep_frames(3))


def absurd_dimensions(tmp: Path) -> Path:
    frames = np.full((10, 24, 4200, 3), 90, np.uint8)
    return write_video(tmp / "wide.avi", frames, fourcc="MJPG")


def dicom_without_pixels(tmp: Path) -> Path:
    ds = pydicom.dcmread(dicom_file("US1_UNCR.dcm"))
    del ds.PixelData
    path = tmp / "report.dcm"
    ds.save_as(path)
    return path


# name -> (make the file, what the reason must say (a regular expression), what is kept)
BAD_INPUTS = {
    "zero bytes": (empty, r"empty \(0 bytes\)", "nothing"),
    "truncated": (truncated, "incomplete", "private"),
    "not a video": (not_a_video, r"a PNG image, not a video", "quarantined"),
    "unsupported codec": (unsupported_codec,
                          r"codec 'ZZ99' is not supported|a format the platform cannot read",
                          "private"),
    "too few frames": (too_few_frames, r"only 3 frames; at least 8 are needed", "stored"),
    "absurd dimensions": (absurd_dimensions, "at most 4096 pixels a side", "private"),
    "DICOM without pixel data": (dicom_without_pixels, "no pixel data", "private"),
}
ROUTES = ["api", "import_cases"]


@pytest.fixture
def setup(db, storage, settings, centre_a, tmp_path, eager_tasks):
    settings.THYROCINE = {**settings.THYROCINE, "MIN_FRAMES": 8}
    patient = PatientFactory(centre=centre_a, code="BAD-P1")
    nodule = NoduleFactory(patient=patient, code="N1")
    user = make_user("annotator", centre_a)
    client = APIClient()
    client.force_authenticate(user)
    files = tmp_path / "in"
    files.mkdir()
    return {"nodule": nodule, "client": client, "files": files, "centre": centre_a}


def submit(route: str, path: Path, setup, capture) -> tuple[Video, str]:
    """Send `path` through `route`; return the video and what the route said."""
    nodule = setup["nodule"]
    if route == "api":
        with capture(execute=True), path.open("rb") as f:
            response = setup["client"].post(
                "/api/videos/", {"nodule": nodule.pk, "file": f, "scan_plane": "sweep"},
                format="multipart",
            )
        assert response.status_code == 201, response.content
        video = Video.objects.get(pk=response.json()["id"])
        detail = setup["client"].get(f"/api/videos/{video.pk}/").json()
        return video, detail["failure_reason"]
    manifest = path.parent / "manifest.csv"
    manifest.write_text(
        "centre,patient,nodule,video,scan_plane,outcome,diagnosis,pathology_source,bethesda\n"
        f"{setup['centre'].code},{nodule.patient.code},{nodule.code},{path.name},sweep,,,,\n"
    )
    from io import StringIO

    out = StringIO()
    with pytest.raises(CommandError, match="1 row"):
        call_command("import_cases", str(manifest), "--inline", "--no-progress", stdout=out)
    video = Video.objects.filter(nodule=nodule).latest("pk")
    return video, out.getvalue()


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_with_a_reason_and_is_kept(setup, route, case,
                                                   django_capture_on_commit_callbacks, client):
    make, reason, kept = BAD_INPUTS[case]
    path = make(setup["files"])
    video, said = submit(route, path, setup, django_capture_on_commit_callbacks)

    video.refresh_from_db()
    assert video.status == VideoStatus.FAILED
    assert re.search(reason, video.failure_reason), video.failure_reason
    assert video.failure_reason in said  # the API's failure_reason, or the import report
    private = incoming_dir() / video.incoming_name if video.incoming_name else None
    if kept == "stored":  # blanked, every frame kept
        assert video.file and default_storage.exists(video.file.name)
        assert not video.incoming_name and not any(incoming_dir().iterdir())
        assert len(list(mlvideo.iter_frames(default_storage.path(video.file.name)))) == 3
    elif kept == "private":  # de-identified, never in storage: it could not be blanked
        assert not video.file and not default_storage.exists("videos")
        assert private.name.endswith(".deidentified") and private.stat().st_size > 0
        if path.suffix == ".dcm":
            assert str(pydicom.dcmread(private).PatientName) == "BAD-P1"
        assert [p.name for p in incoming_dir().iterdir()] == [private.name]
    elif kept == "quarantined":
        assert private.read_bytes() == path.read_bytes()
        assert not video.file
    else:
        assert not video.file and not video.incoming_name
    # The case page shows the reason.
    client.force_login(make_user("reader", setup["centre"]))
    page = client.get(f"/nodules/{setup['nodule'].pk}/").content.decode()
    assert escape(video.failure_reason) in page


@pytest.mark.parametrize("route", ROUTES)
def test_duplicate_is_linked_to_the_original_and_reported(setup, route,
                                                          django_capture_on_commit_callbacks):
    path = write_video(setup["files"] / "sweep.mp4", sweep_frames(10))
    first, _ = submit("api", path, setup, django_capture_on_commit_callbacks)
    assert first.status == VideoStatus.READY, first.failure_reason
    other = NoduleFactory(patient=setup["nodule"].patient, code="N2")
    setup = {**setup, "nodule": other}
    second, said = submit(route, path, setup, django_capture_on_commit_callbacks)
    assert second.status == VideoStatus.FAILED
    assert second.duplicate_of_id == first.pk
    assert f"duplicate: the same file (identical SHA-256) was already uploaded as video " \
           f"{first.pk}" in said
    assert Video.objects.filter(sha256=first.sha256).count() == 2


def test_upload_over_the_size_limit_is_refused_with_a_clear_message(setup, settings):
    settings.THYROCINE = {**settings.THYROCINE, "MAX_UPLOAD_BYTES": 1000}
    path = write_video(setup["files"] / "big.mp4", sweep_frames(10))
    with path.open("rb") as f:
        response = setup["client"].post("/api/videos/", {"nodule": setup["nodule"].pk,
                                                         "file": f}, format="multipart")
    assert response.status_code == 413
    assert "the largest accepted upload is 1.0 KB" in response.json()["detail"]
    assert not Video.objects.exists()


def test_reprocess_runs_a_kept_upload_again_after_a_fix(setup, settings,
                                                        django_capture_on_commit_callbacks):
    path = too_few_frames(setup["files"])
    video, _ = submit("api", path, setup, django_capture_on_commit_callbacks)
    assert video.status == VideoStatus.FAILED
    kept = video.file.name  # the blanked source, with every frame
    settings.THYROCINE = {**settings.THYROCINE, "MIN_FRAMES": 3}  # the fix
    call_command("reprocess", "--failed", "--inline")
    video.refresh_from_db()
    assert video.status == VideoStatus.READY and video.frame_count == 3
    assert video.failure_reason == "" and video.attempts == 2
    assert (video.container, video.codec) == ("mp4", "FMP4")  # the upload's, not the copy's
    # the source written by this run replaced the one it was made from
    assert default_storage.exists(video.file.name) != default_storage.exists(kept)


def test_a_worker_survives_an_unexpected_error(setup, monkeypatch,
                                               django_capture_on_commit_callbacks):
    from annotations import processing

    def boom(*args, **kwargs):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(processing, "process_video", boom)
    path = write_video(setup["files"] / "sweep.mp4", sweep_frames(10))
    video, said = submit("api", path, setup, django_capture_on_commit_callbacks)
    assert video.status == VideoStatus.FAILED
    assert "unexpected error (error)" in said and "upload is kept" in said
    assert (incoming_dir() / video.incoming_name).exists() and not video.file
