"""Fixtures for ingestion tests: private media storage and incoming folder per test, real
video files written at test time, and the pydicom test files."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest


@pytest.fixture
def storage(settings, tmp_path):
    """Media storage and the incoming folder in this test's temporary folder."""
    media = tmp_path / "media"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                    "OPTIONS": {"location": str(media)}},
    }
    incoming = tmp_path / "incoming"
    settings.THYROCINE = {**settings.THYROCINE, "INCOMING_DIR": incoming}
    return {"media": media, "incoming": incoming}


@pytest.fixture
def eager_tasks(monkeypatch):
    """Run the processing task in this process, after the commit, through the task's own
    code (`Task.apply`). Celery's eager setting is not used: the app reads Django's settings
    once, so changing it would leak into later tests (the real-worker tests among them)."""
    from django.db import transaction

    from annotations import services, tasks

    def enqueue(video):
        transaction.on_commit(lambda: tasks.video_process.apply(args=[video.pk]))

    monkeypatch.setattr(services, "_enqueue_processing", enqueue)


def dicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert path is not None, f"pydicom-data lacks {name}"
    return Path(path)


def write_video(path: Path, frames: np.ndarray, fps: float = 25.0, fourcc: str = "mp4v") -> Path:
    """Write RGB frames with OpenCV; the container follows the suffix."""
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path.suffix}"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def sweep_frames(n: int = 12, h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A small moving speckle image inside a frame with a static, text-like banner."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, h, w, 3), np.uint8)
    for t in range(n):
        image = rng.integers(40, 200, (h - 24, w - 16), dtype=np.uint8)
        frames[t, 20 : h - 4, 8 : w - 8] = image[..., None]
        cv2.putText(frames[t], "DOE^JANE", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 255), 1)
    return frames


@pytest.fixture
def copy_to(tmp_path):
    def copy(src: Path, name: str | None = None) -> Path:
        dst = tmp_path / "files" / (name or src.name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return dst

    return copy
