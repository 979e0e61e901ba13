"""Integration, with real Celery worker subprocesses on both queues (Redis in CI): a tiny run
launched through the API is watched live (a Channels websocket with Redis, the JSON endpoint
without), succeeds, lands in the registry, is promoted, and every ready video gets a
prediction; a worker killed mid-run leaves a failed run that resumes from its checkpoint; a
cancel stops the training process and a crashed one does not take the worker down."""

from __future__ import annotations

import os
import signal
import time

import pytest
from rest_framework.test import APIClient

from annotations.models import Video, VideoStatus
from tests.conftest import make_user, run_coroutine, wait_for, websocket_for
from tests.webapp.training.conftest import TINY, frozen_snapshot
from webapp.training import runner
from webapp.training.models import (
    ModelState,
    ModelVersion,
    Prediction,
    RunEpoch,
    RunStatus,
    TrainingRun,
)

pytestmark = pytest.mark.integration

FINISHED = ("succeeded", "failed", "cancelled")


@pytest.fixture
def engineer(centre_a):
    return make_user("ml_engineer", centre_a)


@pytest.fixture
def api(engineer):
    client = APIClient()
    client.force_login(engineer)
    return client


def launch(api, snapshot, **overrides) -> int:
    response = api.post("/api/training/runs/", {
        "snapshot": snapshot.pk, "arch": "irv2_cam", "preset": "small",
        "hyperparameters": {**TINY, **overrides}, "gpus": 1}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def run_row(run_id: int) -> TrainingRun:
    return TrainingRun.objects.get(pk=run_id)


def watch_websocket(user, run_id: int, timeout: float) -> list[dict]:
    """Every message the run's websocket relays until the run ends."""
    communicator = websocket_for(user, f"/ws/training/runs/{run_id}/")

    async def scenario():
        connected, _ = await communicator.connect()
        assert connected
        messages, deadline = [], time.monotonic() + timeout
        try:
            while True:
                # One long wait: the test communicator stops the consumer on a timeout.
                message = await communicator.receive_json_from(
                    timeout=max(1.0, deadline - time.monotonic()))
                messages.append(message)
                if message.get("run", {}).get("status") in FINISHED:
                    break
        finally:
            await communicator.disconnect()
        return messages

    return run_coroutine(scenario())


def watch_polling(api, run_id: int, timeout: float) -> list[dict]:
    """What the page polls without Redis, until the run ends."""
    states, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = api.get(f"/api/training/runs/{run_id}/state/").json()
        states.append(state)
        if state["run"]["status"] in FINISHED:
            break
        time.sleep(0.5)
    return states


def test_launch_watch_register_promote_and_predict(workers, cohort, engineer, api, settings):
    snapshot = frozen_snapshot(engineer, cohort)
    workers.start()
    run_id = launch(api, snapshot)

    if settings.REDIS_URL:
        messages = watch_websocket(engineer, run_id, timeout=300)
        steps = [p for m in messages for p in m.get("steps", [])]
        epochs = [p for m in messages for p in m.get("epochs", [])]
        phases = {m["run"]["phase"] for m in messages if "run" in m}
        assert "training" in phases and "evaluating" in phases
        assert any(isinstance(m.get("log_tail"), str) for m in messages)
    else:
        messages = watch_polling(api, run_id, timeout=300)
        steps, epochs = messages[-1]["steps"], messages[-1]["epochs"]
        assert "running" in {m["run"]["status"] for m in messages}
    final = messages[-1]["run"]
    run = run_row(run_id)
    assert final["status"] == "succeeded", (run.failure_reason, workers.log())
    # Progress arrived step by step and epoch by epoch, as the database holds it.
    assert sorted({p["step"] for p in steps}) == list(range(1, run.steps_total + 1))
    assert sorted({p["epoch"] for p in epochs}) == [1, 2]
    assert final["progress"] == 1.0 and final["model_version_number"] == 1
    assert RunEpoch.objects.filter(run=run).count() == 2

    models = api.get("/api/training/models/").json()["results"]
    assert [(m["number"], m["state"], m["run"]) for m in models] == [(1, "candidate", run_id)]
    version = ModelVersion.objects.get()
    assert set(version.metrics["internal_test"]["centres"]) == {"CA"}

    response = api.post(f"/api/training/models/{version.pk}/promote/")
    assert response.status_code == 200 and response.json()["state"] == "production"
    ready = Video.objects.filter(status=VideoStatus.READY).count()
    wait_for(lambda: Prediction.objects.filter(model_version=version).count() == ready,
             timeout=240)
    prediction = Prediction.objects.filter(model_version=version).first()
    assert api.get(f"/files/predictions/{prediction.pk}/heatmaps.npz").status_code == 200

    # A video uploaded now is processed by the worker (ingestion) and, once ready, scored by
    # the production model.
    import shutil

    from django.db import transaction

    from annotations import services as ingestion
    from annotations.conf import incoming_dir
    from tests.annotations.conftest import sweep_frames, write_video
    from tests.factories import NoduleFactory, PatientFactory

    nodule = NoduleFactory(patient=PatientFactory(centre=cohort["development"]))
    source = write_video(incoming_dir().parent / "sweep.mp4", sweep_frames(n=12))
    incoming = incoming_dir() / "sweep.upload"
    shutil.copyfile(source, incoming)
    with transaction.atomic():
        video = ingestion.video_register(nodule=nodule, incoming=incoming,
                                         filename="sweep.mp4")
    found = wait_for(lambda: Prediction.objects.filter(video=video).first(), timeout=180)
    video.refresh_from_db()
    assert video.status == VideoStatus.READY
    assert found.model_version == version and found.frames_version == video.frames_version
    assert found.clip_shape == video.clip_shape


def test_the_headline_configuration_trains_from_the_web(workers, cohort, engineer, api):
    # a seed ensemble with the focus head, the TI-RADS head and two temporal views
    # (benchmarks/ml_headline.sh), from accepted annotations with their TI-RADS readings:
    # its members' progress reaches the page epoch by epoch, and the joined model registers
    from annotations.models import Video
    from tests.webapp.training.conftest import ANNOTATION, accept_consensus

    for i, video in enumerate(Video.objects.filter(
            nodule__patient__centre=cohort["development"]).order_by("pk")):
        accept_consensus(video, doc={**ANNOTATION, "tirads": {
            "composition": "solid", "echogenicity": ("hypo", "hyper_iso")[i % 2],
            "shape": "wider", "margin": ("lobulated", "smooth")[i % 2]}})
    snapshot = frozen_snapshot(engineer, cohort)
    workers.start()
    run_id = launch(api, snapshot, members=2, temporal_views=2, focus_head=True,
                    tirads_head=True)
    states = watch_polling(api, run_id, timeout=400)
    run = run_row(run_id)
    assert states[-1]["run"]["status"] == "succeeded", (run.failure_reason, workers.log())
    assert "running" in {s["run"]["status"] for s in states}
    assert sorted({p["epoch"] for p in states[-1]["epochs"]}) == [1, 2]
    assert states[-1]["steps"], "the first member's steps reach the page"
    version = ModelVersion.objects.get(run=run)
    train = version.config["train"]
    assert (train["members"], train["temporal_views"], train["model_options"]["focus_head"],
            train["model_options"]["tirads_head"]) == (2, 2, True, True)
    assert version.config["spec"]["temporal_views"] == 2


def test_a_killed_worker_fails_the_run_which_resumes_from_its_checkpoint(
        workers, cohort, engineer, api):
    snapshot = frozen_snapshot(engineer, cohort)
    first = workers.start()
    run_id = launch(api, snapshot, epochs=8, log_every=5)
    run = wait_for(lambda: (r := run_row(run_id)).checkpoint_epoch >= 2 and r, timeout=300)
    trainer = run.process_pid
    assert run.status == RunStatus.RUNNING and runner.pid_alive(trainer)

    os.kill(first.pid, signal.SIGKILL)  # as the OOM killer or a lost host would
    first.wait()
    # The training process does not outlive its worker...
    wait_for(lambda: not runner.pid_alive(trainer), timeout=20)
    # ... and the run ends failed at the next look, never "running" for ever.
    state = wait_for(lambda: (s := api.get(f"/api/training/runs/{run_id}/").json())["status"]
                     == "failed" and s, timeout=30)
    assert "The last checkpoint is epoch" in state["state"]["failure_reason"]
    stopped_at = run_row(run_id).checkpoint_epoch
    assert stopped_at < 8

    response = api.post(f"/api/training/runs/{run_id}/resume/")
    assert response.status_code == 200 and response.json()["status"] == "queued"
    workers.start()
    run = wait_for(lambda: (r := run_row(run_id)).status in FINISHED and r, timeout=420)
    assert run.status == RunStatus.SUCCEEDED, (run.failure_reason, workers.log())
    assert run.attempt == 2 and run.resumed_from_epoch is not None
    assert stopped_at <= run.resumed_from_epoch  # continued, not restarted
    assert list(RunEpoch.objects.filter(run=run).values_list("epoch", flat=True)) == list(
        range(1, 9))
    assert ModelVersion.objects.get(run=run).state == ModelState.CANDIDATE


def test_cancel_stops_training_and_a_crashed_trainer_spares_the_worker(
        workers, cohort, engineer, api):
    snapshot = frozen_snapshot(engineer, cohort)
    worker = workers.start()
    run_id = launch(api, snapshot, epochs=200)
    run = wait_for(lambda: (r := run_row(run_id)).step >= 1 and r, timeout=300)
    response = api.post(f"/api/training/runs/{run_id}/cancel/")
    assert response.status_code == 200
    run = wait_for(lambda: (r := run_row(run_id)).status in FINISHED and r, timeout=60)
    assert run.status == RunStatus.CANCELLED
    assert run.failure_reason == f"Cancelled by {engineer.username}."
    assert not runner.pid_alive(run.process_pid)

    # The training process dies on its own (out of memory): the run fails with the reason,
    # and the worker lives on to take the next job.
    run_id = launch(api, snapshot, epochs=200)
    run = wait_for(lambda: (r := run_row(run_id)).step >= 1 and r, timeout=300)
    os.kill(run.process_pid, signal.SIGKILL)
    run = wait_for(lambda: (r := run_row(run_id)).status in FINISHED and r, timeout=60)
    assert run.status == RunStatus.FAILED
    assert run.failure_reason == "Training was stopped by SIGKILL (out of memory?)."
    assert worker.poll() is None
