"""Probing, decoding and standardising ultrasound videos.

One module for the platform's ingestion worker and for the dataset builder, so that both
turn a video into the same clip: `video_to_clip` finds the ultrasound image inside the frame
(DICOM's Sequence of Ultrasound Regions when the file has one, image analysis otherwise),
crops every frame to it, converts to grayscale and resizes with `INTER_AREA`.

Containers are recognised by their content, never by the file name: MP4, MOV, AVI and
MKV/WebM are decoded by OpenCV (FFmpeg), DICOM by `ml.dicom` (pydicom). Every failure is a
`VideoError` whose message the platform shows to the person who uploaded the file.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

log = logging.getLogger(__name__)

MIN_FRAMES = 8  # fewer frames than this is a still image, not a sweep
MAX_SIDE = 4096  # pixels; larger frames are corrupt headers or not ultrasound
MIN_SIDE = 16  # pixels
REGION_SAMPLE = 32  # frames looked at by `find_ultrasound_region` in `video_to_clip`

CONTAINERS = ("mp4", "mov", "avi", "mkv", "dicom")

PathLike = str | Path


class VideoError(ValueError):
    """A video the platform cannot use; `reason` is meant for the person who uploaded it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class VideoInfo:
    """What ingestion stores on the Video row."""

    container: str  # "mp4", "avi", "mov", "mkv", "dicom"
    codec: str  # fourcc (e.g. "FMP4", "MJPG", "avc1") or DICOM transfer syntax name
    fps: float  # 0.0 when the file does not say
    frame_count: int  # counted by decoding (DICOM: Number of Frames), never duration x fps
    width: int
    height: int
    duration_s: float  # frame_count / fps, 0.0 when fps is unknown


@dataclass(frozen=True)
class Region:
    """A rectangle in pixels: `x, y` top-left corner, `w, h` size (exclusive end at x + w)."""

    x: int
    y: int
    w: int
    h: int

    @property
    def x1(self) -> int:
        return self.x + self.w

    @property
    def y1(self) -> int:
        return self.y + self.h

    @property
    def area(self) -> int:
        return max(self.w, 0) * max(self.h, 0)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)

    def clip(self, width: int, height: int) -> Region:
        """This region intersected with a `width` x `height` frame (possibly empty)."""
        x0, y0 = min(max(self.x, 0), width), min(max(self.y, 0), height)
        x1, y1 = min(max(self.x1, 0), width), min(max(self.y1, 0), height)
        return Region(x0, y0, x1 - x0, y1 - y0)

    def intersection(self, other: Region) -> Region:
        x0, y0 = max(self.x, other.x), max(self.y, other.y)
        x1, y1 = min(self.x1, other.x1), min(self.y1, other.y1)
        return Region(x0, y0, max(x1 - x0, 0), max(y1 - y0, 0))

    def iou(self, other: Region) -> float:
        inter = self.intersection(other).area
        union = self.area + other.area - inter
        return inter / union if union else 0.0

    @classmethod
    def full(cls, width: int, height: int) -> Region:
        return cls(0, 0, int(width), int(height))


# ----------------------------------------------------------------------------------------
# Recognising the container


_QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
_NOT_VIDEO = (  # (magic, offset, what the file is) for files people upload by mistake
    (b"\x89PNG\r\n\x1a\n", 0, "a PNG image"),
    (b"\xff\xd8\xff", 0, "a JPEG image"),
    (b"GIF8", 0, "a GIF image"),
    (b"BM", 0, "a bitmap image"),
    (b"II*\x00", 0, "a TIFF image"),
    (b"MM\x00*", 0, "a TIFF image"),
    (b"%PDF", 0, "a PDF document"),
    (b"PK\x03\x04", 0, "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", 0, "a gzip archive"),
    (b"Rar!", 0, "a RAR archive"),
    (b"7z\xbc\xaf", 0, "a 7-Zip archive"),
    (b"ID3", 0, "an MP3 audio file"),
    (b"OggS", 0, "an Ogg file"),
)
# Groups a DICOM data set without the 128-byte preamble usually starts with.
_DICOM_GROUPS = {0x0002, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028}


