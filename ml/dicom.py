"""Decoding DICOM ultrasound, cine (multi-frame) and single frame, with pydicom 3.

Transfer syntaxes: native (uncompressed), RLE, JPEG baseline/extended/lossless and JPEG 2000
through pydicom's decoders and the pylibjpeg plugins; photometric interpretations
MONOCHROME1/2, RGB, YBR_FULL, YBR_FULL_422, YBR_ICT/RCT and PALETTE COLOR. DICOM video
(MPEG-2, H.264, HEVC transfer syntaxes: one encapsulated stream, which pydicom does not
decode) goes to FFmpeg through OpenCV. Every frame comes out as RGB uint8 (H, W, 3), one at a
time, so a long cine never sits in memory whole.

Colour: pydicom 3 decodes with `raw=True` and reports the colour space of what it returned
(JPEG decoders hand back YCbCr untouched; JPEG 2000 decoders have already undone the
ICT/RCT transform and say RGB). Only data still in YBR_FULL(_422) gets
`convert_color_space`, so nothing is converted twice.
https://pydicom.github.io/pydicom/stable/reference/generated/pydicom.pixels.utils.iter_pixels.html

Decoding only: de-identification is the platform's job.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, as_pixel_options, get_decoder, iter_pixels
from pydicom.pixels.processing import convert_color_space
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, MPEGTransferSyntaxes

from ml.video import Region, VideoError, VideoInfo

log = logging.getLogger(__name__)

PathLike = str | Path

# Sequence of Ultrasound Regions codes, DICOM PS3.3 C.8.5.5.1
SPATIAL_FORMAT_2D = 1
DATA_TYPE_TISSUE = 1
DATA_TYPE_COLOR_FLOW = 2
_REGION_SLACK = 2  # pixels a region may overhang the frame (off-by-one writers)

_YBR = ("YBR_FULL", "YBR_FULL_422")
_SUPPORTED_PI = ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", *_YBR, "YBR_ICT",
                 "YBR_RCT")
_INCOMPLETE = (
    "the DICOM file is incomplete ({detail}); the upload or the export was probably "
    "interrupted"
)


def read_header(path: PathLike) -> Dataset:
    """The data set without loading pixel data (large values are read on demand).

    Raises `VideoError` for files that are not DICOM, cut short, or without image pixels.
    """
    p = Path(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(p, defer_size="256 KB", force=True)
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as e:
            raise VideoError(f"the DICOM file is damaged and cannot be read ({e})") from e
    if any("End of file reached" in str(w.message) for w in caught):
        raise VideoError(_INCOMPLETE.format(detail="its pixel data are cut short"))
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        # no File Meta Information (no preamble): use the encoding pydicom detected
        implicit = ds.original_encoding[0] if hasattr(ds, "original_encoding") else True
        ds.file_meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit is not False else ExplicitVRLittleEndian
        )
    _check_pixels(ds, p.stat().st_size)
    return ds


def _check_pixels(ds: Dataset, file_size: int) -> None:
    if "PixelData" not in ds:
        what = str(ds.get("Modality", "") or "") or "not an image"
        raise VideoError(
            f"the DICOM file contains no image (no pixel data; modality {what}): it may be "
            "a report or a presentation state rather than an ultrasound cine"
        )
    missing = [k for k in ("Rows", "Columns", "PhotometricInterpretation") if k not in ds]
    if missing:
        raise VideoError(f"the DICOM file lacks {', '.join(missing)}, so its image is unusable")
    ts = UID(ds.file_meta.TransferSyntaxUID)
    if ts in MPEGTransferSyntaxes:
        return  # a video stream: FFmpeg decodes it, whatever its colour model says
    pi = str(ds.PhotometricInterpretation).strip()
    if pi not in _SUPPORTED_PI:
        raise VideoError(f"the DICOM colour model {pi!r} is not supported")
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise VideoError(
            f"the DICOM file is compressed as {ts.name}, which the platform cannot decode; "
            "export it uncompressed, as JPEG or JPEG 2000, or as an MP4 video"
        ) from None
    if not decoder.is_available:
        raise VideoError(f"no decoder for {ts.name} is installed on this server")
    if not ts.is_encapsulated:
        raw = ds.get_item("PixelData")
        frames = number_of_frames(ds)
        bits = int(ds.get("BitsAllocated", 8))
        spp = int(ds.get("SamplesPerPixel", 1))
        pixels = int(ds.Rows) * int(ds.Columns) * spp * frames
        if pi == "YBR_FULL_422":  # stored with the chroma halved: 2 samples a pixel
            pixels = pixels * 2 // 3
        expected = (pixels + 7) // 8 if bits == 1 else pixels * (bits // 8)
        length = getattr(raw, "length", None)
        tell = getattr(raw, "value_tell", None)
        if length is not None and tell is not None and tell + length > file_size:
            raise VideoError(_INCOMPLETE.format(detail=f"{file_size} of {tell + length} bytes"))
        if length is not None and length < expected:
            raise VideoError(
                f"the DICOM pixel data hold {length} bytes but {frames} frame(s) of "
                f"{ds.Columns} x {ds.Rows} need {expected}; the file is damaged"
            )


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def frame_time_ms(ds: Dataset) -> float | None:
    """Milliseconds between frames: Frame Time, else the mean of the Frame Time Vector,
    else 1000 / Cine Rate, else 1000 / Recommended Display Frame Rate; None if absent."""

    def positive(value) -> float | None:
        try:
            v = float(value)
        except (TypeError, ValueError):
            return None
        return v if np.isfinite(v) and v > 0 else None

    if (t := positive(ds.get("FrameTime"))) is not None:
        return t
    vector = ds.get("FrameTimeVector")
    if vector is not None:
        items = [vector] if isinstance(vector, str | int | float) else list(vector)
        values = [positive(v) for v in items]
        # the first entry is 0 by definition (time from the previous frame), PS3.3 C.7.6.5.1.2
        values = [v for v in values if v is not None]
        if values:
            return float(np.mean(values))
    for rate_key in ("CineRate", "RecommendedDisplayFrameRate"):
        if (r := positive(ds.get(rate_key))) is not None:
            return 1000.0 / r
    return None


def fps(ds: Dataset) -> float:
    t = frame_time_ms(ds)
    return 1000.0 / t if t else 0.0


def probe(path: PathLike) -> VideoInfo:
    """`VideoInfo` from the header; the first frame is decoded to prove the codec works."""
    ds = read_header(path)
    n = number_of_frames(ds)
    rate = fps(ds)
    next(iter_frames(path, header=ds))
    return VideoInfo(
        container="dicom",
        codec=UID(ds.file_meta.TransferSyntaxUID).name,
        fps=rate,
        frame_count=n,
        width=int(ds.Columns),
        height=int(ds.Rows),
        duration_s=n / rate if rate else 0.0,
    )


def _region_items(ds: Dataset) -> list[tuple[Dataset, Region]]:
    out = []
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    for item in ds.get("SequenceOfUltrasoundRegions", None) or []:
        try:
            x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
            x1, y1 = int(item.RegionLocationMaxX1), int(item.RegionLocationMaxY1)
        except (AttributeError, TypeError, ValueError):
            continue
        if x1 < x0 or y1 < y0:
            continue
        # A region beyond the frame means the image was resampled after the header was
        # written (pydicom's examples_ybr_color.dcm is one): the coordinates are not ours.
        if rows and cols and (x1 >= cols + _REGION_SLACK or y1 >= rows + _REGION_SLACK):
            log.warning("ignoring ultrasound region %s outside the %dx%d frame",
                        (x0, y0, x1, y1), cols, rows)
            continue
        region = Region(x0, y0, x1 - x0 + 1, y1 - y0 + 1)  # Max X1/Y1 are inclusive
        out.append((item, region.clip(cols, rows) if rows and cols else region))
    return out


def ultrasound_regions(ds: Dataset) -> list[Region]:
    """Every region of the Sequence of Ultrasound Regions that fits the frame, in file order.

    Regions that lie outside the frame are dropped (the header then describes another
    resolution of the image); coordinates overhanging by a pixel or two are clipped.
    """
    return [r for _, r in _region_items(ds)]


def image_region(src: PathLike | Dataset) -> Region | None:
    """The B-mode image: the largest 2D region holding tissue or colour flow, or None."""
    ds = src if isinstance(src, Dataset) else pydicom.dcmread(src, stop_before_pixels=True,
                                                            force=True)
    best: Region | None = None
    for item, region in _region_items(ds):
        fmt = int(item.get("RegionSpatialFormat", 0) or 0)
        kind = int(item.get("RegionDataType", 0) or 0)
        if fmt != SPATIAL_FORMAT_2D or kind not in (DATA_TYPE_TISSUE, DATA_TYPE_COLOR_FLOW):
            continue
        if best is None or region.area > best.area:
            best = region
    return best


# ----------------------------------------------------------------------------------------
# Frames


def _palette_lut(ds: Dataset) -> np.ndarray:
    """(N, 3) uint8 table for every stored value, from the (possibly segmented) palette."""
    bits = int(ds.get("BitsStored", 8))
    table = apply_color_lut(np.arange(2 ** min(bits, 16), dtype=np.uint16), ds)
    if table.dtype != np.uint8:
        # 16-bit entries; some writers put 8-bit values in 16-bit entries (PS3.3 C.7.6.3.1.5)
        table = table >> 8 if table.max() > 255 else table
    return table[..., :3].astype(np.uint8)


def _to_uint8(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    bits = int(ds.get("BitsStored", arr.dtype.itemsize * 8))
    a = arr.astype(np.float32)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        a += 2 ** (bits - 1)
    return np.clip(a * (255.0 / (2**bits - 1)), 0, 255).astype(np.uint8)


class _Frames:
    """Turns decoded frames into RGB uint8, whatever their colour model."""

    def __init__(self, ds: Dataset):
        self.ds = ds
        self.lut: np.ndarray | None = None

    def rgb(self, arr: np.ndarray, pi: str) -> np.ndarray:
        if pi == "PALETTE COLOR":
            if self.lut is None:
                self.lut = _palette_lut(self.ds)
            return self.lut[np.minimum(arr, len(self.lut) - 1)]
        if arr.ndim == 2 or arr.shape[-1] == 1:
            gray = _to_uint8(arr.reshape(arr.shape[:2]), self.ds)
            if pi == "MONOCHROME1":  # 0 is white
                gray = 255 - gray
            return np.repeat(gray[..., None], 3, axis=2)
        arr = _to_uint8(arr, self.ds)
        if pi in _YBR:
            # subsampling is already removed by the decoder; the matrix is the same
            return convert_color_space(arr, "YBR_FULL", "RGB")
        return arr  # RGB (YBR_ICT/RCT arrive as RGB from the JPEG 2000 decoders)


def iter_frames(path: PathLike, *, header: Dataset | None = None) -> Iterator[np.ndarray]:
    """Every frame as RGB uint8 (H, W, 3), decoded one at a time.

    Native pixel data are read from the file frame by frame (`iter_pixels` with a path);
    compressed data hold only the compressed stream in memory plus the frame at hand.
    """
    p = Path(path)
    ds = header if header is not None else read_header(p)
    ts = UID(ds.file_meta.TransferSyntaxUID)
    pi = str(ds.PhotometricInterpretation).strip()
    n = number_of_frames(ds)
    if ts in MPEGTransferSyntaxes:
        yield from _iter_video_stream(ds, n)
        return
    convert = _Frames(ds)
    if ts.is_encapsulated:
        decoder = get_decoder(ts)
        source = decoder.iter_array(ds, raw=True, **as_pixel_options(ds))
    else:
        # the decoder never changes colour for native data, apart from expanding 4:2:2
        native = iter_pixels(p, raw=True, transfer_syntax_uid=ts)
        source = ((a, {}) for a in native)
    for i in range(n):
        try:
            arr, changes = next(source)
        except StopIteration:
            raise VideoError(
                _INCOMPLETE.format(detail=f"only {i} of {n} frames are present")
            ) from None
        except (ValueError, RuntimeError, AttributeError, OSError, EOFError) as e:
            raise VideoError(
                f"frame {i + 1} of {n} could not be decoded; the DICOM file is damaged ({e})"
            ) from e
        yield convert.rgb(arr, str(changes.get("photometric_interpretation", pi)))


def _iter_video_stream(ds: Dataset, n: int) -> Iterator[np.ndarray]:
    """Frames of a DICOM video (an MPEG-2, H.264 or HEVC stream, possibly fragmented).

    The stream goes to a temporary file for FFmpeg, which finds its format by probing (an
    elementary stream, a program stream or an MP4, as encapsulation tools write them).
    """
    ts = UID(ds.file_meta.TransferSyntaxUID)
    try:
        stream = b"".join(generate_fragments(ds.PixelData))
    except (ValueError, TypeError) as e:
        raise VideoError(f"the DICOM video stream is damaged ({e})") from e
    with tempfile.NamedTemporaryFile(prefix="dicom-video-", suffix=".bin") as tmp:
        tmp.write(stream)
        tmp.flush()
        del stream
        cap = cv2.VideoCapture(tmp.name, cv2.CAP_FFMPEG)
        try:
            ok, frame = cap.read() if cap.isOpened() else (False, None)
            if not ok:
                raise VideoError(f"the DICOM video stream ({ts.name}) could not be decoded")
            count = 0
            while ok:
                count += 1
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                ok, frame = cap.read(frame)
        finally:
            cap.release()
    if count < n:
        # Number of Frames is mandatory but the stream is what is shown; a short stream
        # is a damaged or truncated export
        raise VideoError(_INCOMPLETE.format(detail=f"only {count} of {n} frames are present"))
