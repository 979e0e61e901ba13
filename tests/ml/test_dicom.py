"""ml.dicom: DICOM ultrasound decoded frame by frame with pydicom, on pydicom's own real
ultrasound test files (pydicom-data) and on small files written here for the cases those
do not cover (MONOCHROME1, 12-bit, frame timing, damaged files)."""

import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    MPEG2MPML,
    ExplicitVRLittleEndian,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from ml import dicom, video
from ml.video import Region, VideoError


def _testfile(name: str) -> Path:
    return Path(get_testdata_file(name))


@pytest.mark.parametrize(
    ("name", "frames", "shape", "syntax"),
    [
        ("examples_ybr_color.dcm", 30, (240, 320, 3), "JPEG Baseline (Process 1)"),
        ("OBXXXX1A_rle_2frame.dcm", 2, (600, 800, 3), "RLE Lossless"),
        ("OBXXXX1A.dcm", 1, (600, 800, 3), "Explicit VR Little Endian"),
        ("US1_UNCR.dcm", 1, (480, 640, 3), "Explicit VR Little Endian"),
        ("US1_J2KR.dcm", 1, (480, 640, 3), "JPEG 2000 Image Compression (Lossless Only)"),
        ("gdcm-US-ALOKA-16.dcm", 1, (480, 640, 3), "Implicit VR Little Endian"),  # 16-bit LUT
    ],
)
def test_real_files_decode(name, frames, shape, syntax):
    path = _testfile(name)
    info = dicom.probe(path)
    assert (info.container, info.codec, info.frame_count) == ("dicom", syntax, frames)
    assert (info.height, info.width) == shape[:2]
    decoded = list(dicom.iter_frames(path))
    assert len(decoded) == frames
    for f in decoded:
        assert f.shape == shape and f.dtype == np.uint8
        assert 5 < f.mean() < 120  # an ultrasound image: mostly dark, not blank, not white


def test_long_cine_streams_in_little_memory():
    path = _testfile("color3d_jpeg_baseline.dcm")
    full = 120 * 480 * 640 * 3  # bytes of the whole decoded cine
    tracemalloc.start()
    try:
        count, first = 0, None
        for frame in dicom.iter_frames(path):
            first = frame if first is None else first
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 120 and first.shape == (480, 640, 3)
    assert peak < 0.3 * full, f"peak {peak / 1e6:.0f} MB for a {full / 1e6:.0f} MB cine"
    assert dicom.probe(path).fps == pytest.approx(30.0, rel=1e-3)  # Frame Time 33.333 ms


def test_lossless_j2k_equals_uncompressed():
    raw = next(dicom.iter_frames(_testfile("US1_UNCR.dcm")))
    j2k = next(dicom.iter_frames(_testfile("US1_J2KR.dcm")))  # YBR_RCT: decoder gives RGB
    np.testing.assert_array_equal(raw, j2k)
    lossy = next(dicom.iter_frames(_testfile("US1_J2KI.dcm")))  # YBR_ICT, lossy
    assert np.abs(lossy.astype(int) - raw).mean() < 3


def test_colour_spaces_are_converted_once():
    # YBR_FULL_422 JPEG: the grayscale image must come out gray (R = G = B), which neither
    # raw YCbCr (Cb, Cr ~ 128) nor a second conversion would give
    frame = next(dicom.iter_frames(_testfile("examples_ybr_color.dcm")))
    bright = frame[frame.mean(axis=2) > 60].astype(int)
    assert len(bright) > 500
    assert np.median(np.abs(bright[:, 0] - bright[:, 1])) <= 2
    assert np.median(np.abs(bright[:, 2] - bright[:, 1])) <= 2
    # power Doppler in US1 is orange-red: R > G > B where it is coloured
    us1 = next(dicom.iter_frames(_testfile("US1_UNCR.dcm"))).astype(int)
    doppler = us1[(us1[..., 0] - us1[..., 2]) > 80]
    assert len(doppler) > 2000 and (doppler[:, 0] >= doppler[:, 1]).mean() > 0.95
    # native YBR_FULL, and the same picture stored 4:2:2 (chroma halved)
    ybr = next(dicom.iter_frames(_testfile("SC_ybr_full_uncompressed.dcm")))
    raw = pydicom.pixels.pixel_array(_testfile("SC_ybr_full_uncompressed.dcm"), raw=True)
    expected = pydicom.pixels.convert_color_space(raw, "YBR_FULL", "RGB")
    np.testing.assert_array_equal(ybr, expected)
    assert np.ptp(ybr.reshape(-1, 3), axis=0).min() > 200  # a colour test pattern
    ybr422 = next(dicom.iter_frames(_testfile("SC_ybr_full_422_uncompressed.dcm")))
    np.testing.assert_array_equal(ybr422, ybr)


