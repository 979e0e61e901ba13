"""Celery tasks: ids in, a service call, nothing out. settings.CELERY_TASK_ROUTES sends
`training.*` and `inference.*` to the gpu queue.

When a video becomes ready it is scored with the production model (`inference.video_ready`).
Ingestion knows nothing of training (imports go webapp -> annotations, never back), so the
hook observes it from here: `_on_video_processed` runs in the worker after each
`annotations.video_process` task and queues the video's prediction when it ended ready. Code
elsewhere may send the task by name, `send_task("inference.video_ready", args=[video_id])`.
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import task_success, worker_ready

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


@shared_task(name="inference.backfill")
def backfill() -> None:
    """Periodic: the production model's missing predictions (e.g. `import_cases --inline`)."""
    from webapp.training import services

    services.predictions_backfill()


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


@task_success.connect
def _on_video_processed(sender=None, **kwargs) -> None:
    """A video that processing left ready gets its prediction (skipped for in-process runs of
    the task, e.g. `import_cases --inline` and tests: the worker start-up backfill covers
    those)."""
    if sender is None or sender.name != "annotations.video_process" or sender.request.is_eager:
        return
    from annotations.models import Video, VideoStatus

    args = sender.request.args or ()
    video_id = args[0] if args else None
    if video_id is not None and Video.objects.filter(pk=video_id,
                                                     status=VideoStatus.READY).exists():
        video_ready.delay(video_id)