def _looks_like_bare_dicom(head: bytes) -> bool:
    """A DICOM data set written without preamble and "DICM" (older modalities do this)."""
    if len(head) < 12:
        return False
    group, element = struct.unpack_from("<HH", head, 0)
    if group not in _DICOM_GROUPS or element > 0x0100:
        return False
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():  # explicit VR little endian
        return True
    (length,) = struct.unpack_from("<I", head, 4)  # implicit VR: a sane element length
    return length < 1024


def sniff_format(path: PathLike) -> str:
    """The container of `path` from its first bytes: one of `CONTAINERS`.

    Raises `VideoError` for empty files and for anything that is not one of the supported
    video containers, naming what the file looks like when that is recognisable.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            head = f.read(4096)
    except FileNotFoundError:
        raise VideoError("the file does not exist") from None
    except IsADirectoryError:
        raise VideoError("this is a folder, not a video file") from None
    except OSError as e:
        raise VideoError(f"the file cannot be read ({e.strerror or e})") from None
    if size == 0:
        raise VideoError("the file is empty (0 bytes)")
    if head[128:132] == b"DICM":
        return "dicom"
    if head[:4] == b"RIFF":
        if head[8:12] == b"AVI ":
            return "avi"
        if head[8:12] == b"WAVE":
            raise VideoError("the file is a WAV audio recording, not a video")
        raise VideoError("the file is not a video (a RIFF file, but not AVI)")
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand == b"qt  ":
            return "mov"
        if brand in (b"heic", b"heix", b"mif1", b"avif"):
            raise VideoError("the file is a still image (HEIF/AVIF), not a video")
        if brand in (b"M4A ", b"M4B "):
            raise VideoError("the file is an audio recording (M4A), not a video")
        return "mp4"
    if head[4:8] in _QUICKTIME_ATOMS and struct.unpack_from(">I", head, 0)[0] >= 8:
        return "mov"  # classic QuickTime files start with an atom other than ftyp
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "mkv"  # Matroska, WebM included (WebM is a Matroska profile)
    if _looks_like_bare_dicom(head):
        return "dicom"
    if head[:4] == b"\x00\x00\x01\xba" or (len(head) > 376 and head[0] == head[188] == 0x47):
        raise VideoError(
            "MPEG program/transport streams are not supported; export the video as MP4"
        )
    for magic, offset, what in _NOT_VIDEO:
        if head[offset : offset + len(magic)] == magic:
            raise VideoError(f"the file is {what}, not a video")
    if _is_text(head):
        raise VideoError("the file is text, not a video")
    raise VideoError("the file is not a video (its content matches no known video format)")


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte character cut at the end of the sample is still text
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(c.isprintable() or c in "\r\n\t\f" for c in text)


# ----------------------------------------------------------------------------------------
# Incomplete files: the structure says how long the file should be


_INCOMPLETE = (
    "the file is incomplete ({detail}); the upload or the export was probably interrupted"
)


def _check_complete(path: Path, container: str) -> None:
    """Raise `VideoError` when the container's own sizes say the file was cut short."""
    size = path.stat().st_size
    with path.open("rb") as f:
        if container in ("mp4", "mov"):
            _check_boxes(f, size)
        elif container == "avi":
            f.seek(4)
            (riff_size,) = struct.unpack("<I", f.read(4))
            if riff_size + 8 > size:
                detail = f"{size} of {riff_size + 8} bytes"
                raise VideoError(_INCOMPLETE.format(detail=detail))
        elif container == "mkv":
            _check_matroska(f, size)


