"""Settings of the training app (settings.THYROCINE_TRAINING), with the defaults it relies on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # Run directories (checkpoints, logs) and exported snapshots. Resuming a run needs its
    # directory, so GPU hosts that may resume each other's runs share this folder.
    "DIR": None,  # VAR_DIR / "training"
    # The supervising task stamps its run this often, and a run whose stamp is older than
    # STALE_AFTER_SECONDS is failed by `services.runs_reap_stale` (worker killed, host lost).
    "HEARTBEAT_SECONDS": 5.0,
    "STALE_AFTER_SECONDS": 60.0,
    # After a cancel, the training process group gets SIGTERM, then SIGKILL after this long.
    "CANCEL_GRACE_SECONDS": 10.0,
    "MAX_GPUS": 8,
    # The queue training runs go to: "gpu" (settings.CELERY_TASK_ROUTES), or a queue of their
    # own so that long runs never hold up the gpu workers' inference (the demo does this).
    "QUEUE": "gpu",
    # Characters of the training log kept on the run row for the page's log tail.
    "LOG_TAIL_CHARS": 6000,
}


def setting(name: str) -> Any:
    value = getattr(settings, "THYROCINE_TRAINING", {}).get(name, DEFAULTS[name])
    if name == "DIR":
        return Path(value) if value else Path(settings.VAR_DIR) / "training"
    return value


def training_dir() -> Path:
    path = setting("DIR")
    path.mkdir(parents=True, exist_ok=True)
    return path
