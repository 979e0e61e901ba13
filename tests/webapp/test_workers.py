"""Integration: a task travels through the broker (Redis in CI) to a real Celery worker
subprocess, which writes its result to the database; with Redis, the worker's live update
reaches a websocket through the Channels layer."""

import pytest
from django.test import Client

from tests.conftest import make_user, run_coroutine, wait_for, websocket_for
from webapp.portal.models import WorkerProbe

pytestmark = pytest.mark.integration


def test_probe_round_trip_through_a_real_worker(celery_worker_process, centre_a):
    admin = make_user("platform_admin", centre_a)
    client = Client()
    client.force_login(admin)

    response = client.post("/system/probe/")
    assert response.status_code == 302

    def both_answered():
        probes = list(WorkerProbe.objects.filter(completed_at__isnull=False))
        return probes if {p.queue for p in probes} == {"cpu", "gpu"} else None

    probes = wait_for(both_answered, timeout=90)
    for probe in probes:
        assert probe.worker_hostname
        assert probe.worker_detail["pid"] == celery_worker_process.pid
        assert probe.round_trip_ms is not None and probe.round_trip_ms > 0
    page = client.get("/system/").content.decode()
    assert page.count("answered") >= 2


def test_worker_result_reaches_a_websocket_through_redis(celery_worker_process, centre_a,
                                                         settings):
    if not settings.REDIS_URL:
        pytest.skip("live updates across processes need Redis (REDIS_URL); pages poll without")
    from asgiref.sync import sync_to_async
    from django.db import transaction

    from webapp.portal.services import probe_send

    communicator = websocket_for(make_user("platform_admin", centre_a), "/ws/system/")

    def send():
        with transaction.atomic():
            return probe_send(queue="gpu")

    async def scenario():
        connected, _ = await communicator.connect()
        assert connected
        probe = await sync_to_async(send)()
        message = await communicator.receive_json_from(timeout=90)
        await communicator.disconnect()
        return probe, message

    probe, message = run_coroutine(scenario())
    assert message["id"] == probe.pk and message["queue"] == "gpu"
    assert message["completed_at"] is not None


def test_websocket_refuses_non_administrators(centre_a):
    communicator = websocket_for(make_user("annotator", centre_a), "/ws/system/")

    async def scenario():
        connected, _ = await communicator.connect()
        await communicator.disconnect()
        return connected

    assert run_coroutine(scenario()) is False