def _check_boxes(f, size: int) -> None:
    """Walk the top-level ISO-BMFF boxes (ftyp, moov, mdat, ...) of an MP4/MOV file."""
    pos, seen = 0, set()
    while pos + 8 <= size:
        f.seek(pos)
        hdr = f.read(16)
        box_size, kind = struct.unpack_from(">I4s", hdr, 0)
        if box_size == 1 and len(hdr) == 16:
            (box_size,) = struct.unpack_from(">Q", hdr, 8)
        elif box_size == 0:  # "extends to the end of the file"
            box_size = size - pos
        complete = {b"moov", b"mdat"} <= seen
        if box_size < 8 or not kind.isalnum() and kind not in (b"\xa9day", b"uuid"):
            if complete:
                break  # junk after a complete movie (some tools pad files): harmless
            raise VideoError("the file is damaged (its MP4/MOV structure is invalid)")
        if pos + box_size > size:
            if complete and kind not in (b"moov", b"mdat"):
                break  # a cut-short trailing free/skip/meta box: the movie is whole
            name = kind.decode("latin-1")
            raise VideoError(_INCOMPLETE.format(detail=f"its '{name}' section is cut short"))
        seen.add(kind)
        pos += box_size
    if b"moov" not in seen:
        raise VideoError(_INCOMPLETE.format(detail="it has no 'moov' index"))


def _read_vint(f, keep_marker: bool) -> tuple[int, int]:
    """An EBML variable-length integer: (value, length in bytes); value -1 if unknown."""
    first = f.read(1)
    if not first:
        return -2, 0
    b = first[0]
    length = 1
    mask = 0x80
    while length <= 8 and not b & mask:
        mask >>= 1
        length += 1
    if length > 8:
        return -2, 0
    rest = f.read(length - 1)
    value = b if keep_marker else b & (mask - 1)
    for byte in rest:
        value = (value << 8) | byte
    if not keep_marker and value == (1 << (7 * length)) - 1:
        return -1, length  # "unknown size" (live streams)
    return value, length


def _check_matroska(f, size: int) -> None:
    f.seek(0)
    pos = 0
    for _ in range(2):  # the EBML header, then the Segment
        elem_id, n_id = _read_vint(f, keep_marker=True)
        elem_size, n_size = _read_vint(f, keep_marker=False)
        if elem_id < 0 or elem_size == -2:
            raise VideoError(_INCOMPLETE.format(detail="its Matroska header is cut short"))
        pos += n_id + n_size
        if elem_id == 0x18538067:  # Segment
            if elem_size >= 0 and pos + elem_size > size:
                detail = f"{size} of {pos + elem_size} bytes"
                raise VideoError(_INCOMPLETE.format(detail=detail))
            return
        if elem_size < 0:
            return
        pos += elem_size
        f.seek(pos)


# ----------------------------------------------------------------------------------------
# Probing and decoding


def _fourcc(cap: cv2.VideoCapture) -> str:
    code = int(cap.get(cv2.CAP_PROP_FOURCC))
    text = code.to_bytes(4, "little").decode("latin-1").strip("\x00 ")
    return text if text.isprintable() and text else "unknown"


def _sane_fps(fps: float) -> float:
    # FFmpeg reports 0, NaN or timebase-like values (1000, 90000) when the file has no rate
    return float(fps) if np.isfinite(fps) and 0.0 < fps <= 480.0 else 0.0


def _check_size(width: int, height: int, max_side: int) -> None:
    if width <= 0 or height <= 0:
        raise VideoError("the video has no picture (its frame size is 0)")
    if max(width, height) > max_side:
        raise VideoError(
            f"the frames are {width} x {height} pixels; at most {max_side} pixels a side "
            "are accepted, so the file is probably not an ultrasound video"
        )
    if min(width, height) < MIN_SIDE:
        raise VideoError(
            f"the frames are only {width} x {height} pixels; at least {MIN_SIDE} a side "
            "are needed"
        )


