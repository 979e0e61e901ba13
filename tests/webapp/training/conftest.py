"""Fixtures for the training app: private media and training folders, ready videos with real
clips in storage, tiny but real model versions, and Celery workers that a test may kill and
start again."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from annotations.models import Diagnosis, PathologySource, VideoStatus
from tests.conftest import REPO, _database_url_for_subprocess
from tests.factories import NoduleFactory, PathologyFactory, PatientFactory, VideoFactory

# Small enough for 2 shared CPU cores: 8 frames of 32 x 32 through the real irv2_cam (small).
TINY = {"frames": 8, "size": 32, "epochs": 2, "batch_size": 4, "num_workers": 0,
        "log_every": 1, "lr": 0.003, "warmup_epochs": 0.5}


@pytest.fixture
def training_env(settings, tmp_path, monkeypatch):
    """Media storage and the training folder in this test's temporary folder, for this
    process and (through the environment) for workers it starts."""
    media, training = tmp_path / "media", tmp_path / "training"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                    "OPTIONS": {"location": str(media)}},
    }
    settings.THYROCINE_TRAINING = {**settings.THYROCINE_TRAINING, "DIR": training,
                                   "HEARTBEAT_SECONDS": 0.5, "STALE_AFTER_SECONDS": 20.0}
    settings.THYROCINE = {**settings.THYROCINE, "INCOMING_DIR": tmp_path / "incoming"}
    monkeypatch.setenv("THYROCINE_INCOMING_DIR", str(tmp_path / "incoming"))
    monkeypatch.setenv("MEDIA_ROOT", str(media))
    monkeypatch.setenv("THYROCINE_TRAINING_DIR", str(training))
    monkeypatch.setenv("TRAINING_HEARTBEAT_SECONDS", "0.5")
    monkeypatch.setenv("TRAINING_STALE_AFTER_SECONDS", "20")
    return {"media": media, "training": training}


def tiny_clip(label: int, frames: int = 12, side: int = 32, seed: int = 0) -> np.ndarray:
    """A grey nodule in speckle; malignant ones hold a bright 2 x 2 focus in a few frames
    (as tests/ml's tiny dataset), so a tiny model has something to learn."""
    rng = np.random.default_rng(seed)
    clip = rng.integers(20, 60, (frames, side, side)).astype(np.uint8)
    cx, cy, r = int(rng.integers(12, 20)), int(rng.integers(12, 20)), 7
    clip[1:-1, cy - r: cy + r, cx - r: cx + r] = 90
    if label:
        fy, fx = cy + int(rng.integers(-3, 2)), cx + int(rng.integers(-3, 2))
        clip[3:9, fy: fy + 2, fx: fx + 2] = 250
    return clip


def make_case(centre, *, label: int | None, patient=None, seed: int = 0, ready: bool = True,
              bethesda: str = "", frames: int = 12):
    """A nodule with pathology (label 1 malignant, 0 benign, None indeterminate cytology) and
    a ready video whose clip lies in storage as processing writes it."""
    patient = patient or PatientFactory(centre=centre)
    nodule = NoduleFactory(patient=patient)
    if label == 1:
        PathologyFactory(nodule=nodule)
    elif label == 0:
        PathologyFactory(nodule=nodule, outcome="benign",
                         diagnosis=Diagnosis.FOLLICULAR_NODULAR_DISEASE)
    elif bethesda:
        PathologyFactory(nodule=nodule, outcome="indeterminate", diagnosis="",
                         source=PathologySource.FNA, bethesda=bethesda)
    video = VideoFactory(nodule=nodule, status=VideoStatus.READY if ready else
                         VideoStatus.PROCESSING, frame_count=frames)
    if ready:
        clip = tiny_clip(label or 0, frames=frames, seed=seed)
        buf = io.BytesIO()
        np.save(buf, clip)
        name = default_storage.save(f"frames/{centre.code}/{video.pk}/v1/clip.npy",
                                    ContentFile(buf.getvalue()))
        video.clip, video.clip_shape, video.frames_version = name, list(clip.shape), 1
        video.region_x, video.region_y, video.region_w, video.region_h = 10, 20, 320, 240
        video.save()
    return nodule, video


def make_cohort(centre, *, benign: int, malignant: int, per_patient: int = 2, seed: int = 0):
    """`benign` + `malignant` ready cases at `centre`, `per_patient` nodules per patient."""
    labels = [0] * benign + [1] * malignant
    cases, patient = [], None
    for i, label in enumerate(labels):
        if i % per_patient == 0:
            patient = PatientFactory(centre=centre)
        cases.append(make_case(centre, label=label, patient=patient, seed=seed * 1000 + i))
    return cases


@pytest.fixture
def cohort(db, training_env, centre_a, centre_b):
    """Enough cases for every split to hold both classes: 40 development cases at A (20 of
    each class, two nodules per patient) and 8 external-test cases at B."""
    make_cohort(centre_a, benign=20, malignant=20, seed=1)
    make_cohort(centre_b, benign=4, malignant=4, seed=2)
    return {"development": centre_a, "external": centre_b}


def frozen_snapshot(user, cohort, seed: int = 0):
    from webapp.training.services import snapshot_freeze

    return snapshot_freeze(user=user, name="tiny", centres=[cohort["development"]],
                           external_centres=[cohort["external"]], seed=seed)


def make_version(run, *, number: int | None = None, metrics: dict | None = None,
                 arch: str = "irv2_cam", state: str = "candidate"):
    """A registered model version with real, randomly initialised weights of `arch` at the
    tiny input size (as a run that trained for no step would leave them)."""
    from ml.train import build_model, make_config, save_weights
    from webapp.training.models import ModelVersion
    from webapp.training.services.registry import sha256_file

    cfg = make_config("small", arch=arch, frames=TINY["frames"], size=TINY["size"])
    model = build_model(cfg)
    folder = Path(default_storage.path("")) / "tmp-weights"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"run{run.pk}.safetensors"
    save_weights(model, path)
    spec = cfg.clip_spec(int(model.spatial_dims))
    config = {"train": asdict(cfg), "spec": {**asdict(spec), "size": list(spec.size)},
              "threshold": 0.5, "code_version": "test"}
    number = number or run.pk
    with path.open("rb") as f:
        name = default_storage.save(f"models/v{number}/model.safetensors", ContentFile(f.read()))
    return ModelVersion.objects.create(
        number=number, run=run, snapshot=run.snapshot, arch=arch, preset="small",
        config=json.loads(json.dumps(config)), threshold=0.5, metrics=metrics or {},
        weights=name, checksum=sha256_file(path), code_version="test", state=state)


# --- Celery workers a test may kill ---------------------------------------------------------


class Workers:
    """Start real `celery worker` subprocesses (both queues) sharing the test database, the
    broker (Redis when REDIS_URL is set, else a private filesystem broker) and this test's
    storage; kill them as an operator or the OOM killer would."""

    def __init__(self, tmp_path: Path, settings):
        from webapp.celery import app

        self.app, self.settings, self.tmp = app, settings, tmp_path
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ, DATABASE_URL=_database_url_for_subprocess(),
                        PYTHONUNBUFFERED="1")
        self.options = app.conf.broker_transport_options
        self.saved = dict(self.options)
        if not settings.REDIS_URL:
            broker = tmp_path / "broker"
            self.env["CELERY_FILESYSTEM_BROKER_DIR"] = str(broker)
            for sub in ("queue", "control"):
                (broker / sub).mkdir(parents=True, exist_ok=True)
            self.options.update(data_folder_in=str(broker / "queue"),
                                data_folder_out=str(broker / "queue"),
                                control_folder=str(broker / "control"))
            self._reset_pools()

    def _reset_pools(self) -> None:
        # Pooled connections (and the producer pool built on them) remember the broker
        # folders: start afresh whenever they change.
        from kombu import pools

        pools.reset()  # kombu's process-wide connection and producer pools
        self.app._pool = None
        self.app.amqp._producer_pool = None

    def start(self) -> subprocess.Popen:
        n = len(self.procs)
        log = open(self.tmp / f"worker{n}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "webapp", "worker", "-Q", "cpu,gpu",
             "--pool=solo", "--concurrency=1", "--without-gossip", "--without-mingle",
             "--loglevel=INFO"],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, n: int = -1) -> str:
        index = n if n >= 0 else len(self.procs) + n
        return (self.tmp / f"worker{index}.log").read_text()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.options.clear()
        self.options.update(self.saved)
        if not self.settings.REDIS_URL:
            self._reset_pools()


@pytest.fixture
def workers(transactional_db, training_env, tmp_path, settings):
    pool = Workers(tmp_path, settings)
    try:
        yield pool
    finally:
        pool.close()


# A nodule track and a punctate focus, in frame pixels of the test videos (region 10, 20,
# 320 x 240 -> clip 32 x 32).
ANNOTATION = {
    "tracks": [{"id": "t1", "label": "nodule", "shape": "box", "keyframes": [
        {"frame": 0, "box": [90, 100, 250, 220]}, {"frame": 11, "box": [110, 110, 270, 230]}]}],
    "marks": [{"id": "m1", "type": "punctate", "shape": "point", "frame_start": 3,
               "frame_end": 8, "points": [[170, 160]]}],
}


def accept_consensus(video, doc: dict = ANNOTATION, version: int = 3):
    """The reviewer's accepted consensus annotation of `video` (what training uses)."""
    from annotations.annotation_format import validate_document
    from annotations.models import Annotation, AnnotationState

    return Annotation.objects.create(
        video=video, is_consensus=True, state=AnnotationState.ACCEPTED, version=version,
        data=validate_document(doc, n_frames=video.frame_count))
