"""ml.video: recognising, probing and decoding real video files, and standardising clips.

The videos are written at test time with OpenCV from frames of pydicom's ultrasound test
files (pydicom-data), each frame stamped with its index as a binary code, so that a decoder
that drops, repeats or reorders frames fails.
"""

import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from ml import video
from ml.video import ClipBuilder, Region, VideoError, VideoInfo

N_FRAMES = 24
CODE_BITS = 6  # frame index stamped as 6 blocks of 16 x 16 pixels, black or white


def _stamp(frame: np.ndarray, index: int) -> np.ndarray:
    out = frame.copy()
    for bit in range(CODE_BITS):
        out[8:24, 8 + 16 * bit : 24 + 16 * bit] = 255 if index >> bit & 1 else 0
    return out


def _read_stamp(frame: np.ndarray) -> int:
    gray = frame.mean(axis=2) if frame.ndim == 3 else frame
    value = 0
    for bit in range(CODE_BITS):
        if gray[12:20, 12 + 16 * bit : 20 + 16 * bit].mean() > 128:
            value |= 1 << bit
    return value


def _write(path: Path, frames: list[np.ndarray], fourcc: str, fps: float = 25.0) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path.suffix}"
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.fixture(scope="module")
def cine() -> np.ndarray:
    """The first 48 frames of a real cardiac cine (480 x 640 RGB, a sector image)."""
    frames = video.iter_frames(get_testdata_file("color3d_jpeg_baseline.dcm"))
    return np.stack([next(frames) for _ in range(48)])


@pytest.fixture(scope="module")
def source_frames(cine) -> list[np.ndarray]:
    """24 real ultrasound frames, each stamped with its index."""
    return [_stamp(f, i) for i, f in enumerate(cine[:N_FRAMES])]


@pytest.fixture(scope="module")
def files(tmp_path_factory, source_frames) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    out = {
        "mp4": _write(d / "sweep.mp4", source_frames, "mp4v"),
        "avi": _write(d / "sweep.avi", source_frames, "MJPG"),
        "mov": _write(d / "sweep.mov", source_frames, "mp4v"),
        "mkv": _write(d / "sweep.mkv", source_frames, "MJPG"),
        "short": _write(d / "short.mp4", source_frames[:3], "mp4v"),
    }
    return out


# ----------------------------------------------------------------------------------------
# Recognising the container by content


@pytest.mark.parametrize("kind", ["mp4", "avi", "mov", "mkv"])
def test_sniff_format_reads_content_not_the_name(files, tmp_path, kind):
    assert video.sniff_format(files[kind]) == kind
    disguised = tmp_path / "renamed.dcm"  # the extension lies; the content decides
    disguised.write_bytes(files[kind].read_bytes())
    assert video.sniff_format(disguised) == kind


def test_sniff_format_webm_is_matroska(tmp_path, source_frames):
    path = _write(tmp_path / "clip.webm", [f[:240, :320] for f in source_frames[:4]], "VP80")
    assert video.sniff_format(path) == "mkv"


def test_sniff_format_dicom_with_and_without_preamble(tmp_path):
    path = Path(get_testdata_file("US1_UNCR.dcm"))
    assert video.sniff_format(path) == "dicom"
    bare = tmp_path / "bare"
    bare.write_bytes(path.read_bytes()[132:])  # no preamble, no "DICM": group 0002 first
    assert video.sniff_format(bare) == "dicom"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty"),
        (b"patient,video\nP1,a.mp4\n" * 20, "text"),
        ("Befund: Knoten rechts, 12 mm — keine Verkalkung\n".encode() * 20, "text"),
        (b"\x89PNG\r\n\x1a\n" + bytes(200), "PNG image"),
        (b"\xff\xd8\xff\xe0" + bytes(200), "JPEG image"),
        (b"%PDF-1.7\n" + bytes(200), "PDF"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(200), "audio"),
        (bytes(range(256)) * 4, "not a video"),
    ],
)
def test_sniff_format_rejects_what_is_not_a_video(tmp_path, content, expected):
    path = tmp_path / "upload.mp4"  # named like a video, whatever it holds
    path.write_bytes(content)
    with pytest.raises(VideoError, match=expected):
        video.sniff_format(path)
    with pytest.raises(VideoError, match=expected):
        video.probe_video(path)


def test_missing_file_is_a_video_error(tmp_path):
    with pytest.raises(VideoError, match="does not exist"):
        video.probe_video(tmp_path / "nope.mp4")


# ----------------------------------------------------------------------------------------
# Probing and frame-exact decoding


