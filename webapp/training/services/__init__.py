"""Writes of the training app, one module per entity; import them from here."""

from webapp.training.services.common import PermissionDenied, ValidationError
from webapp.training.services.predictions import (
    load_heatmaps,
    prediction_compute,
    prediction_for_ready_video,
    predictions_backfill,
    predictions_fan_out,
)
from webapp.training.services.registry import ModelLoadError, model_load, model_promote
from webapp.training.services.runs import (
    run_cancel,
    run_create,
    run_execute,
    run_resume,
    runs_reap_on_worker_start,
    runs_reap_stale,
)
from webapp.training.services.snapshots import (
    SnapshotError,
    snapshot_export,
    snapshot_freeze,
    snapshot_materialise,
)

__all__ = [
    "ModelLoadError", "PermissionDenied", "SnapshotError", "ValidationError", "load_heatmaps",
    "model_load", "model_promote", "prediction_compute", "prediction_for_ready_video",
    "predictions_backfill", "predictions_fan_out", "run_cancel", "run_create", "run_execute",
    "run_resume", "runs_reap_on_worker_start", "runs_reap_stale", "snapshot_export",
    "snapshot_freeze", "snapshot_materialise",
]
