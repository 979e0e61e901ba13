"""Training runs in one process (the worker's service without Celery): a real tiny run to a
registered model, failures with reasons, cancel and resume rules, and the stale check."""

from __future__ import annotations

import socket
import subprocess
from datetime import timedelta

import pytest
from django.utils import timezone

from annotations.models import AuditEvent
from tests.conftest import make_user
from tests.webapp.training.conftest import TINY, frozen_snapshot, make_cohort
from webapp.training import services
from webapp.training.models import (
    ModelState,
    RunEpoch,
    RunStatus,
    RunStep,
    TrainingRun,
)
from webapp.training.services.runs import _Attempt, run_path


@pytest.fixture
def engineer(centre_a):
    return make_user("ml_engineer", centre_a)


@pytest.fixture
def snapshot(cohort, engineer):
    return frozen_snapshot(engineer, cohort)


@pytest.fixture
def queued_run(snapshot, engineer, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):  # no broker: nothing is sent
        return services.run_create(user=engineer, snapshot=snapshot, arch="irv2_cam",
                                   preset="small", hyperparameters=TINY)


def test_a_tiny_run_trains_evaluates_and_registers_a_candidate(queued_run):
    run = services.run_execute(run_id=queued_run.pk, attempt=1, worker="test@host")
    assert run.status == RunStatus.SUCCEEDED, run.failure_reason + run.log_tail
    assert (run.epoch, run.epochs, run.step) == (2, 2, run.steps_total)
    assert run.device == "cpu" and run.summary["best_epoch"] in (1, 2)
    epochs = list(RunEpoch.objects.filter(run=run).order_by("epoch"))
    assert [e.epoch for e in epochs] == [1, 2]
    assert all(e.train_loss is not None and e.val_loss is not None for e in epochs)
    assert RunStep.objects.filter(run=run).count() == run.steps_total  # log_every=1
    assert "python" in run.log_tail or "ml" in run.log_tail
    version = run.model_version
    assert version.state == ModelState.CANDIDATE and version.number == 1
    assert version.threshold == pytest.approx(run.summary["threshold"])
    assert set(version.metrics["external_test"]["centres"]) == {"CB"}
    assert version.metrics["val"]["n"] == run.snapshot.counts["val"]["n"]
    assert len(version.checksum) == 64 and version.weights.endswith("model.safetensors")
    assert version.config["train"]["frames"] == 8
    assert AuditEvent.objects.filter(object_type="training.ModelVersion",
                                     action="create").exists()
    # The task of an attempt runs once: a redelivered message finds nothing to do.
    assert services.run_execute(run_id=run.pk, attempt=1, worker="test@host") is None


def test_a_snapshot_too_small_for_ml_says_so(training_env, centre_a, centre_b, engineer):
    make_cohort(centre_a, benign=8, malignant=3)
    make_cohort(centre_b, benign=2, malignant=2)
    snapshot = frozen_snapshot(engineer, {"development": centre_a, "external": centre_b})
    # Bypass the form's check, as an older row or a changed rule would: the worker's ml
    # refuses with its own reason, and the run says it.
    run = TrainingRun.objects.create(snapshot=snapshot, created_by=engineer, arch="irv2_cam",
                                     preset="small", hyperparameters=TINY, run_dir="runs/small")
    run = services.run_execute(run_id=run.pk, attempt=1)
    assert run.status == RunStatus.FAILED
    assert "Training failed: split 'val' has" in run.failure_reason
    assert "training needs at least 2 of each class" in run.failure_reason


def test_two_runs_never_share_a_directory(queued_run, snapshot, engineer, training_env):
    run_path(queued_run).mkdir(parents=True)
    (run_path(queued_run) / "checkpoint.pt").write_bytes(b"another run's file")
    run = services.run_execute(run_id=queued_run.pk, attempt=1)
    assert run.status == RunStatus.FAILED and "already exists" in run.failure_reason
    assert (run_path(queued_run) / "checkpoint.pt").read_bytes() == b"another run's file"
    other = TrainingRun.objects.create(snapshot=snapshot, arch="irv2", preset="small",
                                       run_dir="runs/x")
    assert other.run_dir != queued_run.run_dir


def test_a_directory_still_written_by_a_previous_attempt_is_not_touched(queued_run):
    from webapp.training import runner

    TrainingRun.objects.filter(pk=queued_run.pk).update(attempt=2)
    folder = run_path(queued_run)
    folder.mkdir(parents=True)
    with runner.RunLock(folder) as lock:
        orphan = runner.start(["sleep", "30"], log_path=folder / "x.log", cwd=folder,
                              keep_fds=[lock.fd])
    try:
        run = services.run_execute(run_id=queued_run.pk, attempt=2)
    finally:
        runner.stop(orphan, grace=5)
    assert run.status == RunStatus.FAILED
    assert "still being written by another process" in run.failure_reason


def test_metrics_events_are_stored_once_even_when_replayed(queued_run):
    events = [
        {"event": "start", "epochs": 2, "steps_total": 4, "device": "cpu",
         "resumed_from_epoch": None},
        {"event": "step", "epoch": 1, "step": 1, "steps_total": 4, "loss": 0.9, "lr": 0.001},
        {"event": "step", "epoch": 1, "step": 2, "steps_total": 4, "loss": 0.8, "lr": 0.001},
        {"event": "epoch", "epoch": 1, "epochs": 2, "train_loss": 0.85, "val_loss": 0.7,
         "val_auroc": 0.75, "lr": 0.001, "time": 1.5, "best_epoch": 1, "improved": True},
    ]
    attempt = _Attempt(queued_run)
    attempt.apply(events)
    # A resumed run replays its whole file, then goes on: same rows, newer values win.
    attempt.apply(events + [{"event": "start", "epochs": 2, "steps_total": 4,
                             "device": "cpu", "resumed_from_epoch": 1},
                            {"event": "step", "epoch": 2, "step": 3, "loss": 0.6}])
    run = TrainingRun.objects.get(pk=queued_run.pk)
    assert list(RunStep.objects.filter(run=run).values_list("step", flat=True)) == [1, 2, 3]
    assert RunEpoch.objects.get(run=run).val_auroc == 0.75
    assert (run.epoch, run.checkpoint_epoch, run.step, run.resumed_from_epoch) == (1, 1, 3, 1)