@pytest.mark.parametrize(("kind", "codec"), [("mp4", "FMP4"), ("avi", "MJPG"), ("mov", "FMP4"),
                                             ("mkv", "MJPG")])
def test_probe_counts_frames_by_decoding(files, kind, codec):
    info = video.probe_video(files[kind])
    assert info == VideoInfo(kind, codec, 25.0, N_FRAMES, 640, 480, N_FRAMES / 25.0)


@pytest.mark.parametrize("kind", ["mp4", "avi", "mov", "mkv"])
def test_iter_frames_is_frame_exact(files, source_frames, kind):
    decoded = list(video.iter_frames(files[kind]))
    assert len(decoded) == N_FRAMES
    for i, (got, src) in enumerate(zip(decoded, source_frames, strict=True)):
        assert got.shape == (480, 640, 3) and got.dtype == np.uint8
        assert _read_stamp(got) == i
        # RGB, not BGR, and close to the source frame: lossy codecs, a few levels off
        err = np.abs(got.astype(np.int16) - src).mean()
        assert err < 4.0, (kind, i, err)
        swapped = np.abs(got[..., ::-1].astype(np.int16) - src).mean()
        assert err < swapped or np.allclose(src[..., 0], src[..., 2], atol=2)


def test_minimum_frames_is_configurable(files):
    with pytest.raises(VideoError, match="only 3 frames; at least 8 are needed"):
        video.probe_video(files["short"])
    assert video.probe_video(files["short"], min_frames=3).frame_count == 3


def test_maximum_size_is_configurable(files):
    with pytest.raises(VideoError, match="640 x 480 pixels; at most 320"):
        video.probe_video(files["mp4"], max_side=320)
    with pytest.raises(VideoError, match="at most 320"):
        next(video.iter_frames(files["mp4"], max_side=320))


@pytest.mark.parametrize("kind", ["mp4", "avi", "mov", "mkv"])
@pytest.mark.parametrize("keep", [0.1, 0.6, 0.97])
def test_truncated_files_are_rejected(files, tmp_path, kind, keep):
    data = files[kind].read_bytes()
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(VideoError, match="incomplete|damaged"):
        video.probe_video(cut)
    with pytest.raises(VideoError):
        video.video_to_clip(cut)


def test_trailing_bytes_after_a_complete_movie_are_harmless(files, tmp_path):
    padded = tmp_path / "padded.mp4"
    padded.write_bytes(files["mp4"].read_bytes() + b"\x00\x17 uploader padding")
    assert video.probe_video(padded).frame_count == N_FRAMES


def test_unsupported_codec_is_named(files, tmp_path):
    data = files["avi"].read_bytes()
    assert data.count(b"MJPG") >= 1
    odd = tmp_path / "odd.avi"
    odd.write_bytes(data.replace(b"MJPG", b"ZZZZ"))
    with pytest.raises(VideoError, match="codec 'ZZZZ' is not supported"):
        video.probe_video(odd)


def test_mp4_without_index_is_incomplete(tmp_path):
    # a recording that never wrote its 'moov' box
    path = tmp_path / "nomoov.mp4"
    ftyp = struct.pack(">I4s4sI4s", 20, b"ftyp", b"isom", 0x200, b"isom")
    mdat = struct.pack(">I4s", 8 + 1000, b"mdat") + bytes(1000)
    path.write_bytes(ftyp + mdat)
    with pytest.raises(VideoError, match="no 'moov' index"):
        video.probe_video(path)


def test_dicom_goes_through_the_same_interface():
    path = get_testdata_file("examples_ybr_color.dcm")
    info = video.probe_video(path)
    assert (info.container, info.frame_count, info.width, info.height) == ("dicom", 30, 320, 240)
    assert info.codec == "JPEG Baseline (Process 1)"
    assert info.fps == pytest.approx(30.0, rel=1e-3)
    frames = list(video.iter_frames(path))
    assert len(frames) == 30 and frames[0].shape == (240, 320, 3)
    with pytest.raises(VideoError, match="only 1 frame; at least 8"):
        video.probe_video(get_testdata_file("US1_UNCR.dcm"))


# ----------------------------------------------------------------------------------------
# Regions, blanking and clips


def test_region_geometry():
    r = Region(10, 20, 100, 50)
    assert (r.x1, r.y1, r.area) == (110, 70, 5000)
    assert r.clip(64, 64) == Region(10, 20, 54, 44)
    assert r.iou(r) == 1.0 and r.iou(Region(500, 500, 5, 5)) == 0.0
    assert r.iou(Region(60, 20, 100, 50)) == pytest.approx(50 / 150)


