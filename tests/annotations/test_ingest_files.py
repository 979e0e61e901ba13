"""Ingestion of real files this project did not write: pydicom's ultrasound test files
(cine and single frames; uncompressed, RLE, JPEG baseline, JPEG 2000; palette colour, RGB
and YBR), and MP4/AVI files written at test time from their frames. Checks the decoded frame
counts, that no identifying header survives, that burned-in text is blanked in stored frames
and in the kept source (the upload's replacement in storage), that the stored clip is the
one `ml.video.video_to_clip` makes from the kept source, and that processing the kept source
again (`manage.py reprocess`) gives the same frames."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from django.core.files.storage import default_storage

from annotations import services
from annotations.conf import incoming_dir
from annotations.framestore import chunk_name, read_frame
from annotations.models import CentreMask, VideoStatus
from ml import video as mlvideo
from tests.annotations.conftest import dicom_file, write_video
from tests.factories import CentreFactory, NoduleFactory, PatientFactory

# name -> decoded frames, width, height
DICOM_CASES = {
    "examples_ybr_color.dcm": (30, 320, 240),
    "color3d_jpeg_baseline.dcm": (120, 640, 480),
    "OBXXXX1A_rle_2frame.dcm": (2, 800, 600),
    "OBXXXX1A.dcm": (1, 800, 600),
    "US1_UNCR.dcm": (1, 640, 480),
    "US1_J2KR.dcm": (1, 640, 480),
}
BIRTH_DATE = "19610412"


def ingest(path: Path, nodule, **kw):
    """Upload `path` as the web and import paths do: into the incoming folder, then the
    worker's service (called here directly)."""
    incoming = incoming_dir() / f"{uuid.uuid4()}.upload"
    shutil.copyfile(path, incoming)
    video = services.video_register(nodule=nodule, incoming=incoming, filename=path.name,
                                    enqueue=False, **kw)
    services.video_process(video=video)
    video.refresh_from_db()
    return video


def kept_frames(video):
    """The frames of the video's kept source (what storage holds instead of the upload)."""
    return mlvideo.iter_frames(default_storage.path(video.file.name))


def outside(video, frame: np.ndarray) -> np.ndarray:
    """The pixels of `frame` outside the video's ultrasound region."""
    x, y, w, h = video.region
    mask = np.ones(frame.shape[:2], bool)
    mask[y : y + h, x : x + w] = False
    return frame[mask]


def reprocess(video):
    """What `manage.py reprocess --inline` does for one video."""
    services.video_reprocess(video=video, enqueue=False)
    services.video_process(video=video)
    video.refresh_from_db()
    assert video.status == VideoStatus.READY, video.failure_reason
    return video


def stored_frame(video, index: int) -> np.ndarray:
    chunk, position = divmod(index, video.frames_chunk_size)
    with default_storage.open(f"{video.frames_prefix}/{chunk_name(chunk)}", "rb") as f:
        data = read_frame(f, position)
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                        cv2.COLOR_BGR2RGB)


@pytest.fixture
def nodule(db, storage, settings):
    settings.THYROCINE = {**settings.THYROCINE, "MIN_FRAMES": 1}
    centre = CentreFactory(code="US", name="Ultrasound test centre")
    return NoduleFactory(patient=PatientFactory(centre=centre, code="US-P001"), code="N1")