def _running(run, **fields):
    values = {"status": RunStatus.RUNNING, "heartbeat_at": timezone.now(),
              "started_at": timezone.now(), "host": "elsewhere", "worker_pid": 1,
              "worker": "celery@elsewhere", **fields}
    TrainingRun.objects.filter(pk=run.pk).update(**values)
    run.refresh_from_db()
    return run


def test_a_run_whose_heartbeat_stopped_is_failed_and_says_how_to_resume(queued_run):
    _running(queued_run, heartbeat_at=timezone.now() - timedelta(minutes=5),
             checkpoint_epoch=3)
    assert services.runs_reap_stale() == [queued_run.pk]
    queued_run.refresh_from_db()
    assert queued_run.status == RunStatus.FAILED and queued_run.finished_at
    assert "stopped (last heartbeat" in queued_run.failure_reason
    assert "The last checkpoint is epoch 3: resume" in queued_run.failure_reason
    assert services.runs_reap_stale() == []  # idempotent


def test_a_live_run_is_left_alone(queued_run):
    _running(queued_run)  # fresh heartbeat on another host
    assert services.runs_reap_stale() == []
    proc = subprocess.Popen(["sleep", "30"])  # a live worker process on this host
    try:
        _running(queued_run, host=socket.gethostname(), worker_pid=proc.pid)
        assert services.runs_reap_stale() == []
    finally:
        proc.kill()
        proc.wait()
    # ... and the moment that worker process is gone, its run fails without waiting.
    assert services.runs_reap_stale() == [queued_run.pk]


def test_a_restarted_worker_fails_the_runs_of_its_previous_life(queued_run):
    _running(queued_run, host=socket.gethostname(), worker="celery@me", worker_pid=1)
    assert services.runs_reap_on_worker_start(worker="celery@other") == []
    assert services.runs_reap_on_worker_start(worker="celery@me") == [queued_run.pk]
    queued_run.refresh_from_db()
    assert "restarted" in queued_run.failure_reason


def test_cancel_and_resume_follow_the_run_state(queued_run, engineer,
                                                django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        with pytest.raises(services.ValidationError, match="Only a failed or cancelled"):
            services.run_resume(user=engineer, run=queued_run)
        services.run_cancel(user=engineer, run=queued_run)
        queued_run.refresh_from_db()
        assert queued_run.status == RunStatus.CANCELLED
        assert "before it started" in queued_run.failure_reason
        with pytest.raises(services.ValidationError, match="already ended"):
            services.run_cancel(user=engineer, run=queued_run)
        run = services.run_resume(user=engineer, run=queued_run)
        assert (run.status, run.attempt, run.failure_reason) == (RunStatus.QUEUED, 2, "")
        # The first attempt's message, delivered late, cannot run it.
        assert services.run_execute(run_id=run.pk, attempt=1) is None
        run = _running(run)
        services.run_cancel(user=engineer, run=run)
        run.refresh_from_db()
        assert run.status == RunStatus.RUNNING and run.cancel_requested_by == engineer
    actions = list(AuditEvent.objects.filter(object_type="training.TrainingRun")
                   .values_list("action", "detail"))
    assert ("create", ) == actions[-1][:1]
    assert sum(1 for a, d in actions if d.get("cancel")) == 2
    assert sum(1 for a, d in actions if d.get("resume")) == 1


def test_a_worker_shutting_down_queues_the_run_again_and_it_resumes(
        queued_run, monkeypatch, django_capture_on_commit_callbacks):
    """A warm shutdown (SIGTERM to the worker, Ctrl-C in the demo) must not wait for the whole
    run: the trainer stops, the run is queued again, and the next attempt continues from the
    checkpoint."""
    from webapp.training import runner
    from webapp.training.services import runs

    TrainingRun.objects.filter(pk=queued_run.pk).update(
        hyperparameters={**TINY, "epochs": 4})
    seen = {}

    def stopping():
        run = TrainingRun.objects.get(pk=queued_run.pk)
        seen["pid"] = run.process_pid
        return run.checkpoint_epoch >= 1

    monkeypatch.setattr(runs, "worker_stopping", stopping)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run = services.run_execute(run_id=queued_run.pk, attempt=1)
    assert (run.status, run.attempt) == (RunStatus.QUEUED, 2)
    assert len(callbacks) == 2  # the task of attempt 2, and the page's update
    assert not runner.pid_alive(seen["pid"])
    stopped_at = run.checkpoint_epoch
    assert 1 <= stopped_at < 4

    monkeypatch.setattr(runs, "worker_stopping", lambda: False)
    run = services.run_execute(run_id=run.pk, attempt=2)
    assert run.status == RunStatus.SUCCEEDED, run.failure_reason
    assert run.resumed_from_epoch == stopped_at
    assert list(RunEpoch.objects.filter(run=run).values_list("epoch", flat=True)) == [1, 2, 3, 4]
