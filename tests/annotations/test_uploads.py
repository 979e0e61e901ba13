"""Resumable uploads (tus 1.0.0) through the REST API with token authentication: chunks,
resuming after a dropped connection, offset conflicts, the size limit, tenancy; and the
OpenAPI schema that describes them."""

from __future__ import annotations

import base64

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotations.conf import incoming_dir
from annotations.models import UploadSession, UploadStatus, Video, VideoStatus
from tests.annotations.conftest import sweep_frames, write_video
from tests.conftest import make_user
from tests.factories import NoduleFactory, PatientFactory

TUS = {"HTTP_TUS_RESUMABLE": "1.0.0"}


def meta(**values) -> str:
    return ",".join(f"{k} {base64.b64encode(str(v).encode()).decode()}"
                    for k, v in values.items())


@pytest.fixture
def world(db, storage, centre_a, centre_b, eager_tasks, tmp_path):
    nodule = NoduleFactory(patient=PatientFactory(centre=centre_a))
    other = NoduleFactory(patient=PatientFactory(centre=centre_b))
    user = make_user("annotator", centre_a)
    client = APIClient()
    token = Token.objects.create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    data = write_video(tmp_path / "sweep.mp4", sweep_frames(10)).read_bytes()
    return {"nodule": nodule, "other": other, "user": user, "client": client, "data": data}


def create(client, nodule, length, filename="sweep.mp4"):
    return client.post("/api/uploads/", HTTP_UPLOAD_LENGTH=str(length),
                       HTTP_UPLOAD_METADATA=meta(nodule=nodule.pk, filename=filename,
                                                 scan_plane="transverse"), **TUS)


def patch(client, url, offset, body):
    return client.generic("PATCH", url, body, content_type="application/offset+octet-stream",
                          HTTP_UPLOAD_OFFSET=str(offset), **TUS)


def test_chunked_upload_becomes_a_processed_video(world, django_capture_on_commit_callbacks):
    client, data = world["client"], world["data"]
    options = client.options("/api/uploads/")
    assert options["Tus-Version"] == "1.0.0" and "creation" in options["Tus-Extension"]

    created = create(client, world["nodule"], len(data))
    assert created.status_code == 201, created.content
    url = created["Location"]
    third = len(data) // 3
    with django_capture_on_commit_callbacks(execute=True):
        for start in (0, third, 2 * third):
            end = len(data) if start == 2 * third else start + third
            response = patch(client, url, start, data[start:end])
            assert response.status_code == 204, response.content
            assert response["Upload-Offset"] == str(end)
    video = Video.objects.get(pk=int(response["Video-Id"]))
    assert video.status == VideoStatus.READY, video.failure_reason
    assert video.scan_plane == "transverse" and video.original_filename == "sweep.mp4"
    assert video.uploaded_by == world["user"] and video.frame_count == 10
    # The identified upload is gone from the incoming folder.
    assert list(incoming_dir().iterdir()) == []
    upload = UploadSession.objects.get()
    assert upload.status == UploadStatus.COMPLETE and upload.video == video
    head = client.head(url, **TUS)
    assert head["Upload-Offset"] == str(len(data)) and head["Video-Id"] == str(video.pk)


def test_a_dropped_connection_resumes_from_the_stored_offset(world):
    client, data = world["client"], world["data"]
    url = create(client, world["nodule"], len(data))["Location"]

    class Dropping:
        """A request body whose connection breaks after `n` bytes."""

        def __init__(self, body, n):
            self.body, self.n, self.pos = body, n, 0

        def read(self, size=-1):
            if self.pos >= self.n:
                raise OSError("connection reset by peer")
            chunk = self.body[self.pos : min(self.pos + size, self.n)]
            self.pos += len(chunk)
            return chunk

    from annotations import services

    upload = UploadSession.objects.get()
    with pytest.raises(OSError):
        services.upload_append(upload=upload, offset=0, stream=Dropping(data, 5000),
                               max_bytes=len(data))
    head = client.head(url, **TUS)
    assert head.status_code == 200 and head["Upload-Offset"] == "5000"
    # A client that lost track sends from 0: told where the server is.
    conflict = patch(client, url, 0, data)
    assert conflict.status_code == 409 and conflict["Upload-Offset"] == "5000"
    done = patch(client, url, 5000, data[5000:])
    assert done.status_code == 204 and done["Upload-Offset"] == str(len(data))
    video = Video.objects.get(pk=int(done["Video-Id"]))
    assert video.size_bytes == len(data)


