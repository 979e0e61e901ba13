"""The kept source: the de-identified upload re-written with its burned-in text blanked, so
that what storage keeps for `manage.py reprocess` shows no more than the frame store does.

Written frame by frame during the one decoding pass of `annotations.processing`, never
holding more than one frame (bounded memory whatever the length):

- plain videos (MP4, MOV, AVI, MKV) become a Matroska file of Motion JPEG frames. Each frame
  is the very JPEG the frame store holds (`FRAME_JPEG_QUALITY`), so keeping the source costs
  no second encoding: a second encoder over every 720p frame would cost more than the decode
  itself, twice the issue's 3x-the-decode-floor budget on a two-core worker. Matroska, not
  AVI, because its sizes are 64-bit (AVI 1.0 stops at 1-4 GB, a long 1080p sweep does not).
  FFmpeg (OpenCV) reads it back frame for frame; frame N is still the Nth decoded frame.
- DICOM stays DICOM: the de-identified header, the blanked frames as 8-bit MONOCHROME2 or RGB,
  RLE Lossless (PS3.5 Annex G, one fragment per frame, with a Basic Offset Table), so the
  blanked pixels are exactly those the frame store was made from.

No Django here: paths and arrays in, files out.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.pixels.encoders import RLELosslessEncoder
from pydicom.uid import RLELossless

from ml.video import VideoError

COPY_BLOCK = 8 * 1024 * 1024

# --- Matroska (EBML, https://www.matroska.org/technical/elements.html) ---------------------

_UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"  # an 8-byte size, patched on close
_TIMESTAMP_SCALE_NS = 1_000_000  # block timestamps in milliseconds
_CLUSTER_MS = 5_000  # block timestamps are int16 relative to their cluster


def _size(n: int) -> bytes:
    """An EBML data size in 8 bytes (the longest form, so any size fits when patched)."""
    return (0x01 << 56 | n).to_bytes(8, "big")


def _element(element_id: int, payload: bytes) -> bytes:
    id_bytes = element_id.to_bytes((element_id.bit_length() + 7) // 8, "big")
    return id_bytes + _size(len(payload)) + payload


def _uint(element_id: int, value: int) -> bytes:
    return _element(element_id, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _float(element_id: int, value: float) -> bytes:
    return _element(element_id, struct.pack(">d", value))


class MjpegMatroskaWriter:
    """Appends JPEG frames to a Matroska file (`V_MJPEG`), one SimpleBlock each."""

    suffix = ".mkv"

    def __init__(self, path: Path, *, width: int, height: int, fps: float, quality: int):
        self.path, self.width, self.height = path, width, height
        self.quality = [int(cv2.IMWRITE_JPEG_QUALITY), quality]
        # One JPEG colour model per file: FFmpeg (OpenCV) keeps its colour conversion when a
        # Motion JPEG stream switches between gray and colour JPEGs, and mis-decodes the
        # frames after the switch. Gray until a colour frame comes (B-mode is gray).
        self.gray: bool | None = None
        # Timestamps follow the source's rate; an unknown rate (0) is written as 25 fps and
        # the Video row keeps the upload's own (unknown) rate.
        self.frame_ms = 1000.0 / (fps if fps > 0 else 25.0)
        self._start()

    def _start(self) -> None:
        self.count = 0
        self.f = self.path.open("wb")
        self.f.write(_element(0x1A45DFA3, b"".join([  # EBML header
            _uint(0x4286, 1), _uint(0x42F7, 1), _uint(0x42F2, 4), _uint(0x42F3, 8),
            _element(0x4282, b"matroska"), _uint(0x4287, 4), _uint(0x4285, 2),
        ])))
        self.f.write(b"\x18\x53\x80\x67" + _UNKNOWN_SIZE)  # Segment
        self.segment_start = self.f.tell()
        info = b"".join([_uint(0x2AD7B1, _TIMESTAMP_SCALE_NS),
                         _element(0x4D80, b"thyrocine"), _element(0x5741, b"thyrocine")])
        self.f.write(_element(0x1549A966, info + _float(0x4489, 0.0)))  # Info, Duration last
        self.duration_at = self.f.tell() - 8
        video = _uint(0xB0, self.width) + _uint(0xBA, self.height)
        track = b"".join([
            _uint(0xD7, 1), _uint(0x73C5, 1), _uint(0x83, 1), _uint(0x9C, 0),
            _element(0x86, b"V_MJPEG"), _uint(0x23E383, round(self.frame_ms * 1e6)),
            _element(0xE0, video),
        ])
        self.f.write(_element(0x1654AE6B, _element(0xAE, track)))  # Tracks
        self.cluster_at: int | None = None
        self.cluster_ms = 0

    def _close_cluster(self) -> None:
        if self.cluster_at is not None:
            end = self.f.tell()
            self.f.seek(self.cluster_at + 4)
            self.f.write(_size(end - self.cluster_at - 12))
            self.f.seek(end)
            self.cluster_at = None

    def add(self, bgr: np.ndarray, jpeg: bytes, *, gray: bool) -> None:
        """Append the frame `bgr` (OpenCV's channel order, as a plain video decodes) whose
        frame-store JPEG is `jpeg` (`gray`: one channel)."""
        if self.gray is None:
            self.gray = gray
        if gray and not self.gray:  # a gray frame in a colour file: a colour JPEG of it
            ok, buf = cv2.imencode(".jpg", bgr, self.quality)
            jpeg = buf.tobytes()
        elif self.gray and not gray:  # the first colour frame (Doppler switched on)
            self._to_colour()
        self._write(jpeg)

    def _to_colour(self) -> None:
        """Re-write the gray frames so far as colour JPEGs (once per file at most; costs one
        decode and encode of the frames before the switch)."""
        gray_path = self.path.with_suffix(".gray.mkv")
        self.finish().rename(gray_path)
        self._start()
        self.gray = False
        cap = cv2.VideoCapture(str(gray_path), cv2.CAP_FFMPEG)
        try:
            ok, frame = cap.read()
            while ok:
                self._write(cv2.imencode(".jpg", frame, self.quality)[1].tobytes())
                ok, frame = cap.read(frame)
        finally:
            cap.release()
            gray_path.unlink()

    def _write(self, jpeg: bytes) -> None:
        ms = round(self.count * self.frame_ms)
        if self.cluster_at is None or ms - self.cluster_ms >= _CLUSTER_MS:
            self._close_cluster()
            self.cluster_at, self.cluster_ms = self.f.tell(), ms
            self.f.write(b"\x1f\x43\xb6\x75" + _UNKNOWN_SIZE + _uint(0xE7, ms))
        # SimpleBlock: track 1, timestamp relative to the cluster, keyframe
        block = b"\x81" + struct.pack(">hB", ms - self.cluster_ms, 0x80)
        self.f.write(b"\xa3" + _size(len(block) + len(jpeg)) + block)
        self.f.write(jpeg)
        self.count += 1

    def finish(self) -> Path:
        self._close_cluster()
        end = self.f.tell()
        self.f.seek(self.duration_at)
        self.f.write(struct.pack(">d", float(round(self.count * self.frame_ms))))
        self.f.seek(self.segment_start - 8)
        self.f.write(_size(end - self.segment_start))
        self.f.close()
        return self.path

    def discard(self) -> None:
        self.f.close()
        self.path.unlink(missing_ok=True)


# --- DICOM ---------------------------------------------------------------------------------

_ITEM = b"\xfe\xff\x00\xe0"
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_PIXEL_DATA_OB_UNDEFINED = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
# Elements that describe the stored pixel values, which the blanked frames no longer follow:
# they are 8-bit display values (palette, YBR and bit depth resolved by the decoder).
_STALE_PIXEL_ELEMENTS = (
    "PlanarConfiguration", "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor", "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData", "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData", "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData", "SegmentedBluePaletteColorLookupTableData",
    "PaletteColorLookupTableUID", "SmallestImagePixelValue", "LargestImagePixelValue",
    "PixelPaddingValue", "ModalityLUTSequence", "RescaleIntercept", "RescaleSlope",
    "VOILUTSequence", "WindowCenter", "WindowWidth", "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
)


class DicomRleWriter:
    """Writes the de-identified DICOM header of `header_from` with blanked RLE frames.

    Fragments go to a side file while frames arrive; `finish` writes the header, with the
    frame count decoded, then the fragments (the count is only known at the end)."""

    suffix = ".dcm"

    def __init__(self, path: Path, *, header_from: Path):
        self.path = path
        self.header_from = header_from
        ds = pydicom.dcmread(header_from, stop_before_pixels=True, force=True)
        self.gray = str(ds.get("PhotometricInterpretation", "")).startswith("MONOCHROME")
        self.fragments_path = path.with_suffix(".fragments")
        self.fragments = self.fragments_path.open("wb")
        self.offsets: list[int] = []
        self.shape: tuple[int, int] | None = None

    def encode(self, rgb: np.ndarray) -> bytes:
        """The RLE fragment of one blanked RGB frame (thread-safe: encoders run beside the
        decoder)."""
        pixels = np.ascontiguousarray(rgb[..., 0]) if self.gray else rgb
        rows, columns = pixels.shape[:2]
        fragment = RLELosslessEncoder.encode(
            pixels, rows=rows, columns=columns, samples_per_pixel=1 if self.gray else 3,
            bits_allocated=8, bits_stored=8, pixel_representation=0, number_of_frames=1,
            photometric_interpretation="MONOCHROME2" if self.gray else "RGB",
            planar_configuration=0,
        )
        return fragment + b"\x00" if len(fragment) % 2 else fragment  # items have even lengths

    def add_fragment(self, fragment: bytes, shape: tuple[int, int]) -> None:
        """Append the next frame's fragment (from `encode`), in frame order."""
        self.shape = shape
        self.offsets.append(self.fragments.tell())
        self.fragments.write(_ITEM + struct.pack("<I", len(fragment)) + fragment)

    def add(self, rgb: np.ndarray) -> None:
        self.add_fragment(self.encode(rgb), rgb.shape[:2])

    def finish(self) -> Path:
        self.fragments.close()
        if self.shape is None:
            raise VideoError("the video has no frames")
        ds = pydicom.dcmread(self.header_from, stop_before_pixels=True, force=True)
        had_frames = "NumberOfFrames" in ds
        for keyword in _STALE_PIXEL_ELEMENTS:
            if keyword in ds:
                delattr(ds, keyword)
        ds.Rows, ds.Columns = self.shape
        ds.SamplesPerPixel = 1 if self.gray else 3
        ds.PhotometricInterpretation = "MONOCHROME2" if self.gray else "RGB"
        if not self.gray:
            ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        if had_frames or len(self.offsets) > 1:
            ds.NumberOfFrames = len(self.offsets)
        ds.BurnedInAnnotation = "NO"
        ds.file_meta.TransferSyntaxUID = RLELossless
        # The offset table uses 32-bit offsets (PS3.5 A.4); beyond 4 GB it stays empty, which
        # is allowed as RLE holds one frame per fragment.
        table = b""
        if self.offsets and self.offsets[-1] < 2**32:
            table = struct.pack(f"<{len(self.offsets)}I", *self.offsets)
        with self.path.open("wb") as out:
            try:
                ds.save_as(out, enforce_file_format="SOPClassUID" in ds)
            except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds here
                raise VideoError(f"the DICOM header cannot be rewritten ({exc})") from exc
            out.write(_PIXEL_DATA_OB_UNDEFINED + _ITEM + struct.pack("<I", len(table)) + table)
            with self.fragments_path.open("rb") as fragments:
                shutil.copyfileobj(fragments, out, COPY_BLOCK)
            out.write(_SEQUENCE_END)
        self.fragments_path.unlink()
        return self.path

    def discard(self) -> None:
        self.fragments.close()
        self.fragments_path.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