def _check_frames(count: int, min_frames: int) -> None:
    if count < min_frames:
        noun = "frame" if count == 1 else "frames"
        raise VideoError(
            f"only {count} {noun}; at least {min_frames} are needed (a sweep through "
            "the nodule, not a still image)"
        )


def _declared_codec(path: Path, container: str) -> str | None:
    """The video codec the container names (AVI, MP4, MOV), for error messages only."""
    try:
        with path.open("rb") as f:
            data = f.read(8 << 20)
            if container in ("mp4", "mov") and b"stsd" not in data:
                f.seek(max(path.stat().st_size - (8 << 20), 0))  # moov at the end
                data = f.read()
    except OSError:
        return None
    if container == "avi":
        at = data.find(b"vids")
        raw = data[at + 4 : at + 8] if at >= 0 else b""
    elif container in ("mp4", "mov"):
        at = data.find(b"stsd")  # full box: version/flags, entry count, then the entry
        raw = data[at + 16 : at + 20] if at >= 0 else b""
    else:
        return None
    text = raw.decode("latin-1").strip("\x00 ")
    return text if len(text) >= 3 and text.isprintable() else None


def _open(path: Path, container: str, max_side: int) -> cv2.VideoCapture:
    _check_complete(path, container)
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        codec = _declared_codec(path, container)
        if codec:
            raise VideoError(
                f"the video codec '{codec}' is not supported; export the video as MP4 "
                "(H.264 or MPEG-4)"
            )
        raise VideoError(
            f"the {container.upper()} file could not be opened: it is damaged or uses a "
            "format the platform cannot read"
        )
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    try:
        _check_size(width, height, max_side)
    except VideoError:
        cap.release()
        raise
    return cap


def _no_frames(container: str, codec: str) -> VideoError:
    return VideoError(
        f"no frame could be decoded: the video codec '{codec}' is not supported or the "
        f"{container.upper()} file is damaged"
    )


def probe_video(
    path: PathLike, *, min_frames: int = MIN_FRAMES, max_side: int = MAX_SIDE
) -> VideoInfo:
    """Container, codec, frame rate, size and frame count of a video, or `VideoError`.

    Frames are counted by decoding them (DICOM: from Number of Frames); the frame rate comes
    from the container (DICOM: Frame Time, Frame Time Vector, Cine Rate or Recommended
    Display Frame Rate) and is 0.0 when the file does not state one.
    """
    p = Path(path)
    container = sniff_format(p)
    if container == "dicom":
        from ml import dicom

        info = dicom.probe(p)
        _check_size(info.width, info.height, max_side)
        _check_frames(info.frame_count, min_frames)
        return info
    cap = _open(p, container, max_side)
    try:
        codec = _fourcc(cap)
        fps = _sane_fps(cap.get(cv2.CAP_PROP_FPS))
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        count = 0
        while cap.grab():  # grab() decodes without the colour conversion of read()
            count += 1
    finally:
        cap.release()
    if count == 0:
        raise _no_frames(container, codec)
    # The declared count is an estimate (duration x rate) in some containers, so only a
    # large shortfall means the stream broke off.
    if declared > 0 and count < declared // 2:
        raise VideoError(
            f"only {count} of about {declared} frames could be decoded; the file is damaged "
            "or incomplete"
        )
    _check_frames(count, min_frames)
    return VideoInfo(container, codec, fps, count, width, height, count / fps if fps else 0.0)


class Source(NamedTuple):
    frames: Iterator[np.ndarray]
    order: str  # channel order of the frames: "bgr" (OpenCV) or "rgb" (DICOM)
    container: str
    declared: Region | None  # the image region the file declares (DICOM)


