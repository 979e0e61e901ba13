"""The frame store: every frame of a video as a JPEG, addressable by index without decoding
the video (as CVAT's chunks are).

Frames are grouped in chunks of `chunk_size` consecutive frames; chunk `k` holds frames
`k * chunk_size ...` and is one file:

    b"TCF1"  uint32 n  uint32 offsets[n + 1]  JPEG bytes of frame 0 .. n-1

all little-endian, offsets from the start of the file, frame `i` being
`data[offsets[i]:offsets[i + 1]]`. Serving frame N reads the small header and one slice;
the player fetches whole chunks to prefetch and slices them the same way.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

MAGIC = b"TCF1"


def chunk_name(index: int) -> str:
    return f"chunk-{index:05d}.bin"


class ChunkWriter:
    """Collects encoded frames and writes `chunk-NNNNN.bin` files into `folder`."""

    def __init__(self, folder: Path, chunk_size: int):
        self.folder = folder
        self.chunk_size = chunk_size
        self.frames: list[bytes] = []
        self.chunks: list[Path] = []

    def add(self, jpeg: bytes) -> None:
        self.frames.append(jpeg)
        if len(self.frames) == self.chunk_size:
            self.flush()

    def flush(self) -> None:
        if not self.frames:
            return
        path = self.folder / chunk_name(len(self.chunks))
        n = len(self.frames)
        header = 8 + 4 * (n + 1)
        offsets = [header]
        for frame in self.frames:
            offsets.append(offsets[-1] + len(frame))
        with path.open("wb") as f:
            f.write(MAGIC + struct.pack(f"<I{n + 1}I", n, *offsets))
            for frame in self.frames:
                f.write(frame)
        self.chunks.append(path)
        self.frames = []


def read_frame(f: BinaryIO, position: int) -> bytes:
    """The JPEG bytes of the frame at `position` within an open chunk file."""
    head = f.read(8)
    if head[:4] != MAGIC:
        raise ValueError("not a frame chunk")
    (n,) = struct.unpack_from("<I", head, 4)
    if not 0 <= position < n:
        raise IndexError(position)
    f.seek(8 + 4 * position)
    start, end = struct.unpack("<II", f.read(8))
    f.seek(start)
    return f.read(end - start)