def test_find_ultrasound_region_ignores_static_overlays():
    rng = np.random.default_rng(0)
    frames = np.zeros((16, 240, 320, 3), np.uint8)
    truth = Region(60, 40, 200, 170)
    for f in frames:
        f[40:210, 60:260] = rng.integers(20, 200, (170, 200, 1), dtype=np.uint8)
        cv2.putText(f, "DOE^JANE 2021-03-04", (4, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (255, 255, 0), 1, cv2.LINE_AA)  # static text
        f[40:200, 280:290] = np.linspace(0, 255, 160, dtype=np.uint8)[:, None, None]  # bar
    frames[::2, 225:235, 4:60] = 255  # a blinking indicator outside the image
    assert video.find_ultrasound_region(frames).iou(truth) > 0.95
    # one frame: speckle texture instead of change
    assert video.find_ultrasound_region(frames[:1]).iou(truth) > 0.8


def test_find_ultrasound_region_on_a_real_cine(cine):
    path = get_testdata_file("color3d_jpeg_baseline.dcm")
    found = video.find_ultrasound_region(cine[::2])
    # the sector lies inside the region the DICOM header declares, the text outside it
    declared = video.declared_region(path)
    assert declared == Region(84, 31, 512, 384)
    assert found.intersection(declared).area / found.area > 0.97
    assert found.area > 0.4 * declared.area


def test_blank_outside_and_mask_rectangles():
    frame = np.full((100, 120, 3), 200, np.uint8)
    out = video.blank_outside(frame, Region(10, 20, 50, 40), [Region(15, 25, 10, 5)])
    assert frame.min() == 200  # the input is left alone
    inside = np.zeros((100, 120), bool)
    inside[20:60, 10:60] = True
    inside[25:30, 15:25] = False
    assert (out[inside] == 200).all() and (out[~inside] == 0).all()
    gray = video.blank_outside(frame[..., 0].copy(), Region(0, 0, 10, 10), copy=False)
    assert gray[:10, :10].min() == 200 and gray[10:].max() == 0


def test_clip_builder_crops_converts_and_resizes():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (5, 90, 160, 3), dtype=np.uint8)
    region = Region(20, 10, 100, 64)
    rgb = ClipBuilder(region, (32, 48))
    bgr = ClipBuilder(region, (32, 48), channel_order="bgr")
    for f in frames:
        rgb.add(f)
        bgr.add(np.ascontiguousarray(f[..., ::-1]))
    clip = rgb.finish()
    assert clip.shape == (5, 32, 48) and clip.dtype == np.uint8
    np.testing.assert_array_equal(clip, bgr.finish())  # same clip from OpenCV's BGR
    expected = cv2.resize(cv2.cvtColor(frames[3][10:74, 20:120], cv2.COLOR_RGB2GRAY), (48, 32),
                          interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(clip[3], expected)
    masked = ClipBuilder(region, (64, 100), masks=[Region(20, 10, 50, 32)])
    masked.add(np.full((90, 160, 3), 255, np.uint8))
    out = masked.finish()[0]
    assert out[:32, :50].max() == 0 and out[32:, 50:].min() == 255
    with pytest.raises(VideoError, match="frame size changes"):
        rgb.add(np.zeros((10, 10, 3), np.uint8))


def test_video_to_clip_same_from_every_container(files):
    clips = {}
    for kind in ("mp4", "avi", "mkv"):
        clip, region = video.video_to_clip(files[kind], size=(64, 64))
        assert clip.shape == (N_FRAMES, 64, 64) and clip.dtype == np.uint8
        assert region.iou(Region(84, 31, 512, 384)) > 0.3
        clips[kind] = (clip, region)
    fixed = Region(100, 60, 400, 300)
    a, ra = video.video_to_clip(files["mp4"], (64, 64), region=fixed)
    b, rb = video.video_to_clip(files["avi"], (64, 64), region=fixed)
    assert ra == rb == fixed
    assert np.abs(a.astype(int) - b).mean() < 3.0  # two codecs, one clip
    with pytest.raises(VideoError, match="only 3 frames"):
        video.video_to_clip(files["short"])


def test_video_to_clip_uses_the_dicom_region():
    path = get_testdata_file("OBXXXX1A_rle_2frame.dcm")
    clip, region = video.video_to_clip(path, (32, 32), min_frames=2)
    # Max X1 = 800 in an 800-pixel-wide frame: inclusive coordinates, clipped by one pixel
    assert region == Region(120, 60, 680, 459) and clip.shape == (2, 32, 32)


def test_ml_video_does_not_import_django():
    code = ("import sys, ml.video, ml.dicom, ml.synthetic; "
            "assert 'django' not in sys.modules; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parents[2])