def open_source(path: PathLike, max_side: int = MAX_SIDE, *, ring: int = 1) -> Source:
    """Validate `path` and start decoding it; errors come before the first frame.

    Frames come in the file's own channel order (`order`), with no conversion. A plain
    video decodes into `ring` reused buffers: the caller may hold at most `ring - 1`
    frames while it takes the next (a pipeline holding frames in flight passes a larger
    ring instead of copying every frame)."""
    p = Path(path)
    container = sniff_format(p)
    if container == "dicom":
        from ml import dicom

        ds = dicom.read_header(p)
        _check_size(int(ds.Columns), int(ds.Rows), max_side)
        return Source(dicom.iter_frames(p, header=ds), "rgb", container, dicom.image_region(ds))
    cap = _open(p, container, max_side)
    return Source(_read_all(cap, container, ring), "bgr", container, None)


def _read_all(cap: cv2.VideoCapture, container: str, ring: int) -> Iterator[np.ndarray]:
    # Decoding into a reused buffer spares a fresh 2.7 MB allocation (and its page faults)
    # per 720p frame: the caller copies what it keeps longer than `ring - 1` frames.
    buffers: list[np.ndarray | None] = [None] * max(1, ring)
    try:
        ok, frame = cap.read()
        if not ok:
            raise _no_frames(container, _fourcc(cap))
        i = 0
        while ok:
            buffers[i] = frame
            yield frame
            i = (i + 1) % len(buffers)
            ok, frame = cap.read(buffers[i])
    finally:
        cap.release()


def iter_frames(path: PathLike, *, max_side: int = MAX_SIDE) -> Iterator[np.ndarray]:
    """Every frame of the video in decoding order as RGB uint8 (H, W, 3); frame N is the
    Nth decoded frame. Raises `VideoError` before the first frame for unusable files."""
    frames, order, _, _ = open_source(path, max_side)
    if order == "rgb":
        yield from frames
        return
    for frame in frames:
        yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------------------------
# The ultrasound image inside the frame


def to_gray(frame: np.ndarray, order: str = "rgb") -> np.ndarray:
    """The frame in grayscale (itself when it already is); `order` is 'rgb' or 'bgr'."""
    if frame.ndim == 2:
        return frame
    if frame.shape[2] == 1:
        return frame[..., 0]
    code = cv2.COLOR_RGB2GRAY if order == "rgb" else cv2.COLOR_BGR2GRAY
    return cv2.cvtColor(frame, code)


