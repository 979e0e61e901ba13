"""A registry built directly with the ORM (no training): a frozen snapshot whose internal test
cases are at centre A and external test cases at centre B, model versions of several
architectures, their predictions, and tiny heatmaps.npz files in a temporary media folder."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from annotations.models import Pathology, PathologyOutcome, PathologySource, Video, VideoStatus
from tests.factories import NoduleFactory, PatientFactory

T, H, W, K = 6, 8, 10, 2  # heatmap grid of the tiny cases


@pytest.fixture
def media(settings, tmp_path):
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(tmp_path / "media")}}}
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": str(tmp_path)}}
    return tmp_path / "media"


def blob_maps(seed: int, frames: int = T, h: int = H, w: int = W) -> np.ndarray:
    """(frames, h, w) uint8: a Gaussian blob that moves across the frame over time, brighter in
    the middle of the sweep, as a calcification seen in a few frames is."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((frames, h, w), np.uint8)
    for t in range(frames):
        cx = (seed + t) % w
        cy = h / 2
        peak = 1 - abs(t - frames / 2) / frames
        blob = peak * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (w / 5) ** 2))
        out[t] = np.round(blob * 255).astype(np.uint8)
    return out


def heatmaps_npz(seed: int, frames: int = T, h: int = H, w: int = W) -> bytes:
    buf = io.BytesIO()
    gradcam = blob_maps(seed, frames, h, w)
    attention = np.stack([blob_maps(seed + 3, frames, h, w), blob_maps(seed + 6, frames, h, w)])
    np.savez_compressed(buf, gradcam=gradcam, attention=attention,
                        frame_indices=np.arange(frames, dtype=np.int32),
                        crop_box=np.array([0, 0, w, h], np.int32))
    return buf.getvalue()


@dataclass
class World:
    snapshot: object
    versions: dict = field(default_factory=dict)  # arch -> ModelVersion
    videos: dict = field(default_factory=dict)  # centre code -> [Video]
    labels: dict = field(default_factory=dict)  # video id -> 0/1
    scores: dict = field(default_factory=dict)  # arch -> {video id: probability}
    predictions: dict = field(default_factory=dict)  # (arch, video id) -> Prediction


def make_version(snapshot, *, number: int, arch: str, threshold: float = 0.5,
                 state: str = "candidate"):
    from webapp.training.models import ModelVersion, TrainingRun

    run = TrainingRun.objects.create(snapshot=snapshot, arch=arch, preset="small",
                                     run_dir=f"runs/test-{number}", status="succeeded")
    return ModelVersion.objects.create(
        number=number, run=run, snapshot=snapshot, arch=arch, preset="small",
        threshold=threshold, weights=f"models/v{number}/model.safetensors", checksum="0" * 64,
        state=state)


def add_cases(world: World, centre, split: str, labels: list[int], scores: dict[str, list],
              *, heatmaps: bool = False, frame_count: int = 48) -> list:
    """Cases at `centre` in `split` with the given labels, and for each arch in `scores` a
    prediction with that probability (None: no prediction of that model for the case)."""
    from webapp.training.models import PredictedLabel, Prediction, SnapshotCase

    patient = PatientFactory(centre=centre)
    nodules = [NoduleFactory(patient=patient) for _ in labels]
    Pathology.objects.bulk_create([
        Pathology(nodule=n, outcome=PathologyOutcome.MALIGNANT if y else PathologyOutcome.BENIGN,
                  source=PathologySource.SURGERY) for n, y in zip(nodules, labels, strict=True)])
    videos = Video.objects.bulk_create([
        Video(nodule=n, sha256=f"{centre.code}-{n.pk}", status=VideoStatus.READY,
              frame_count=frame_count, frames_version=1, frames_chunk_size=16,
              frames_prefix=f"frames/{centre.code}/{n.pk}/v1", width=W * 4, height=H * 4)
        for n in nodules])
    if not videos[0].pk:  # backends without RETURNING
        videos = list(Video.objects.filter(nodule__in=nodules).order_by("pk"))
    SnapshotCase.objects.bulk_create([
        SnapshotCase(snapshot=world.snapshot, video=v, case_id=f"{centre.code}-{v.pk}",
                     centre_code=centre.code, patient_code=patient.code,
                     nodule_code=v.nodule.code, label=y, split=split, clip="x.npy")
        for v, y in zip(videos, labels, strict=True)])
    rows = []
    for arch, probs in scores.items():
        version = world.versions[arch]
        for v, p in zip(videos, probs, strict=True):
            if p is None:
                continue
            name = ""
            if heatmaps:
                name = default_storage.save(
                    f"predictions/{centre.code}/{v.pk}/m{version.number}.npz",
                    ContentFile(heatmaps_npz(v.pk)))
            rows.append(Prediction(
                video=v, model_version=version, probability=p, threshold=version.threshold,
                predicted_label=(PredictedLabel.MALIGNANT if p >= version.threshold
                                 else PredictedLabel.BENIGN),
                heatmaps=name, attention_maps=K, frames_version=1, clip_shape=[T, H, W],
                region=[0, 0, W * 4, H * 4]))
            world.scores.setdefault(arch, {})[v.pk] = p
    for pred in Prediction.objects.bulk_create(rows):
        world.predictions[(pred.model_version.arch, pred.video_id)] = pred
    if rows and not rows[0].pk:
        for pred in Prediction.objects.filter(video__in=videos).select_related("model_version"):
            world.predictions[(pred.model_version.arch, pred.video_id)] = pred
    world.videos.setdefault(centre.code, []).extend(videos)
    world.labels.update({v.pk: y for v, y in zip(videos, labels, strict=True)})
    return videos


ARCHS = ["irv2_cam", "irv2", "r3d_18", "irv2_2d"]


def make_world(centre_a, centre_b, *, n: int = 10, seed: int = 0, heatmaps: bool = False):
    """n cases per centre (half malignant), internal test at A and external test at B; four
    model versions (the study model in production), the study model separating the classes
    better than the baselines."""
    from webapp.training.models import DatasetSnapshot

    snapshot = DatasetSnapshot.objects.create(name="world", centres=[centre_a.code],
                                              external_centres=[centre_b.code])
    world = World(snapshot=snapshot)
    for i, arch in enumerate(ARCHS):
        world.versions[arch] = make_version(snapshot, number=i + 1, arch=arch,
                                            threshold=0.5 - 0.05 * i,
                                            state="production" if i == 0 else "candidate")
    rng = np.random.default_rng(seed)
    for centre, split in ((centre_a, "internal_test"), (centre_b, "external_test")):
        labels = [int(i % 2 == 0) for i in range(n)]
        scores = {}
        for i, arch in enumerate(ARCHS):
            signal = 0.35 / (1 + i)
            scores[arch] = [float(np.clip(0.5 + (signal if y else -signal)
                                          + rng.normal(0, 0.2), 0, 1)) for y in labels]
        add_cases(world, centre, split, labels, scores, heatmaps=heatmaps)
    return world
