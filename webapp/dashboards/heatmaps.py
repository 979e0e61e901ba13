"""A prediction's heatmaps for the browser: the stored heatmaps.npz (uint8, compressed) turned
into one small binary that JavaScript reads with a DataView, gzip-encoded on the wire.

Layout (little-endian): b"THM1", uint32 K (attention maps), T, H, W, then `gradcam` as T*H*W
bytes and `attention` as K*T*H*W bytes, values / 255 in [0, 1]. Frame t of the maps is frame t
of the video's frame store; the maps cover the clip region `Prediction.region` of each frame.
"""

from __future__ import annotations

import gzip
import io
import struct

import numpy as np
from django.core.cache import cache
from django.core.files.storage import default_storage

MAGIC = b"THM1"
CACHE_SECONDS = 24 * 3600


def encode(gradcam: np.ndarray, attention: np.ndarray) -> bytes:
    """(T, H, W) and (K, T, H, W) uint8 -> the gzip-compressed binary above."""
    gradcam = np.ascontiguousarray(gradcam, np.uint8)
    t, h, w = gradcam.shape
    attention = np.ascontiguousarray(attention, np.uint8).reshape(-1, t, h, w)
    header = MAGIC + struct.pack("<4I", attention.shape[0], t, h, w)
    # mtime=0: the same maps give the same bytes, so the ETag and caches stay valid.
    return gzip.compress(header + gradcam.tobytes() + attention.tobytes(), mtime=0)


def decode(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of `encode` (for tests and scripts)."""
    raw = gzip.decompress(data)
    if raw[:4] != MAGIC:
        raise ValueError("not a heatmap binary")
    k, t, h, w = struct.unpack("<4I", raw[4:20])
    body = np.frombuffer(raw, np.uint8, offset=20)
    return body[: t * h * w].reshape(t, h, w), body[t * h * w:].reshape(k, t, h, w)


def heatmap_bytes(name: str) -> bytes:
    """The browser binary of the stored npz `name`, cached: storage names carry the model and
    frame-store versions, so their content never changes."""
    key = f"dashboards:heatmap:{name}"
    data = cache.get(key)
    if data is None:
        with default_storage.open(name, "rb") as f:
            with np.load(io.BytesIO(f.read()), allow_pickle=False) as z:
                gradcam = z["gradcam"]
                attention = z["attention"] if "attention" in z.files else np.zeros(
                    (0, *gradcam.shape), np.uint8)
        data = encode(gradcam, attention)
        cache.set(key, data, CACHE_SECONDS)
    return data
