from celery import shared_task


@shared_task(name="portal.worker_probe", acks_late=True)
def worker_probe(probe_id: int) -> None:
    from webapp.portal.models import WorkerProbe
    from webapp.portal.services import probe_complete

    probe_complete(probe=WorkerProbe.objects.get(pk=probe_id))
