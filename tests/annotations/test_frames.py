"""The frame store as the player uses it: frame N by index without decoding the video,
whole chunks for prefetch, immutable private caching with ETags, a constant number of
queries per request, and new URLs after reprocessing."""

from __future__ import annotations

import shutil
import struct
import time
import uuid

import cv2
import numpy as np
import pytest
from django.core.cache import cache
from django.core.files.storage import default_storage
from django.db import connection
from django.test.utils import CaptureQueriesContext

from annotations import services
from annotations.conf import incoming_dir
from annotations.models import AuditEvent, VideoStatus
from tests.annotations.conftest import write_video
from tests.conftest import make_user
from tests.factories import NoduleFactory, PatientFactory

N = 40


@pytest.fixture
def ready_video(db, storage, centre_a, tmp_path, settings):
    settings.THYROCINE = {**settings.THYROCINE, "FRAME_CHUNK_SIZE": 16}
    # Each frame carries its index as a gray level, so a frame proves where it came from.
    frames = np.zeros((N, 64, 96, 3), np.uint8)
    for t in range(N):
        frames[t, 8:56, 8:88] = 5 * t + 20
        frames[t, 8:56, 8 + t : 10 + t] = 255  # a moving bright bar: a real "sweep"
    path = write_video(tmp_path / "index.avi", frames, fourcc="MJPG")
    incoming = incoming_dir() / f"{uuid.uuid4()}.upload"
    shutil.copyfile(path, incoming)
    nodule = NoduleFactory(patient=PatientFactory(centre=centre_a))
    video = services.video_register(nodule=nodule, incoming=incoming, filename="index.avi",
                                    enqueue=False)
    services.video_process(video=video)
    video.refresh_from_db()
    assert video.status == VideoStatus.READY, video.failure_reason
    return video


def gray_level(jpeg: bytes) -> float:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    return float(np.median(image[10:54, 50:86]))


def test_frame_n_is_the_nth_decoded_frame(ready_video, client, centre_a):
    client.force_login(make_user("reader", centre_a))
    base = f"/files/videos/{ready_video.pk}/v{ready_video.frames_version}"
    assert ready_video.frame_count == N and ready_video.frames_chunk_size == 16
    for index in (0, 15, 16, 33, N - 1):
        response = client.get(f"{base}/frames/{index}.jpg")
        assert response.status_code == 200
        assert abs(gray_level(response.content) - (5 * index + 20)) <= 3, index
    assert client.get(f"{base}/frames/{N}.jpg").status_code == 404
    # A gray (B-mode) frame is stored as a one-channel JPEG: smaller, faster to decode.
    jpeg = np.frombuffer(client.get(f"{base}/frames/3.jpg").content, np.uint8)
    assert cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED).ndim == 2


def test_chunks_hold_consecutive_frames_for_prefetch(ready_video, client, centre_a):
    client.force_login(make_user("reader", centre_a))
    base = f"/files/videos/{ready_video.pk}/v{ready_video.frames_version}"
    response = client.get(f"{base}/chunks/2")
    assert response.status_code == 200 and response["X-Frame-Start"] == "32"
    body = response.content
    assert body[:4] == b"TCF1"
    (n,) = struct.unpack_from("<I", body, 4)
    offsets = struct.unpack_from(f"<{n + 1}I", body, 8)
    assert n == N - 32
    for i in range(n):
        assert abs(gray_level(body[offsets[i] : offsets[i + 1]]) - (5 * (32 + i) + 20)) <= 3
    assert client.get(f"{base}/chunks/3").status_code == 404


