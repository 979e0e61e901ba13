"""Live status of a nodule's videos: a websocket relays what the processing service
publishes, to people who may see the nodule only."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from annotations import services
from annotations.models import VideoStatus
from tests.conftest import make_user, run_coroutine, websocket_for
from tests.factories import NoduleFactory, PatientFactory, VideoFactory


@pytest.fixture
def video(transactional_db, centre_a):
    nodule = NoduleFactory(patient=PatientFactory(centre=centre_a))
    return VideoFactory(nodule=nodule, status=VideoStatus.PROCESSING)


def test_status_changes_reach_the_nodule_page_socket(video, centre_a):
    communicator = websocket_for(make_user("reader", centre_a),
                                 f"/ws/nodules/{video.nodule_id}/")

    async def scenario():
        connected, _ = await communicator.connect()
        assert connected
        await sync_to_async(services.video_fail)(video=video, reason="only 3 frames")
        message = await communicator.receive_json_from(timeout=20)
        await communicator.disconnect()
        return message

    message = run_coroutine(scenario())
    assert message["id"] == video.pk and message["status"] == VideoStatus.FAILED
    assert message["failure_reason"] == "only 3 frames"


def test_other_centres_cannot_listen(video, centre_b):
    communicator = websocket_for(make_user("centre_admin", centre_b),
                                 f"/ws/nodules/{video.nodule_id}/")

    async def scenario():
        connected, _ = await communicator.connect()
        await communicator.disconnect()
        return connected

    assert run_coroutine(scenario()) is False
