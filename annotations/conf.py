"""The platform's own settings (settings.THYROCINE), with the defaults the code relies on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    "MAX_UPLOAD_BYTES": 4 * 1024**3,
    "INCOMING_DIR": None,  # VAR_DIR / "incoming"
    "MIN_FRAMES": 8,
    "MAX_FRAME_SIDE": 4096,
    "CLIP_SIZE": (128, 128),
    "FRAME_CHUNK_SIZE": 32,
    "FRAME_JPEG_QUALITY": 90,
    "THUMBNAIL_WIDTH": 320,
    "UPLOAD_CHUNK_BYTES": 64 * 1024**2,
    "NIFTP_LABEL": "benign",
    # A player fetches hundreds of frames a minute: their views are audited once per user,
    # video and this many seconds, not once per request (annotations.services).
    "FRAME_AUDIT_WINDOW_SECONDS": 30 * 60,
}


def setting(name: str) -> Any:
    value = getattr(settings, "THYROCINE", {}).get(name, DEFAULTS[name])
    if name == "INCOMING_DIR":
        return Path(value) if value else Path(settings.VAR_DIR) / "incoming"
    return value


def incoming_dir() -> Path:
    """The private folder for identified bytes (uploads before de-identification)."""
    path = setting("INCOMING_DIR")
    path.mkdir(parents=True, exist_ok=True)
    return path


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} bytes"  # pragma: no cover