def find_ultrasound_region(
    frames: np.ndarray | Sequence[np.ndarray], *, work_side: int = 256
) -> Region:
    """Where the ultrasound image lies in the frame, from a small sample of frames.

    The ultrasound image (a fan or a rectangle) is the largest region whose pixels change
    over time: speckle decorrelates as the probe moves and even anechoic areas carry
    electronic noise, whereas burned-in text, grey and colour bars, logos and rulers are
    static. With a single frame, texture (local contrast) stands in for change. The sample
    is downscaled to `work_side` pixels on its long side, so 32 frames take milliseconds.
    `frames`: (N, H, W, 3) RGB or (N, H, W) gray, N >= 1; the bounding box of the image
    is returned in the frames' pixel coordinates.
    """
    if len(frames) == 0:
        raise ValueError("find_ultrasound_region needs at least one frame")
    height, width = frames[0].shape[:2]
    scale = min(1.0, work_side / max(height, width))
    sw, sh = max(1, round(width * scale)), max(1, round(height * scale))
    if len(frames) > REGION_SAMPLE:
        frames = [frames[i] for i in np.linspace(0, len(frames) - 1, REGION_SAMPLE).astype(int)]
    small = np.stack(
        [cv2.resize(to_gray(f), (sw, sh), interpolation=cv2.INTER_AREA) for f in frames]
    ).astype(np.float32)  # (N, h, w)

    # Temporal standard deviation: speckle that decorrelates between frames reaches ten gray
    # levels and more; static overlays stay at compression noise (about 1-3 levels even
    # where a codec's blocks straddle the image's edge).
    activity = small.std(0) if len(small) > 1 else np.zeros((sh, sw), np.float32)
    floor = 2.0
    if np.count_nonzero(activity > 2 * floor) < 0.01 * activity.size:
        # a single frame or a frozen clip: local contrast (speckle texture) stands in
        g = small.mean(0)
        mean = cv2.blur(g, (3, 3))
        activity = np.sqrt(np.maximum(cv2.blur(g * g, (3, 3)) - mean * mean, 0.0))
    # A median (in quarter levels, for uint8) removes thin strokes such as a running clock
    # and fills the dark spots of speckle.
    activity = cv2.medianBlur(np.clip(activity * 4, 0, 255).astype(np.uint8), 5) / 4.0
    k = max(3, round(min(sh, sw) * 0.02)) | 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))

    def clean(mask: np.ndarray) -> np.ndarray:
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel)  # specks
        return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)  # one surface

    # Hysteresis: the core is clearly active; dim parts of the image (deep or anechoic
    # areas, a fan's flanks) join it where they rise above the noise and touch it.
    core = clean(activity > max(1.5 * floor, 0.25 * float(np.percentile(activity, 99))))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(core, connectivity=8)
    if n <= 1:
        return Region.full(width, height)
    seed = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    weak = clean(activity > floor) | seed
    n, labels = cv2.connectedComponents(weak, connectivity=8)
    keep = np.unique(labels[seed])
    ys, xs = np.nonzero(np.isin(labels, keep[keep > 0]))
    x, y = int(xs.min()), int(ys.min())
    w, h = int(xs.max()) + 1 - x, int(ys.max()) + 1 - y
    # back to full resolution, rounding outwards
    x0, y0 = int(np.floor(x / scale)), int(np.floor(y / scale))
    x1, y1 = int(np.ceil((x + w) / scale)), int(np.ceil((y + h) / scale))
    return Region(x0, y0, x1 - x0, y1 - y0).clip(width, height)


def blank_outside(
    frame: np.ndarray,
    region: Region,
    masks: Iterable[Region] = (),
    *,
    copy: bool = True,
) -> np.ndarray:
    """Zero everything outside `region` and inside each of `masks` (burned-in text).

    `masks` are rectangles in frame coordinates a centre declares (e.g. where its scanner
    prints the patient name inside the image area). Works on (H, W) and (H, W, C) frames.
    """
    out = frame.copy() if copy else frame
    height, width = frame.shape[:2]
    r = region.clip(width, height)
    out[: r.y] = 0
    out[r.y1 :] = 0
    out[r.y : r.y1, : r.x] = 0
    out[r.y : r.y1, r.x1 :] = 0
    for m in masks:
        m = m.clip(width, height)
        out[m.y : m.y1, m.x : m.x1] = 0
    return out


# ----------------------------------------------------------------------------------------
# Clips