def test_palette_colour_native_and_rle_agree():
    native = next(dicom.iter_frames(_testfile("OBXXXX1A.dcm")))
    rle = list(dicom.iter_frames(_testfile("OBXXXX1A_rle_2frame.dcm")))
    np.testing.assert_array_equal(native, rle[0])
    banner = native[:50].reshape(-1, 3).astype(int).mean(axis=0)  # Philips' blue title bar
    assert banner[2] > banner[0] + 20
    assert native.max() == 255  # 16-bit palette entries scaled to 8 bits, not clipped


@pytest.mark.parametrize(
    ("name", "regions", "image"),
    [
        # Max X1 = 800 in an 800-pixel frame: inclusive coordinates, clipped by a pixel
        ("OBXXXX1A.dcm", [Region(120, 60, 680, 459), Region(176, 522, 568, 55)],
         Region(120, 60, 680, 459)),
        ("color3d_jpeg_baseline.dcm", [Region(84, 31, 512, 384)], Region(84, 31, 512, 384)),
        # the header describes the 640 x 480 original of this 320 x 240 file: ignored
        ("examples_ybr_color.dcm", [], None),
        ("US1_UNCR.dcm", [], None),
        # a dual display: two 2D images side by side (the first is taken), and a bar
        ("gdcm-US-ALOKA-16.dcm", [Region(32, 24, 304, 392), Region(336, 24, 304, 392),
                                  Region(32, 40, 32, 64)], Region(32, 24, 304, 392)),
    ],
)
def test_ultrasound_regions(name, regions, image):
    ds = pydicom.dcmread(_testfile(name), stop_before_pixels=True)
    assert dicom.ultrasound_regions(ds) == regions
    assert dicom.image_region(ds) == image
    assert video.declared_region(_testfile(name)) == image


# ----------------------------------------------------------------------------------------
# Files written here


def _dataset(transfer_syntax: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    return ds


def _write(path: Path, pixels: np.ndarray, pi: str = "MONOCHROME2", bits_stored: int = 8,
           **attrs) -> Path:
    """A native (uncompressed) multi-frame ultrasound file from (T, H, W[, 3]) pixels."""
    ds = _dataset(ExplicitVRLittleEndian)
    ds.NumberOfFrames, ds.Rows, ds.Columns = pixels.shape[:3]
    ds.SamplesPerPixel = 3 if pixels.ndim == 4 else 1
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = pi
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture()
def ramp() -> np.ndarray:
    return np.tile(np.arange(0, 256, 4, dtype=np.uint8), (4, 32, 1))  # (4, 32, 64)


def test_monochrome1_is_inverted(tmp_path, ramp):
    mono2 = list(dicom.iter_frames(_write(tmp_path / "m2.dcm", ramp)))
    mono1 = list(dicom.iter_frames(_write(tmp_path / "m1.dcm", ramp, "MONOCHROME1")))
    assert len(mono2) == 4 and mono2[0].shape == (32, 64, 3)
    np.testing.assert_array_equal(mono2[0][..., 0], ramp[0])
    np.testing.assert_array_equal(mono1[0][..., 1], 255 - ramp[0])


def test_twelve_bit_is_scaled_to_eight(tmp_path):
    pixels = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (2, 16, 1))
    frames = list(dicom.iter_frames(_write(tmp_path / "12bit.dcm", pixels, bits_stored=12)))
    assert frames[0].dtype == np.uint8
    assert frames[0][0, 0, 0] == 0 and frames[0][0, -1, 0] == 255


