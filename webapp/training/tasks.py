"""Celery tasks: ids in, a service call, nothing out. settings.CELERY_TASK_ROUTES sends
`training.*` and `inference.*` to the gpu queue.

`inference.video_ready` is the hook for ingestion: when a video becomes ready, sending this
task by name (`current_app.send_task("inference.video_ready", args=[video.pk])`, so that
`annotations` needs no import from `webapp`) scores it with the production model.
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_ready

logger = logging.getLogger(__name__)


@shared_task(bind=True, name="training.run", acks_late=True)
def run_train(self, run_id: int, attempt: int) -> None:
    from webapp.training import services

    services.run_execute(run_id=run_id, attempt=attempt, worker=self.request.hostname or "")


@shared_task(name="training.reap_stale")
def reap_stale() -> None:
    """Periodic (settings.CELERY_BEAT_SCHEDULE, when `celery beat` runs)."""
    from webapp.training import services

    services.runs_reap_stale()


@shared_task(name="inference.video_ready", acks_late=True)
def video_ready(video_id: int) -> None:
    from webapp.training import services

    services.prediction_for_ready_video(video_id=video_id)


@shared_task(name="inference.video_predict", acks_late=True)
def video_predict(video_id: int, model_version_id: int) -> None:
    from annotations.models import Video
    from webapp.training import services
    from webapp.training.models import ModelVersion

    video = Video.objects.filter(pk=video_id).first()
    version = ModelVersion.objects.filter(pk=model_version_id).first()
    if video is not None and version is not None:
        services.prediction_compute(video=video, version=version)


@shared_task(name="inference.predict_all", acks_late=True)
def predict_all(model_version_id: int) -> None:
    from webapp.training import services
    from webapp.training.models import ModelVersion

    version = ModelVersion.objects.filter(pk=model_version_id).first()
    if version is not None:
        services.predictions_fan_out(version=version)


@worker_ready.connect
def _on_worker_ready(sender=None, **kwargs) -> None:
    """A starting worker fails the runs a previous life of it left `running`, and queues the
    production model's missing predictions."""
    from django.db import close_old_connections

    from webapp.training import services

    hostname = getattr(sender, "hostname", "") or ""
    try:
        reaped = services.runs_reap_on_worker_start(worker=hostname)
        queued = services.predictions_backfill()
        if reaped or queued:
            logger.info("worker start: %d stale run(s) failed, %d prediction(s) queued",
                        len(reaped), queued)
    except Exception:  # noqa: BLE001 - start-up housekeeping must not stop the worker
        logger.exception("training housekeeping at worker start failed")
    finally:
        close_old_connections()