class ClipBuilder:
    """Turns frames into a training clip, one frame at a time.

    `.add(frame)` crops to `region`, blanks `masks` (frame coordinates), converts to
    grayscale and resizes to `size` = (height, width) with `INTER_AREA`; `.finish()` returns
    the (T, H, W) uint8 clip with every frame kept. Frames are RGB (H, W, 3) unless
    `channel_order="bgr"` (straight from OpenCV), or already grayscale (H, W).
    """

    def __init__(
        self,
        region: Region,
        size: tuple[int, int] = (128, 128),
        *,
        masks: Iterable[Region] = (),
        channel_order: str = "rgb",
    ):
        if channel_order not in ("rgb", "bgr"):
            raise ValueError("channel_order is 'rgb' or 'bgr'")
        self.region = region
        self.size = (int(size[0]), int(size[1]))
        self.masks = tuple(masks)
        self.channel_order = channel_order
        self._frames: list[np.ndarray] = []
        self._shape: tuple[int, int] | None = None
        self._crop: Region | None = None
        self._local_masks: list[Region] = []
        self._seen = 0

    def _setup(self, height: int, width: int) -> None:
        crop = self.region.clip(width, height)
        if crop.area == 0:
            raise VideoError(
                f"the ultrasound region {self.region.as_tuple()} lies outside the "
                f"{width} x {height} frame"
            )
        self._shape, self._crop = (height, width), crop
        for m in self.masks:  # into crop coordinates
            m = m.intersection(crop)
            if m.area:
                self._local_masks.append(Region(m.x - crop.x, m.y - crop.y, m.w, m.h))

    def add(self, frame: np.ndarray) -> None:
        self.check(frame)
        self._frames.append(self.standardise(frame))

    def check(self, frame: np.ndarray) -> None:
        """Take the next frame's size (the first sets the crop); raise if it changed."""
        if self._shape is None:
            self._setup(*frame.shape[:2])
        elif frame.shape[:2] != self._shape:
            raise VideoError(
                f"the frame size changes within the video (frame {self._seen} is "
                f"{frame.shape[1]} x {frame.shape[0]}, the first was "
                f"{self._shape[1]} x {self._shape[0]})"
            )
        self._seen += 1

    def standardise(self, frame: np.ndarray) -> np.ndarray:
        """One frame of the clip, (H, W) uint8, from a frame `check` has seen; reads only
        settings, so threads may call it in parallel (`append` keeps the order)."""
        c = self._crop
        crop = frame[c.y : c.y1, c.x : c.x1]  # a view; the colour conversion copies
        gray = to_gray(crop, self.channel_order)
        if self._local_masks:
            if gray is crop or gray.base is not None:
                gray = gray.copy()
            for m in self._local_masks:
                gray[m.y : m.y1, m.x : m.x1] = 0
        h, w = self.size
        return cv2.resize(gray, (w, h), interpolation=cv2.INTER_AREA)

    def append(self, small: np.ndarray) -> None:
        """Append a frame `standardise` made."""
        self._frames.append(small)

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def crop(self) -> Region:
        """The region actually cropped: `region` clipped to the frame (after a first add)."""
        return self._crop or self.region

    def finish(self) -> np.ndarray:
        """The clip (T, H, W) uint8."""
        if not self._frames:
            raise VideoError("the video has no frames")
        return np.stack(self._frames)


def declared_region(path: PathLike) -> Region | None:
    """The ultrasound image region the file itself declares (DICOM's Sequence of Ultrasound
    Regions, the largest 2D tissue region), or None."""
    p = Path(path)
    if sniff_format(p) != "dicom":
        return None
    from ml import dicom

    return dicom.image_region(p)


def video_to_clip(
    path: PathLike,
    size: tuple[int, int] = (128, 128),
    region: Region | None = None,
    *,
    min_frames: int = MIN_FRAMES,
    masks: Iterable[Region] = (),
    max_side: int = MAX_SIDE,
) -> tuple[np.ndarray, Region]:
    """Decode `path` into a (T, H, W) uint8 clip of the ultrasound image and its region.

    The region is `region` when given, else the one a DICOM file declares, else
    `find_ultrasound_region` on the first `REGION_SAMPLE` frames (kept in grayscale while
    the region is found, then streamed). `masks` are blanked before resizing.
    """
    frames, order, _, declared = open_source(path, max_side)
    region = region or declared
    head: list[np.ndarray] = []
    if region is None:
        for frame in frames:
            gray = to_gray(frame, order)
            head.append(gray if gray is not frame else gray.copy())
            if len(head) == REGION_SAMPLE:
                break
        if not head:
            raise VideoError("the video has no frames")
        region = find_ultrasound_region(head)
    builder = ClipBuilder(region, size, masks=masks, channel_order=order)
    for frame in head:
        builder.add(frame)
    del head
    for frame in frames:
        builder.add(frame)
    _check_frames(len(builder), min_frames)
    return builder.finish(), builder.crop