def test_frames_are_cached_privately_and_revalidated_by_etag(ready_video, client, centre_a):
    client.force_login(make_user("reader", centre_a))
    url = f"/files/videos/{ready_video.pk}/v{ready_video.frames_version}/frames/3.jpg"
    first = client.get(url)
    assert first["Cache-Control"] == "private, max-age=31536000, immutable"
    again = client.get(url, HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 304 and again.content == b""
    # The check still runs: another centre's user learns nothing from an ETag.
    client.force_login(make_user("annotator", PatientFactory().centre))
    assert client.get(url, HTTP_IF_NONE_MATCH=first["ETag"]).status_code == 404


def test_queries_per_frame_request_are_constant(ready_video, client, centre_a):
    client.force_login(make_user("annotator", centre_a))
    base = f"/files/videos/{ready_video.pk}/v{ready_video.frames_version}"
    client.get(f"{base}/frames/1.jpg")  # the one request of the window that writes the audit
    counts = []
    for url in (f"{base}/frames/0.jpg", f"{base}/frames/39.jpg", f"{base}/chunks/1",
                f"{base}/thumbnail.jpg"):
        with CaptureQueriesContext(connection) as queries:
            assert client.get(url).status_code == 200
        counts.append(len(queries))
    assert len(set(counts)) == 1 and counts[0] <= 3, counts  # session, user, video


def test_frame_requests_are_audited_once_per_user_video_and_window(ready_video, client,
                                                                   centre_a, settings):
    # long enough that 42 requests fit in it on a loaded machine, short enough to wait out
    settings.THYROCINE = {**settings.THYROCINE, "FRAME_AUDIT_WINDOW_SECONDS": 4}
    reader, annotator = make_user("reader", centre_a), make_user("annotator", centre_a)
    for user in (reader, annotator):
        cache.delete(services.frames_view_cache_key(user.pk, ready_video.pk))
    base = f"/files/videos/{ready_video.pk}/v{ready_video.frames_version}"

    def events() -> list[tuple[str, str, str, dict]]:
        rows = AuditEvent.objects.filter(object_type="annotations.Video", action="view",
                                         object_id=str(ready_video.pk)).order_by("pk")
        return [(e.username, e.action, e.centre_code, e.detail) for e in rows]

    def watch(user) -> None:
        client.force_login(user)
        for url in [f"{base}/frames/{i}.jpg" for i in range(N)] + [f"{base}/chunks/0",
                                                                  f"{base}/chunks/1"]:
            assert client.get(url).status_code == 200

    viewing = ("view", centre_a.code, {"what": "frames"})
    watch(reader)
    assert events() == [(reader.username, *viewing)]  # 42 requests, one row
    watch(annotator)
    assert events() == [(reader.username, *viewing), (annotator.username, *viewing)]
    time.sleep(4.1)  # the window is over: a new viewing
    client.force_login(reader)
    assert client.get(f"{base}/chunks/1").status_code == 200
    assert len(events()) == 3 and events()[-1][0] == reader.username
    # A request that is refused (another centre's user) records nothing.
    client.force_login(make_user("reader", PatientFactory().centre))
    assert client.get(f"{base}/frames/0.jpg").status_code == 404
    assert len(events()) == 3


def test_reprocessing_moves_frames_to_new_urls(ready_video, client, centre_a,
                                               django_capture_on_commit_callbacks):
    client.force_login(make_user("annotator", centre_a))
    old = f"/files/videos/{ready_video.pk}/v1/frames/0.jpg"
    old_prefix = ready_video.frames_prefix
    assert client.get(old).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        services.video_reprocess(video=ready_video, enqueue=False)
        services.video_process(video=ready_video)
    ready_video.refresh_from_db()
    assert ready_video.frames_version == 2 and ready_video.status == VideoStatus.READY
    assert client.get(old).status_code == 404
    assert client.get(f"/files/videos/{ready_video.pk}/v2/frames/0.jpg").status_code == 200
    assert default_storage.listdir(old_prefix) == ([], [])


def test_api_gives_the_player_its_urls(ready_video, centre_a):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    client = APIClient()
    token = Token.objects.create(user=make_user("reader", centre_a))
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    data = client.get(f"/api/videos/{ready_video.pk}/").json()
    assert data["status"] == "ready" and data["frame_count"] == N
    assert data["region"] == [ready_video.region_x, ready_video.region_y,
                              ready_video.region_w, ready_video.region_h]
    frame = client.get(data["frame_url_template"].replace("{index}", "7"))
    assert frame.status_code == 200
    assert client.get(data["thumbnail_url"]).status_code == 200
    assert client.get(data["chunk_url_template"].replace("{chunk}", "0")).status_code == 200
    assert data["clip_shape"] == [N, 128, 128]

    assert APIClient().get(data["thumbnail_url"], HTTP_AUTHORIZATION="Token nope").status_code \
        == 401