def test_upload_over_the_limit_is_refused_before_any_byte(world, settings):
    settings.THYROCINE = {**settings.THYROCINE, "MAX_UPLOAD_BYTES": 2 * 1024**3}
    response = create(world["client"], world["nodule"], 3 * 1024**3)
    assert response.status_code == 413
    assert response.json()["detail"] == ("The file is 3.2 GB; the largest accepted upload is "
                                         "2.1 GB.")
    assert not UploadSession.objects.exists()


def test_bytes_beyond_the_declared_length_are_refused(world):
    client = world["client"]
    url = create(client, world["nodule"], 10)["Location"]
    response = patch(client, url, 0, b"x" * 11)
    assert response.status_code == 400
    assert client.head(url, **TUS)["Upload-Offset"] == "0"


def test_protocol_errors_are_explained(world):
    client = world["client"]
    assert client.post("/api/uploads/", HTTP_UPLOAD_LENGTH="5").status_code == 412
    missing = client.post("/api/uploads/", HTTP_UPLOAD_METADATA=meta(filename="a"),
                          HTTP_UPLOAD_LENGTH="5", **TUS)
    assert missing.status_code == 400 and "nodule" in missing.json()["detail"]
    url = create(client, world["nodule"], 5)["Location"]
    wrong_type = client.generic("PATCH", url, b"abc", content_type="text/plain",
                                HTTP_UPLOAD_OFFSET="0", **TUS)
    assert wrong_type.status_code == 415


def test_uploads_follow_tenancy(world):
    client = world["client"]
    # Another centre's nodule does not exist for this user.
    assert create(client, world["other"], 100).status_code == 404
    # A reader may look but not add videos.
    reader = APIClient()
    reader.force_authenticate(make_user("reader", world["nodule"].patient.centre))
    assert create(reader, world["nodule"], 100).status_code == 403
    # Someone else's upload is not theirs to continue.
    url = create(client, world["nodule"], 100)["Location"]
    colleague = APIClient()
    colleague.force_authenticate(make_user("centre_admin", world["nodule"].patient.centre))
    assert colleague.head(url, **TUS).status_code == 404
    assert patch(colleague, url, 0, b"x").status_code == 404
    assert APIClient().head(url, **TUS).status_code == 401


def test_cancelled_upload_removes_its_bytes(world):
    client = world["client"]
    url = create(client, world["nodule"], 100)["Location"]
    patch(client, url, 0, b"y" * 40)
    assert any(incoming_dir().iterdir())
    assert client.delete(url, **TUS).status_code == 204
    assert list(incoming_dir().iterdir()) == []
    assert patch(client, url, 40, b"y" * 60).status_code == 400


def test_openapi_schema_describes_ingestion(world):
    response = world["client"].get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    for path in ("/api/uploads/", "/api/uploads/{upload_id}/", "/api/videos/",
                 "/api/videos/{id}/reprocess/", "/api/patients/", "/api/pathology/{id}/"):
        assert path in paths, path
    assert "multipart/form-data" in paths["/api/videos/"]["post"]["requestBody"]["content"]
    assert "failure_reason" in schema["components"]["schemas"]["Video"]["properties"]
    assert world["client"].get("/api/docs/").status_code == 200


def test_unfinished_uploads_expire_and_their_bytes_are_deleted(world):
    import datetime
    from io import StringIO

    from django.core.management import call_command
    from django.utils import timezone

    client = world["client"]
    url = create(client, world["nodule"], 100)["Location"]
    patch(client, url, 0, b"z" * 30)
    UploadSession.objects.update(updated_at=timezone.now() - datetime.timedelta(days=8))
    fresh = create(client, world["nodule"], 100)["Location"]
    out = StringIO()
    call_command("expire_uploads", "--days", "7", stdout=out)
    assert "1 unfinished upload(s)" in out.getvalue()
    fresh_id = fresh.rstrip("/").split("/")[-1]
    assert [p.name for p in incoming_dir().iterdir()] == [f"{fresh_id}.part"]
    assert client.head(url, **TUS).status_code == 200
    assert patch(client, url, 30, b"z" * 70).status_code == 400


def test_transient_errors_are_retried_then_reported(world, monkeypatch):
    from annotations import services, tasks

    video = Video.objects.create(nodule=world["nodule"], sha256="", incoming_name="gone")
    calls = []

    def flaky(*, video):
        calls.append(1)
        raise services.TransientError("storage unavailable: [Errno 5] I/O error")

    monkeypatch.setattr(services, "video_process", flaky)
    tasks.video_process.apply(args=[video.pk])
    video.refresh_from_db()
    assert len(calls) == tasks.video_process.max_retries + 1
    assert video.status == VideoStatus.FAILED
    assert "processing kept failing (storage unavailable" in video.failure_reason