@pytest.mark.parametrize("name", list(DICOM_CASES))
def test_dicom_is_decoded_deidentified_and_stored(nodule, name, copy_to):
    frames, width, height = DICOM_CASES[name]
    src = copy_to(dicom_file(name))
    ds = pydicom.dcmread(src)
    original = {k: str(ds.get(k, "")) for k in
                ("PatientName", "PatientID", "InstitutionName", "StudyInstanceUID",
                 "SOPInstanceUID")}
    ds.PatientBirthDate = BIRTH_DATE
    ds.save_as(src)

    video = ingest(src, nodule)

    assert video.status == VideoStatus.READY, video.failure_reason
    assert (video.frame_count, video.width, video.height) == (frames, width, height)
    assert video.container == "dicom"
    assert not video.incoming_name and not any(incoming_dir().iterdir())
    stored = pydicom.dcmread(default_storage.path(video.file.name))
    assert str(stored.PatientName) == "US-P001" and stored.PatientID == "US-P001"
    assert stored.get("PatientBirthDate", "") == ""
    assert stored.PatientIdentityRemoved == "YES"
    raw = Path(default_storage.path(video.file.name)).read_bytes()
    header = raw[: raw.rfind(b"\xe0\x7f\x10\x00")]  # everything before the pixel data
    texts = [str(e.value) for e in stored.iterall() if e.keyword != "PixelData"]
    for key, value in original.items():
        if value:
            assert value not in texts, f"{key} {value!r} survived de-identification"
            if len(value) >= 8:  # short IDs like "204" occur in random UIDs by chance
                assert value.encode() not in header, f"{key} {value!r} is in the header"
    assert BIRTH_DATE not in texts and BIRTH_DATE.encode() not in header
    assert stored.BurnedInAnnotation == "NO"
    # The kept source holds the upload's pixels, losslessly, blanked where the stored frames
    # are: outside the ultrasound region.
    count = 0
    for kept, upload in zip(kept_frames(video), mlvideo.iter_frames(src), strict=True):
        expected = mlvideo.blank_outside(upload, mlvideo.Region(*video.region))
        np.testing.assert_array_equal(kept, expected)
        count += 1
    assert count == frames
    # Every frame is in the store, addressable by index.
    assert stored_frame(video, frames - 1).shape == (height, width, 3)
    clip = np.load(default_storage.path(video.clip))
    assert clip.shape == (frames, 128, 128) and clip.dtype == np.uint8
    same, _ = mlvideo.video_to_clip(default_storage.path(video.file.name), (128, 128),
                                    mlvideo.Region(*video.region), min_frames=1)
    np.testing.assert_array_equal(clip, same)
    # Processing the kept source again gives the same frames and clip.
    region = video.region
    again = reprocess(video)
    assert (again.frame_count, again.region, again.container) == (frames, region, "dicom")
    np.testing.assert_array_equal(np.load(default_storage.path(again.clip)), clip)


def test_uids_are_remapped_consistently_per_centre(db, storage, settings, copy_to):
    settings.THYROCINE = {**settings.THYROCINE, "MIN_FRAMES": 1}
    a = NoduleFactory(patient=PatientFactory(centre=CentreFactory(code="UA")))
    a2 = NoduleFactory(patient=a.patient)
    b = NoduleFactory(patient=PatientFactory(centre=CentreFactory(code="UB")))
    src = dicom_file("US1_UNCR.dcm")
    study = str(pydicom.dcmread(src).StudyInstanceUID)
    uids = []
    for i, nodule in enumerate([a, a2, b]):
        copy = copy_to(src, f"copy{i}.dcm")
        ds = pydicom.dcmread(copy)
        ds.SeriesDescription = f"copy {i}"  # another file (another SHA-256), same study
        ds.save_as(copy)
        video = ingest(copy, nodule)
        assert video.status == VideoStatus.READY, video.failure_reason
        uids.append(str(pydicom.dcmread(default_storage.path(video.file.name)).StudyInstanceUID))
    assert study not in uids
    assert uids[0] == uids[1], "one centre maps one study to one new UID"
    assert uids[0] != uids[2], "another centre maps it to another UID"


def test_burned_in_text_of_obxxxx1a_is_blanked(nodule, copy_to):
    src = copy_to(dicom_file("OBXXXX1A.dcm"))
    original = next(mlvideo.iter_frames(src))
    video = ingest(src, nodule)
    assert video.status == VideoStatus.READY, video.failure_reason
    assert video.region_source == "dicom" and video.region == (120, 60, 680, 459)
    frame = stored_frame(video, 0)
    # The banner with the patient ID (top) and the settings column (left) carry text.
    kept = next(kept_frames(video))
    for area in (np.s_[0:55, :], np.s_[60:260, 0:115]):
        assert original[area].max() > 200, "the test file should show burned-in text there"
        assert frame[area].max() < 40 and frame[area].mean() < 1.0
        assert kept[area].max() == 0
    assert outside(video, kept).max() == 0
    # The image itself is kept.
    x, y, w, h = video.region
    assert np.abs(frame[y + 10 : y + 90, 340:560].astype(int)
                  - original[y + 10 : y + 90, 340:560]).mean() < 3


