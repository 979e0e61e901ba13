"""Celery tasks: ids in, a service call, nothing out. Routed to the cpu queue
(settings.CELERY_TASK_ROUTES sends every `annotations.*` task there)."""

from celery import shared_task
from django.db import DatabaseError


@shared_task(bind=True, name="annotations.video_process", acks_late=True, max_retries=5)
def video_process(self, video_id: int) -> None:
    from annotations import services
    from annotations.models import Video

    video = Video.objects.filter(pk=video_id).first()
    if video is None:  # deleted meanwhile
        return
    try:
        services.video_process(video=video)
    except (services.TransientError, DatabaseError) as exc:
        if self.request.retries >= self.max_retries:
            services.video_fail(video=video, reason=f"processing kept failing ({exc}); an "
                                "administrator can run it again with `manage.py reprocess`")
            return
        raise self.retry(exc=exc, countdown=min(300, 5 * 2**self.request.retries)) from exc
