"""Turn one de-identified video file into what the platform stores: the frame store (JPEG
chunks, burned-in text blanked), a thumbnail, the training clip, and the kept source (the
video itself with the same areas blanked, annotations.kept_source) that replaces the upload.

One decoding pass, frame by frame, so memory stays bounded whatever the length: decoding,
the ultrasound region and the clip come from `ml.video` (the same code as `python -m ml
dataset`, so the platform and the command line make identical clips). No Django here: paths
and arrays in, a `Processed` out; `annotations.services` stores the files and the row.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from annotations.framestore import ChunkWriter
from annotations.kept_source import DicomRleWriter, MjpegMatroskaWriter
from ml import video as mlvideo
from ml.video import ClipBuilder, Region, VideoError, VideoInfo

MasksFor = Callable[[int, int], Iterable[Region]]
ENCODERS = 2  # JPEG encoder threads


@dataclass(frozen=True)
class Options:
    min_frames: int = 8
    max_side: int = 4096
    clip_size: tuple[int, int] = (128, 128)
    chunk_size: int = 32
    jpeg_quality: int = 90
    thumbnail_width: int = 320


@dataclass
class Processed:
    info: VideoInfo
    region: Region
    region_source: str  # "dicom" | "image"
    masks: list[Region]
    chunks: list[Path]
    thumbnail: Path
    clip: Path
    clip_shape: tuple[int, int, int]
    source: Path  # the kept source: blanked like the frame store, same frame count
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


class ClipWriter:
    """Streams the training clip to `path` (.npy) with bounded memory.

    `ml.video.ClipBuilder` standardises every frame (the same code as the dataset builder);
    `check` takes frames in order, `standardise` may run in any thread, and `append` takes
    the results in order. Every `batch` frames go to a raw file, so a 10,000-frame video
    never holds its whole clip in memory twice. `finish` writes the .npy."""

    def __init__(self, path: Path, region: Region, size: tuple[int, int], masks,
                 channel_order: str = "rgb", batch: int = 256):
        self.path, self.size, self.batch = path, size, batch
        self.builder = ClipBuilder(region, size, masks=list(masks), channel_order=channel_order)
        self.raw_path = path.with_suffix(".raw")
        self.raw = self.raw_path.open("wb")
        self.frames: list[np.ndarray] = []
        self.count = 0

    def check(self, frame: np.ndarray) -> None:
        self.builder.check(frame)

    def standardise(self, frame: np.ndarray) -> np.ndarray:
        return self.builder.standardise(frame)

    def append(self, small: np.ndarray) -> None:
        self.frames.append(small)
        if len(self.frames) >= self.batch:
            self._flush()

    def __len__(self) -> int:
        return self.count + len(self.frames)

    @property
    def crop(self) -> Region:
        return self.builder.crop

    def _flush(self) -> None:
        if self.frames:
            self.raw.write(np.stack(self.frames).tobytes())
            self.count += len(self.frames)
            self.frames = []

    def finish(self) -> tuple[int, int, int]:
        self._flush()
        self.raw.close()
        h, w = self.size
        shape = (self.count, h, w)
        clip = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.uint8, shape=shape)
        step = max(1, (64 * 1024 * 1024) // (h * w))
        with self.raw_path.open("rb") as raw:
            for start in range(0, self.count, step):
                n = min(step, self.count - start)
                clip[start : start + n] = np.frombuffer(raw.read(n * h * w), np.uint8).reshape(
                    n, h, w)
        clip.flush()
        del clip
        self.raw_path.unlink()
        return shape


def _header_info(path: Path, container: str, max_side: int) -> tuple[VideoInfo, int]:
    """What the file says about itself before decoding: (info with frame_count as declared,
    declared frame count or 0). Frames are counted while decoding."""
    if container == "dicom":
        from ml import dicom

        info = dicom.probe(path)
        return info, info.frame_count
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        code = int(cap.get(cv2.CAP_PROP_FOURCC))
        codec = code.to_bytes(4, "little").decode("latin-1").strip("\x00 ") or "unknown"
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        fps = fps if np.isfinite(fps) and 0.0 < fps <= 480.0 else 0.0
        declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()
    codec = codec if codec.isprintable() else "unknown"
    return VideoInfo(container, codec, fps, 0, width, height, 0.0), max(declared, 0)


def _is_gray(frame: np.ndarray, tolerance: int = 4) -> bool:
    """Whether the three channels agree within `tolerance` on every 8th pixel of every 8th
    row (colour flow and coloured overlays are never that thin)."""
    sample = frame[::8, ::8].astype(np.int16)  # RGB or BGR: G is the middle channel either way
    return bool(np.abs(sample[..., 0] - sample[..., 1]).max() <= tolerance
                and np.abs(sample[..., 2] - sample[..., 1]).max() <= tolerance)


class Unusable(VideoError):
    """A video decoded to its end but refused as it is (too few frames). Its blanked source
    is whole, so it replaces the upload and `manage.py reprocess` can run it after a change
    of settings; other failures leave no whole blanked copy behind."""

    def __init__(self, reason: str, *, source: Path, region: Region, region_source: str,
                 info: VideoInfo):
        super().__init__(reason)
        self.source, self.region, self.region_source, self.info = (
            source, region, region_source, info)


def too_few_frames(count: int, minimum: int) -> str:
    noun = "frame" if count == 1 else "frames"
    return (f"only {count} {noun}; at least {minimum} are needed (a sweep through the nodule, "
            "not a still image)")


def process_video(
    path: Path, out_dir: Path, *, masks_for: MasksFor = lambda w, h: (), options: Options,
    region: Region | None = None, region_source: str = "",
) -> Processed:
    """Decode `path` once and write chunk files, `thumbnail.jpg`, `clip.npy` and the kept
    source (`source.mkv` or `source.dcm`) to `out_dir`.

    `region` (with its `region_source`) is the ultrasound region found when the video was
    first processed: a kept source is blank outside it, where finding it again could only
    shrink it. Raises `VideoError` with a reason a person understands for every unusable
    file (`Unusable` when the blanked source is whole nevertheless).
    """
    t0 = time.perf_counter()
    container = mlvideo.sniff_format(path)
    info, declared = _header_info(path, container, options.max_side)
    # Frames stay in the decoder's channel order (OpenCV's BGR, DICOM's RGB) from decoding to
    # JPEG: converting 720p frames to RGB and back cost as much CPU as the blanking, the clip
    # and the stores together. They decode into a ring of reused buffers, one more than the
    # pipeline below holds at once.
    in_flight = 2 * ENCODERS + 2
    frames, order, _, _ = mlvideo.open_source(path, options.max_side, ring=in_flight + 2)

    if region is None and container == "dicom":
        region, region_source = mlvideo.declared_region(path), "dicom"
    head: list[np.ndarray] = []
    if region is None:
        region_source = "image"
        for frame in frames:
            head.append(frame.copy())  # the decoder reuses its buffers
            if len(head) == mlvideo.REGION_SAMPLE:
                break
        if not head:
            raise VideoError("the video has no frames")
        region = mlvideo.find_ultrasound_region([mlvideo.to_gray(f, order) for f in head])
    t_region = time.perf_counter()

    writer = ChunkWriter(out_dir, options.chunk_size)
    builder: ClipWriter | None = None
    source: DicomRleWriter | MjpegMatroskaWriter | None = None
    masks: list[Region] = []
    thumb_at = declared // 2 if declared > 0 else 0
    thumbnail: np.ndarray | None = None
    quality = [int(cv2.IMWRITE_JPEG_QUALITY), options.jpeg_quality]

    def encode(frame: np.ndarray) -> tuple[bytes, bool]:
        """The frame's JPEG and whether it is gray."""
        # B-mode frames are gray (R = G = B up to codec rounding): one channel is a smaller
        # JPEG, faster to write and to decode in the player. Colour (Doppler, coloured
        # overlays) keeps its colour.
        gray = _is_gray(frame)
        if gray:
            ok, buf = cv2.imencode(".jpg", cv2.extractChannel(frame, 1), quality)
        else:
            bgr = frame if order == "bgr" else cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
            ok, buf = cv2.imencode(".jpg", bgr, quality)
        if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
            raise VideoError("a frame could not be encoded as JPEG")
        return buf.tobytes(), gray

    def encode_all(frame: np.ndarray) -> tuple[bytes, bool, bytes | None, np.ndarray]:
        jpeg, gray = encode(frame)
        # A DICOM source keeps lossless pixels: its RLE fragment is made here, in parallel.
        fragment = source.encode(frame) if isinstance(source, DicomRleWriter) else None
        return jpeg, gray, fragment, builder.standardise(frame)

    def store(frame: np.ndarray, done) -> None:
        jpeg, gray, fragment, small = done.result()
        writer.add(jpeg)
        builder.append(small)
        if fragment is None:
            source.add(frame, jpeg, gray=gray)
        else:
            source.add_fragment(fragment, frame.shape[:2])

    def all_frames():
        yield from head
        head.clear()
        yield from frames

    # Three stages overlap: this thread decodes and blanks; `ENCODERS` threads encode the
    # JPEG (the costliest step: a 720p speckle frame takes longer to encode than to decode)
    # and standardise the clip frame; one thread writes the chunks, the clip and the kept
    # source in order. OpenCV and file writes release the GIL. At most `in_flight` frames
    # are on their way (bounded memory, and the decoder's ring is never overwritten early);
    # the kept source of a plain video is made of the same JPEGs, so it costs no encoding
    # of its own.
    count = 0
    pending: deque = deque()
    try:
        with ThreadPoolExecutor(max_workers=ENCODERS) as pool, \
                ThreadPoolExecutor(max_workers=1) as storer:
            for frame in all_frames():
                if builder is None:
                    height, width = frame.shape[:2]
                    masks = [m for m in masks_for(width, height) if m.area]
                    builder = ClipWriter(out_dir / "clip.npy", region, options.clip_size,
                                         masks, channel_order=order)
                    if container == "dicom":
                        source = DicomRleWriter(out_dir / "source.dcm", header_from=path)
                    else:
                        source = MjpegMatroskaWriter(out_dir / "source.mkv", width=width,
                                                     height=height, fps=info.fps,
                                                     quality=options.jpeg_quality)
                frame = np.ascontiguousarray(frame)
                builder.check(frame)
                mlvideo.blank_outside(frame, region, masks, copy=False)
                if count == thumb_at:
                    thumbnail = frame.copy()
                while len(pending) >= in_flight:
                    pending.popleft().result()
                pending.append(storer.submit(store, frame, pool.submit(encode_all, frame)))
                count += 1
            while pending:
                pending.popleft().result()
        writer.flush()
        if source is not None:
            source.finish()
    except BaseException:
        if source is not None:
            source.discard()  # a part of the video is not a copy of it
        raise
    t_decode = time.perf_counter()

    if count == 0 or builder is None:
        raise VideoError("no frame could be decoded: the file is damaged or its codec is not "
                         "supported")
    if container != "dicom" and declared > 0 and count < declared // 2:
        source.discard()  # the decoded part only: the damaged upload itself is kept
        raise VideoError(
            f"only {count} of about {declared} frames could be decoded; the file is damaged "
            "or incomplete"
        )
    if count < options.min_frames:
        builder.finish()
        raise Unusable(too_few_frames(count, options.min_frames), source=source.path,
                       region=builder.crop, region_source=region_source,
                       info=_counted(info, count, frame))

    if thumbnail is None:
        thumbnail = frame
    th, tw = thumbnail.shape[:2]
    scale = min(1.0, options.thumbnail_width / tw)
    small = cv2.resize(thumbnail, (max(1, round(tw * scale)), max(1, round(th * scale))),
                       interpolation=cv2.INTER_AREA)
    thumb_path = out_dir / "thumbnail.jpg"
    thumb_path.write_bytes(encode(small)[0])

    clip_shape = builder.finish()

    info = _counted(info, count, thumbnail)
    t_end = time.perf_counter()
    return Processed(
        info=info,
        region=builder.crop,
        region_source=region_source,
        masks=masks,
        chunks=writer.chunks,
        thumbnail=thumb_path,
        clip=builder.path,
        clip_shape=clip_shape,
        source=source.path,
        seconds=t_end - t0,
        timings={"region": t_region - t0, "decode_store": t_decode - t_region,
                 "finish": t_end - t_decode},
    )


def _counted(info: VideoInfo, count: int, frame: np.ndarray) -> VideoInfo:
    """`info` with the decoded frame count (and the frame's size when the header had none)."""
    fps = info.fps
    return VideoInfo(info.container, info.codec, fps, count, info.width or frame.shape[1],
                     info.height or frame.shape[0], count / fps if fps else 0.0)
