"""Predictions: a model version's probability, class at the frozen threshold and heatmaps
for a ready video. Computed on the gpu queue when a video becomes ready (production model)
and for every ready video when a model is promoted. Idempotent: one row per (video, model
version), recomputed only when the video's frames changed (reprocessing)."""

from __future__ import annotations

import io
import logging
import time

import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import F, OuterRef, Q, Subquery

from annotations.models import Video, VideoStatus
from webapp.training.models import ModelState, ModelVersion, PredictedLabel, Prediction
from webapp.training.selectors import production_model

logger = logging.getLogger(__name__)


def heatmaps_name(video: Video, version: ModelVersion) -> str:
    centre = video.nodule.patient.centre.code
    return f"predictions/{centre}/{video.pk}/m{version.number}-f{video.frames_version}.npz"


def _quantise(maps: np.ndarray) -> np.ndarray:
    # uint8 steps of 1/255 are far below what a colour map shows, at a quarter of float32.
    return np.round(np.clip(np.asarray(maps, np.float32), 0, 1) * 255).astype(np.uint8)


def encode_heatmaps(heat) -> bytes:
    """`ml.inference.Heatmaps` -> compressed .npz: `gradcam` (T, H, W) uint8, `attention`
    (K, T, H, W) uint8 (values / 255), `frame_indices`, `crop_box`."""
    t, h, w = heat.gradcam.shape
    attention = (np.stack([_quantise(a) for a in heat.attention]) if heat.attention
                 else np.zeros((0, t, h, w), np.uint8))
    buf = io.BytesIO()
    np.savez_compressed(buf, gradcam=_quantise(heat.gradcam), attention=attention,
                        frame_indices=np.asarray(heat.frame_indices, np.int32),
                        crop_box=np.asarray(heat.crop_box, np.int32))
    return buf.getvalue()


def load_heatmaps(prediction: Prediction) -> dict[str, np.ndarray]:
    with default_storage.open(prediction.heatmaps, "rb") as f:
        with np.load(io.BytesIO(f.read()), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def _load_clip(name: str) -> np.ndarray:
    with default_storage.open(name, "rb") as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)


def inference_device() -> str:
    """The worker's GPU when it has one (the gpu queue's workers), else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _nodule_boxes(video: Video):
    """(boxes (T, 4) in clip pixels, annotation) from the video's accepted consensus, for
    models trained on crops around the nodule (ml.inference.predict's contract); (None,
    None) without one: the model then sees the whole ultrasound image."""
    from annotations.models import Annotation, AnnotationState
    from annotations.workspace import annotation_training_targets

    annotation = Annotation.objects.filter(video=video, is_consensus=True,
                                           state=AnnotationState.ACCEPTED).first()
    targets = annotation_training_targets(annotation=annotation) if annotation else None
    if targets is None or not np.isfinite(targets[1]).all(axis=1).any():
        return None, None
    return targets[1], annotation


def prediction_compute(*, video: Video, version: ModelVersion) -> Prediction | None:
    """Score `video` with `version` (None when the video is not ready)."""
    from ml.inference import gradcam_layer_of, predict_with_heatmaps, spec_of
    from webapp.training.services.registry import model_load

    video = Video.objects.select_related("nodule__patient__centre").get(pk=video.pk)
    if video.status != VideoStatus.READY or not video.clip:
        return None
    existing = Prediction.objects.filter(video=video, model_version=version).first()
    if existing is not None and existing.frames_version == video.frames_version:
        return existing
    model, config = model_load(version=version, device=inference_device())
    spec = spec_of(config)
    clip = _load_clip(video.clip)
    boxes, annotation = _nodule_boxes(video) if spec.roi else (None, None)
    t0 = time.perf_counter()
    heat = predict_with_heatmaps(model, clip, spec, boxes=boxes,
                                 layer=gradcam_layer_of(model, config))
    seconds = time.perf_counter() - t0
    data = encode_heatmaps(heat)
    name = heatmaps_name(video, version)
    if default_storage.exists(name):
        default_storage.delete(name)
    stored = default_storage.save(name, ContentFile(data))
    fields = {
        "probability": heat.probability,
        "predicted_label": PredictedLabel.MALIGNANT if heat.probability >= version.threshold
        else PredictedLabel.BENIGN,
        "threshold": version.threshold,
        "heatmaps": stored,
        "heatmaps_bytes": len(data),
        "attention_maps": len(heat.attention),
        "frames_version": video.frames_version,
        "clip_shape": [int(v) for v in clip.shape],
        "region": list(video.region or []),
        "frame_indices": [int(i) for i in heat.frame_indices],
        "crop_box": [int(v) for v in heat.crop_box],
        "seconds": round(seconds, 3),
        "boxes_annotation_id": annotation.pk if annotation else None,
        "boxes_annotation_version": annotation.version if annotation else None,
    }
    try:
        with transaction.atomic():
            prediction, _ = Prediction.objects.update_or_create(
                video=video, model_version=version, defaults=fields)
    except IntegrityError:  # computed at the same moment by another task: keep theirs
        default_storage.delete(stored)
        return Prediction.objects.get(video=video, model_version=version)
    if existing is not None and existing.heatmaps != stored:
        default_storage.delete(existing.heatmaps)
    return prediction


def videos_to_score(version: ModelVersion):
    """Ready videos without an up-to-date prediction from `version`."""
    current = Prediction.objects.filter(video=OuterRef("pk"), model_version=version)
    return (Video.objects.filter(status=VideoStatus.READY).exclude(clip="")
            .annotate(scored=Subquery(current.values("frames_version")[:1]))
            .filter(Q(scored__isnull=True) | ~Q(scored=F("frames_version")))
            .order_by("pk"))


def predictions_enqueue_for_version(*, version_id: int) -> None:
    """After a promotion: one gpu task fans out a task per ready video."""
    from webapp.training.tasks import predict_all

    predict_all.delay(version_id)


def predictions_fan_out(*, version: ModelVersion) -> int:
    """Queue a prediction task for every ready video the version has not scored; nothing
    when the version has left production meanwhile."""
    from webapp.training.tasks import video_predict

    if version.state != ModelState.PRODUCTION:
        return 0
    ids = list(videos_to_score(version).values_list("pk", flat=True))
    for video_id in ids:
        video_predict.delay(video_id, version.pk)
    return len(ids)


def prediction_for_ready_video(*, video_id: int) -> Prediction | None:
    """A video became ready: score it with the production model, if there is one."""
    version = production_model()
    video = Video.objects.filter(pk=video_id).first()
    if version is None or video is None:
        return None
    return prediction_compute(video=video, version=version)


def predictions_backfill() -> int:
    """Queue the production model's missing predictions (videos that became ready while no
    worker listened, or before the model existed). Idempotent."""
    version = production_model()
    return 0 if version is None else predictions_fan_out(version=version)