def test_burned_in_text_of_us1_is_blanked_with_the_centres_banner_mask(nodule, copy_to):
    # GE prints the institution, patient and clock in a banner above the image; the centre
    # declares it once (scanner banners sit where the vendor puts them).
    CentreMask.objects.create(centre=nodule.patient.centre, label="GE banner",
                              frame_width=640, frame_height=480, x=0, y=0, w=640, h=100)
    src = copy_to(dicom_file("US1_UNCR.dcm"))
    original = next(mlvideo.iter_frames(src))
    video = ingest(src, nodule)
    assert video.status == VideoStatus.READY, video.failure_reason
    frame = stored_frame(video, 0)
    banner = np.s_[0:100, :]  # "BAPTIST MED CTR", IDs, time
    caption = np.s_[355:380, 230:380]  # "LYMPH NODE", below the image
    footer = np.s_[440:475, 380:640]  # "TIS<0.4 MI=0.8 ..."
    kept = next(kept_frames(video))
    for area in (banner, caption, footer):
        assert original[area].max() > 200
        assert frame[area].max() < 40 and frame[area].mean() < 1.0
        assert kept[area].max() == 0  # the kept source too: it replaced the upload
    assert outside(video, kept).max() == 0
    # The banner mask lies partly inside the region; the rest of the image is kept as is.
    x, y, w, h = video.region
    np.testing.assert_array_equal(kept[100 : y + h, x : x + w], original[100 : y + h, x : x + w])
    # Colour flow stays in colour (the frame is stored as a colour JPEG).
    doppler = frame[150:290, 90:310].astype(int)
    assert np.abs(doppler[..., 0] - doppler[..., 2]).max() > 100
    thumb = default_storage.open(video.thumbnail).read()
    thumb = cv2.imdecode(np.frombuffer(thumb, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert thumb[: thumb.shape[0] * 100 // 480 - 2].max() < 40


@pytest.mark.parametrize("suffix,fourcc", [(".mp4", "mp4v"), (".avi", "MJPG")])
def test_plain_video_files_from_dicom_frames(nodule, tmp_path, suffix, fourcc, settings):
    settings.THYROCINE = {**settings.THYROCINE, "MIN_FRAMES": 8}
    frames = np.stack(list(mlvideo.iter_frames(dicom_file("examples_ybr_color.dcm"))))
    path = write_video(tmp_path / f"sweep{suffix}", frames, fps=30.0, fourcc=fourcc)
    video = ingest(path, nodule)
    assert video.status == VideoStatus.READY, video.failure_reason
    assert video.container == suffix[1:] and video.frame_count == 30
    assert (video.width, video.height) == (320, 240) and abs(video.fps - 30.0) < 0.01
    assert video.region_source == "image"
    # The kept source replaced the upload: Motion JPEG frames, blank outside the region,
    # frame N the Nth frame of the upload.
    assert video.file.name.endswith(".mkv")
    decoded = list(kept_frames(video))
    assert len(decoded) == 30
    region = np.s_[video.region_y : video.region_y + video.region_h,
                   video.region_x : video.region_x + video.region_w]
    uploaded = list(mlvideo.iter_frames(path))
    for index in (0, 17, 29):
        diff = np.abs(stored_frame(video, index)[region].astype(int) - decoded[index][region])
        assert diff.mean() < 3  # the same JPEG, decoded by FFmpeg rather than libjpeg
        assert np.abs(decoded[index][region].astype(int) - uploaded[index][region]).mean() < 4
    assert max(outside(video, frame).max() for frame in decoded) < 16
    assert np.mean([outside(video, frame).mean() for frame in decoded]) < 0.5
    assert max(outside(video, frame).max() for frame in uploaded) > 100  # there was text
    clip = np.load(default_storage.path(video.clip))
    same, _ = mlvideo.video_to_clip(path, (128, 128))
    np.testing.assert_array_equal(clip, same)
    # Processing the kept source again: the same frames, region and clip (up to the JPEG
    # rounding of one more generation), and the upload's container, codec and rate.
    before = (video.region, video.container, video.codec, video.fps)
    again = reprocess(video)
    assert again.frame_count == 30 and again.frames_version == 2
    assert (again.region, again.container, again.codec, again.fps) == before
    assert np.abs(np.load(default_storage.path(again.clip)).astype(int) - clip).mean() < 1


def test_reprocess_unblanked_replaces_a_source_stored_before_blanking(nodule, copy_to):
    from io import StringIO

    from django.core.files import File
    from django.core.management import call_command

    from annotations.models import Video, video_upload_path

    src = copy_to(dicom_file("OBXXXX1A.dcm"))
    video = ingest(src, nodule)
    # As stored before kept sources existed: the upload as it came, burned-in text included.
    with src.open("rb") as f:
        legacy = default_storage.save(video_upload_path(video, ""), File(f))
    default_storage.delete(video.file.name)
    Video.objects.filter(pk=video.pk).update(file=legacy)
    assert next(mlvideo.iter_frames(default_storage.path(legacy)))[0:55].max() > 200

    out = StringIO()
    call_command("reprocess", "--unblanked", "--inline", stdout=out)
    assert out.getvalue() == f"video {video.pk}: ready \n"
    video.refresh_from_db()
    assert video.file.name.endswith(".dcm") and not default_storage.exists(legacy)
    assert outside(video, next(kept_frames(video))).max() == 0
    out = StringIO()
    call_command("reprocess", "--unblanked", "--inline", stdout=out)
    assert out.getvalue() == ""  # nothing left to blank
