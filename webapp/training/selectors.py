"""Reads. Snapshots, runs and the registry are visible to those who may train or promote
(ML engineers and platform administrators); predictions follow the tenancy of their videos
(`annotations.selectors.videos_visible_to`), so a centre's readers see their own cases'."""

from __future__ import annotations

from django.db.models import QuerySet

from annotations.models import User
from annotations.permissions import PlatformAction, can_platform
from annotations.selectors import videos_visible_to
from webapp.training.models import (
    DatasetSnapshot,
    ModelState,
    ModelVersion,
    Prediction,
    RunEpoch,
    RunStatus,
    RunStep,
    TrainingRun,
)


def can_view_training(user: User) -> bool:
    return can_platform(user, PlatformAction.TRAIN) or can_platform(user, PlatformAction.PROMOTE)


def snapshots_visible_to(*, user: User) -> QuerySet[DatasetSnapshot]:
    if not can_view_training(user):
        return DatasetSnapshot.objects.none()
    return DatasetSnapshot.objects.select_related("created_by")


def runs_visible_to(*, user: User) -> QuerySet[TrainingRun]:
    if not can_view_training(user):
        return TrainingRun.objects.none()
    return TrainingRun.objects.select_related("snapshot", "created_by")


def model_versions_visible_to(*, user: User) -> QuerySet[ModelVersion]:
    if not can_view_training(user):
        return ModelVersion.objects.none()
    return ModelVersion.objects.select_related("run", "snapshot")


def predictions_visible_to(*, user: User) -> QuerySet[Prediction]:
    return Prediction.objects.filter(video__in=videos_visible_to(user=user)).select_related(
        "model_version", "video")


def production_model() -> ModelVersion | None:
    return ModelVersion.objects.filter(state=ModelState.PRODUCTION).first()


# --- Run state, as the page, the JSON endpoint and the websocket carry it -------------------


def _iso(dt) -> str | None:
    return dt.isoformat() if dt else None


def run_summary(run: TrainingRun) -> dict:
    progress = None
    if run.steps_total:
        progress = min(1.0, run.step / run.steps_total)
    if run.status == RunStatus.SUCCEEDED:
        progress = 1.0
    version = getattr(run, "model_version", None) if run.status == RunStatus.SUCCEEDED else None
    return {
        "id": run.pk,
        "status": run.status,
        "status_display": run.get_status_display(),
        "phase": run.phase,
        "phase_display": run.get_phase_display() if run.phase else "",
        "attempt": run.attempt,
        "epoch": run.epoch,
        "epochs": run.epochs,
        "step": run.step,
        "steps_total": run.steps_total,
        "progress": progress,
        "device": run.device,
        "resumed_from_epoch": run.resumed_from_epoch,
        "checkpoint_epoch": run.checkpoint_epoch,
        "failure_reason": run.failure_reason,
        "cancel_requested": run.cancel_requested_at is not None,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "heartbeat_at": _iso(run.heartbeat_at),
        "model_version": version.pk if version else None,
        "model_version_number": version.number if version else None,
        "summary": run.summary,
    }


def step_points(steps) -> list[dict]:
    return [{"step": s.step, "epoch": s.epoch, "loss": s.loss, "lr": s.lr} for s in steps]


def epoch_points(epochs) -> list[dict]:
    return [{"epoch": e.epoch, "train_loss": e.train_loss, "val_loss": e.val_loss,
             "val_auroc": e.val_auroc, "lr": e.lr, "seconds": e.seconds,
             "best_epoch": e.best_epoch} for e in epochs]


def run_state(run: TrainingRun) -> dict:
    """Everything the live page draws: the run, every curve point and the log tail."""
    return {
        "run": run_summary(run),
        "steps": step_points(RunStep.objects.filter(run=run).order_by("step")),
        "epochs": epoch_points(RunEpoch.objects.filter(run=run).order_by("epoch")),
        "log_tail": run.log_tail,
    }


# --- The registry ---------------------------------------------------------------------------

METRIC_SPLITS = ("val", "internal_test", "external_test")
METRIC_NAMES = ("n", "n_malignant", "auroc", "sensitivity", "specificity")


def metric_rows(versions: list[ModelVersion]) -> list[dict]:
    """Rows (split, centre) with each version's metrics side by side, the versions in the
    given order: [{"split", "centre", "cells": [{metric: value} per version]}]."""
    keys: list[tuple[str, str]] = []
    for split in METRIC_SPLITS:
        centres: set[str] = set()
        for v in versions:
            centres |= set((v.metrics.get(split) or {}).get("centres", {}))
        if any(v.metrics.get(split) for v in versions):
            keys.append((split, ""))
            keys += [(split, c) for c in sorted(centres)]
    rows = []
    for split, centre in keys:
        cells = []
        for v in versions:
            block = v.metrics.get(split) or {}
            if centre:
                block = (block.get("centres") or {}).get(centre) or {}
            cells.append({m: block.get(m) for m in METRIC_NAMES} | {
                "auroc_ci": block.get("auroc_ci")})
        rows.append({"split": split, "centre": centre, "cells": cells})
    return rows


def comparison_versions(version: ModelVersion) -> list[ModelVersion]:
    """The current production model first (if it is another one), then `version`."""
    current = production_model()
    if current is None or current.pk == version.pk:
        return [version]
    return [current, version]


def headline(version: ModelVersion) -> dict:
    """AUROC per split for lists."""
    return {s: (version.metrics.get(s) or {}).get("auroc") for s in METRIC_SPLITS}