@pytest.mark.parametrize(
    ("attrs", "ms"),
    [
        ({"FrameTime": 40.0}, 40.0),
        ({"FrameTimeVector": [0, 40, 40, 40], "FrameIncrementPointer": 0x00181065}, 40.0),
        ({"CineRate": 20}, 50.0),
        ({"RecommendedDisplayFrameRate": 25}, 40.0),
        ({"FrameTime": 33.3, "CineRate": 20}, 33.3),  # Frame Time wins
        ({}, None),
    ],
)
def test_frame_time(tmp_path, ramp, attrs, ms):
    path = _write(tmp_path / "timed.dcm", ramp, **attrs)
    ds = dicom.read_header(path)
    assert dicom.frame_time_ms(ds) == (pytest.approx(ms) if ms else None)
    info = dicom.probe(path)
    assert info.fps == (pytest.approx(1000 / ms) if ms else 0.0)
    assert info.duration_s == (pytest.approx(4 * ms / 1000) if ms else 0.0)


def test_file_without_preamble_decodes(tmp_path):
    bare = tmp_path / "bare"
    bare.write_bytes(_testfile("US1_UNCR.dcm").read_bytes()[132:])
    np.testing.assert_array_equal(next(dicom.iter_frames(bare)),
                                  next(dicom.iter_frames(_testfile("US1_UNCR.dcm"))))


def test_no_pixel_data(tmp_path):
    ds = pydicom.dcmread(_testfile("US1_UNCR.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "report.dcm")
    with pytest.raises(VideoError, match="contains no image"):
        video.probe_video(tmp_path / "report.dcm")


@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "color3d_jpeg_baseline.dcm",
                                  "OBXXXX1A_rle_2frame.dcm"])
def test_truncated_files(tmp_path, name):
    data = _testfile(name).read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(VideoError, match="incomplete|damaged"):
        list(video.iter_frames(cut))


def test_missing_frames_are_reported(tmp_path, ramp):
    path = _write(tmp_path / "short.dcm", ramp)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 6  # the header promises more frames than the data hold
    ds.save_as(path)
    with pytest.raises(VideoError, match="damaged"):
        dicom.probe(path)


def test_unsupported_transfer_syntax_is_named(tmp_path):
    data = _testfile("examples_ybr_color.dcm").read_bytes()
    jpip = tmp_path / "jpip.dcm"  # same length UID: JPEG Baseline -> JPIP Referenced
    jpip.write_bytes(data.replace(b"1.2.840.10008.1.2.4.50", b"1.2.840.10008.1.2.4.94", 1))
    with pytest.raises(VideoError, match="compressed as JPIP Referenced"):
        video.probe_video(jpip)


def test_dicom_video_stream_is_decoded_by_ffmpeg(tmp_path):
    # an MPEG-2 video in DICOM: one encapsulated stream, as ultrasound systems export cine
    frames = []
    for i in range(12):
        f = np.full((240, 320, 3), 60, np.uint8)
        f[40:200, 60:260, 0] = 10 * i
        for bit in range(5):  # the frame index as black and white blocks
            f[8:24, 8 + 16 * bit : 24 + 16 * bit] = 255 if i >> bit & 1 else 0
        frames.append(f)
    stream = tmp_path / "sweep.m2v"
    writer = cv2.VideoWriter(str(stream), cv2.VideoWriter_fourcc(*"MPG2"), 25, (320, 240))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    ds = _dataset(MPEG2MPML)
    ds.Rows, ds.Columns, ds.NumberOfFrames, ds.FrameTime = 240, 320, 12, 40.0
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([stream.read_bytes()])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "video.dcm", enforce_file_format=True)

    info = video.probe_video(tmp_path / "video.dcm")
    assert (info.codec, info.frame_count, info.fps) == ("MPEG2 Main Profile / Main Level", 12,
                                                        25.0)
    decoded = list(video.iter_frames(tmp_path / "video.dcm"))
    assert len(decoded) == 12
    for i, (got, src) in enumerate(zip(decoded, frames, strict=True)):
        code = sum(1 << b for b in range(5) if got[12:20, 12 + 16 * b : 20 + 16 * b].mean() > 128)
        assert code == i and np.abs(got.astype(int) - src).mean() < 5
    ds.NumberOfFrames = 20  # the stream is shorter than the header says
    ds.save_as(tmp_path / "short.dcm", enforce_file_format=True)
    with pytest.raises(VideoError, match="only 12 of 20 frames"):
        list(video.iter_frames(tmp_path / "short.dcm"))
