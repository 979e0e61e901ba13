"""Training runs: launch, cancel, resume; the worker's supervision of `python -m ml train`;
and the check that fails runs whose worker died.

A run is a row (`queued -> running -> succeeded | failed | cancelled`). The gpu-queue task
claims the row for one attempt (`attempt` grows with every resume, so a stale or redelivered
message cannot run it twice), runs ml training in a child process, tails its
`metrics.jsonl` into the database and to the page, stamps `heartbeat_at`, and stops the child
when the row asks for a cancel. A worker killed outright stops stamping: `runs_reap_stale`
fails the run once its heartbeat is older than STALE_AFTER_SECONDS (at once when the dead
worker was on this host), and it can be resumed from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotations.models import AuditAction, User
from annotations.services import audit_record
from ml.jsonl import JsonlTail
from webapp.training import hyperparameters as hp
from webapp.training import runner
from webapp.training.conf import setting, training_dir
from webapp.training.models import (
    DatasetSnapshot,
    RunEpoch,
    RunPhase,
    RunStatus,
    RunStep,
    TrainingRun,
)
from webapp.training.selectors import epoch_points, run_summary, step_points
from webapp.training.services.common import ValidationError, require_train, run_notify

logger = logging.getLogger(__name__)


class RunFailed(Exception):
    """The attempt cannot go on; the message is shown on the run's page."""


class RunCancelled(Exception):
    pass


class RunLost(Exception):
    """The row no longer belongs to this attempt (failed by the stale check, resumed...)."""


class WorkerStopping(Exception):
    """The worker is shutting down (warm or cold): the run goes back to the queue."""


def worker_stopping() -> bool:
    """Whether this Celery worker process was asked to shut down (SIGTERM, Ctrl-C). A warm
    shutdown would otherwise wait for the run to end, however long it takes."""
    from celery.worker import state

    return any(flag is not None and flag is not False
               for flag in (state.should_stop, state.should_terminate))


def _notify(run: TrainingRun, **extra) -> None:
    run_notify(run.pk, {"run": run_summary(run), **extra})


def _notify_on_commit(run_id: int) -> None:
    def send():
        run = TrainingRun.objects.filter(pk=run_id).first()
        if run is not None:
            _notify(run)

    transaction.on_commit(send)


def _enqueue(run: TrainingRun) -> None:
    """Send the run's task once the row is committed, to the training queue (the gpu queue
    unless settings put training on its own workers)."""
    from webapp.training.tasks import run_train

    run_id, attempt, queue = run.pk, run.attempt, setting("QUEUE")
    transaction.on_commit(lambda: run_train.apply_async(args=[run_id, attempt], queue=queue))


def run_path(run: TrainingRun) -> Path:
    return training_dir() / run.run_dir


# --- The web side ---------------------------------------------------------------------------


@transaction.atomic
def run_create(
    *, user: User, snapshot: DatasetSnapshot, arch: str, preset: str,
    hyperparameters: dict | None = None, gpus: int = 1,
) -> TrainingRun:
    """Check the configuration (raises `hyperparameters.ConfigError` with reasons) and queue
    the run on the gpu queue."""
    require_train(user)
    clean = hp.check(arch=arch, preset=preset, hyperparameters=hyperparameters or {},
                     gpus=gpus, max_gpus=setting("MAX_GPUS"), counts=snapshot.counts)
    run = TrainingRun.objects.create(
        snapshot=snapshot, created_by=user, arch=arch, preset=preset, hyperparameters=clean,
        gpus=gpus, epochs=hp.effective(preset, arch, clean)["epochs"],
        run_dir=f"runs/{timezone.now():%Y%m%d-%H%M%S}-{secrets.token_hex(6)}",
    )
    audit_record(user=user, action=AuditAction.CREATE, obj=run,
                 detail={"snapshot": snapshot.pk, "arch": arch, "preset": preset,
                         "hyperparameters": clean, "gpus": gpus})
    _enqueue(run)
    return run


@transaction.atomic
def run_cancel(*, user: User, run: TrainingRun) -> TrainingRun:
    """A queued run ends at once; a running one is stopped by its supervising task."""
    require_train(user)
    run = TrainingRun.objects.select_for_update().get(pk=run.pk)
    now = timezone.now()
    if run.status == RunStatus.QUEUED:
        run.status, run.finished_at = RunStatus.CANCELLED, now
        run.failure_reason = f"Cancelled by {user.get_username()} before it started."
        run.save(update_fields=["status", "finished_at", "failure_reason"])
    elif run.status == RunStatus.RUNNING:
        if run.cancel_requested_at is None:
            run.cancel_requested_at, run.cancel_requested_by = now, user
            run.save(update_fields=["cancel_requested_at", "cancel_requested_by"])
    else:
        raise ValidationError(f"The run has already ended ({run.get_status_display().lower()}).")
    audit_record(user=user, action=AuditAction.CHANGE, obj=run, detail={"cancel": True})
    _notify_on_commit(run.pk)
    return run


def run_resume(*, user: User, run: TrainingRun) -> TrainingRun:
    """Queue a failed or cancelled run again; the worker continues from its last checkpoint
    (`ml train --resume`) when the run directory has one."""
    require_train(user)
    runs_reap_stale()
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if run.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
            raise ValidationError("Only a failed or cancelled run can be resumed "
                                  f"(this one is {run.get_status_display().lower()}).")
        TrainingRun.objects.filter(pk=run.pk).update(
            status=RunStatus.QUEUED, attempt=F("attempt") + 1, phase=RunPhase.NONE,
            failure_reason="", finished_at=None, heartbeat_at=None, process_pid=None,
            cancel_requested_at=None, cancel_requested_by=None,
        )
        run.refresh_from_db()
        audit_record(user=user, action=AuditAction.CHANGE, obj=run,
                     detail={"resume": True, "attempt": run.attempt,
                             "from_epoch": run.checkpoint_epoch})
        _enqueue(run)
        _notify_on_commit(run.pk)
    return run


def _stale_reason(run: TrainingRun, beat) -> str:
    when = timezone.localtime(beat).strftime("%Y-%m-%d %H:%M:%S") if beat else "its start"
    where = f" on {run.host}" if run.host else ""
    resume = (f" The last checkpoint is epoch {run.checkpoint_epoch}: resume the run to "
              "continue from it." if run.checkpoint_epoch else
              " No epoch had finished: resuming starts it again.")
    return f"The worker running this run{where} stopped (last heartbeat {when}).{resume}"


def runs_reap_stale(*, now=None) -> list[int]:
    """Fail every running run whose worker is gone: no heartbeat for STALE_AFTER_SECONDS, or
    (at once) its worker process no longer exists on this host. Idempotent; called by the
    pages and API, at worker start-up, and periodically by Celery beat when it runs."""
    now = now or timezone.now()
    bound = now - timedelta(seconds=setting("STALE_AFTER_SECONDS"))
    host = socket.gethostname()
    reaped = []
    for run in TrainingRun.objects.filter(status=RunStatus.RUNNING):
        beat = run.heartbeat_at or run.started_at
        dead_here = run.host == host and not runner.pid_alive(run.worker_pid)
        if not (dead_here or beat is None or beat < bound):
            continue
        done = TrainingRun.objects.filter(
            pk=run.pk, status=RunStatus.RUNNING, attempt=run.attempt,
            heartbeat_at=run.heartbeat_at,
        ).update(status=RunStatus.FAILED, phase=RunPhase.NONE, finished_at=now,
                 failure_reason=_stale_reason(run, beat))
        if done:
            logger.warning("run %s: worker %s gone, marked failed", run.pk, run.worker)
            reaped.append(run.pk)
            run.refresh_from_db()
            _notify(run)
    return reaped


def runs_reap_on_worker_start(*, worker: str) -> list[int]:
    """A worker that starts runs nothing yet: its name on a running row is a previous life."""
    host = socket.gethostname()
    reaped = []
    for run in TrainingRun.objects.filter(status=RunStatus.RUNNING, worker=worker, host=host):
        if run.worker_pid == os.getpid():
            continue
        done = TrainingRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING,
                                          attempt=run.attempt).update(
            status=RunStatus.FAILED, phase=RunPhase.NONE, finished_at=timezone.now(),
            failure_reason=_stale_reason(run, run.heartbeat_at).replace(
                "stopped", "restarted", 1))
        if done:
            reaped.append(run.pk)
            run.refresh_from_db()
            _notify(run)
    return reaped + runs_reap_stale()


# --- The worker side ------------------------------------------------------------------------


def _num(value) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


class _Attempt:
    """One attempt of one run inside the worker: claims, exports, trains, evaluates,
    registers, and keeps the row and the page up to date."""

    def __init__(self, run: TrainingRun):
        self.run = run
        self.dir = run_path(run)
        self.log_path = self.dir / "train.log"
        self.error: str | None = None
        self.last_tail = run.log_tail

    # -- Rows and pushes

    def _save(self, *fields: str) -> None:
        TrainingRun.objects.filter(pk=self.run.pk, attempt=self.run.attempt).update(
            **{f: getattr(self.run, f) for f in fields})

    def phase(self, phase: str) -> None:
        self.run.phase = phase
        self._save("phase")
        _notify(self.run)

    def apply(self, events: list[dict]) -> None:
        """Store metrics events (idempotent: a resumed run replays its file) and push them."""
        run, steps, epochs, fields = self.run, {}, {}, set()
        for e in events:
            kind = e.get("event")
            if kind == "start":
                run.epochs = int(e.get("epochs") or run.epochs)
                run.steps_total = int(e.get("steps_total") or 0)
                run.device = str(e.get("device") or "")[:32]
                if e.get("resumed_from_epoch") is not None:
                    run.resumed_from_epoch = int(e["resumed_from_epoch"])
                self.error = None
                fields |= {"epochs", "steps_total", "device", "resumed_from_epoch"}
            elif kind == "step":
                steps[int(e["step"])] = RunStep(
                    run=run, step=int(e["step"]), epoch=int(e.get("epoch") or 0),
                    loss=_num(e.get("loss")), lr=_num(e.get("lr")))
                run.step = int(e["step"])
                run.steps_total = int(e.get("steps_total") or run.steps_total)
                fields |= {"step", "steps_total"}
            elif kind == "epoch":
                n = int(e["epoch"])
                epochs[n] = RunEpoch(
                    run=run, epoch=n, train_loss=_num(e.get("train_loss")),
                    val_loss=_num(e.get("val_loss")), val_auroc=_num(e.get("val_auroc")),
                    lr=_num(e.get("lr")), seconds=_num(e.get("time")),
                    best_epoch=e.get("best_epoch"), improved=bool(e.get("improved")))
                # ml.train writes the checkpoint before it logs the epoch.
                run.epoch = run.checkpoint_epoch = n
                fields |= {"epoch", "checkpoint_epoch"}
            elif kind == "done":
                run.summary = {k: v for k, v in e.items() if k not in ("event", "time")}
                fields.add("summary")
            elif kind == "error":
                self.error = str(e.get("message") or e.get("type") or "error")
        if steps:
            RunStep.objects.bulk_create(list(steps.values()), update_conflicts=True,
                                        unique_fields=["run", "step"],
                                        update_fields=["epoch", "loss", "lr"])
        if epochs:
            RunEpoch.objects.bulk_create(
                list(epochs.values()), update_conflicts=True, unique_fields=["run", "epoch"],
                update_fields=["train_loss", "val_loss", "val_auroc", "lr", "seconds",
                               "best_epoch", "improved"])
        if fields:
            self._save(*sorted(fields))
        if steps or epochs or fields:
            _notify(run, steps=step_points(steps.values()),
                    epochs=epoch_points(epochs.values()))

    def heartbeat(self) -> None:
        """Stamp the row, refresh the log tail; stop on a cancel or a lost claim."""
        tail = runner.log_tail(self.log_path, setting("LOG_TAIL_CHARS"))
        changes = {"heartbeat_at": timezone.now()}
        if tail != self.last_tail:
            changes["log_tail"] = self.last_tail = tail
        mine = TrainingRun.objects.filter(pk=self.run.pk, attempt=self.run.attempt,
                                          status=RunStatus.RUNNING)
        if not mine.update(**changes):
            raise RunLost
        self.run.heartbeat_at = changes["heartbeat_at"]
        self.run.log_tail = tail
        if "log_tail" in changes:
            _notify(self.run, log_tail=tail)
        if mine.filter(cancel_requested_at__isnull=False).exists():
            raise RunCancelled

    # -- Child processes

    def supervise(self, command: list[str], tail: JsonlTail | None) -> int:
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(settings.BASE_DIR),
                                                           os.environ.get("PYTHONPATH")])))
        with self.log_path.open("a") as log:
            log.write(f"\n$ {' '.join(command)}\n")
        proc = runner.start(command, log_path=self.log_path, cwd=settings.BASE_DIR, env=env,
                            keep_fds=[self.lock.fd])
        self.run.process_pid = proc.pid
        self._save("process_pid")
        every = float(setting("HEARTBEAT_SECONDS"))
        last = runner.monotonic()
        try:
            while True:
                code = runner.wait_poll(proc, min(0.5, every))
                if tail is not None and (events := tail.read()):
                    self.apply(events)
                if code is not None:
                    return code
                if worker_stopping():
                    raise WorkerStopping
                if runner.monotonic() - last >= every:
                    last = runner.monotonic()
                    self.heartbeat()
        except BaseException:
            runner.stop(proc, float(setting("CANCEL_GRACE_SECONDS")))
            raise

    def failure_from(self, code: int, what: str) -> str:
        if self.error:
            return f"{what} failed: {self.error}"
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (out of memory?)" if -code == signal.SIGKILL else ""
            return f"{what} was stopped by {name}{hint}."
        lines = [ln for ln in runner.log_tail(self.log_path, 2000).splitlines() if ln.strip()]
        return f"{what} failed (exit status {code}): {lines[-1] if lines else 'no output'}"

    # -- The attempt

    def execute(self) -> None:
        from webapp.training.services.registry import model_version_register
        from webapp.training.services.snapshots import SnapshotError, snapshot_materialise

        run = self.run
        if run.gpus > 1:
            import torch

            available = torch.cuda.device_count()
            if available < run.gpus:
                raise RunFailed(f"The run asks for {run.gpus} GPUs; this worker "
                                f"({socket.gethostname()}) has {available}.")
        try:
            self.dir.mkdir(parents=True, exist_ok=run.attempt > 1)
        except FileExistsError:
            raise RunFailed(f"The run directory {self.dir} already exists: it belongs to "
                            "another run, and a run never writes another's files.") from None
        try:
            self.lock = runner.RunLock(self.dir).__enter__()
        except runner.DirectoryBusy as exc:
            raise RunFailed(f"{exc}; try again once it has stopped.") from None
        try:
            self.phase(RunPhase.EXPORTING)
            try:
                data = snapshot_materialise(snapshot=run.snapshot)
            except SnapshotError as exc:
                raise RunFailed(str(exc)) from exc
            self.heartbeat()

            self.phase(RunPhase.TRAINING)
            resume = (self.dir / "checkpoint.pt").is_file()
            if not resume:
                self.start_afresh()
            command = runner.train_command(
                data_dir=data, run_dir=self.dir, arch=run.arch, preset=run.preset,
                hyperparameters=hp.train_overrides(run.preset, run.hyperparameters),
                gpus=run.gpus, resume=resume)
            code = self.supervise(command, JsonlTail(self.dir / "metrics.jsonl"))
            if code != 0:
                raise RunFailed(self.failure_from(code, "Training"))

            self.phase(RunPhase.EVALUATING)
            self.error = None
            device = "cuda" if run.device.startswith("cuda") else "cpu"
            code = self.supervise(runner.evaluate_command(run_dir=self.dir, device=device),
                                  None)
            if code != 0:
                raise RunFailed(self.failure_from(code, "Evaluation"))

            self.phase(RunPhase.REGISTERING)
            with transaction.atomic():
                locked = TrainingRun.objects.select_for_update().get(pk=run.pk)
                if locked.status != RunStatus.RUNNING or locked.attempt != run.attempt:
                    raise RunLost
                version = model_version_register(run=locked, run_dir=self.dir)
                self.finish(RunStatus.SUCCEEDED, "")
            logger.info("run %s succeeded: model v%s", run.pk, version.number)
        finally:
            self.lock.__exit__(None, None, None)

    def start_afresh(self) -> None:
        """No checkpoint (a first attempt, or one that failed before its first epoch): the
        progress of earlier attempts goes, as ml.train starts a fresh metrics log."""
        (self.dir / "metrics.jsonl").unlink(missing_ok=True)
        RunStep.objects.filter(run=self.run).delete()
        RunEpoch.objects.filter(run=self.run).delete()
        self.run.epoch = self.run.step = self.run.checkpoint_epoch = 0
        self.run.resumed_from_epoch = None
        self._save("epoch", "step", "checkpoint_epoch", "resumed_from_epoch")

    def requeue(self) -> None:
        """The worker shuts down: queue the run again as its next attempt, which continues
        from the last checkpoint on whichever worker takes it (this one after a restart)."""
        with transaction.atomic():
            done = TrainingRun.objects.filter(
                pk=self.run.pk, attempt=self.run.attempt, status=RunStatus.RUNNING,
            ).update(status=RunStatus.QUEUED, attempt=F("attempt") + 1, phase=RunPhase.NONE,
                     heartbeat_at=None, process_pid=None,
                     log_tail=runner.log_tail(self.log_path, setting("LOG_TAIL_CHARS")))
            if done:
                self.run.refresh_from_db()
                logger.warning("run %s: the worker is shutting down; queued again as attempt "
                               "%s", self.run.pk, self.run.attempt)
                _enqueue(self.run)
                _notify_on_commit(self.run.pk)

    def finish(self, status: str, reason: str) -> bool:
        tail = runner.log_tail(self.log_path, setting("LOG_TAIL_CHARS"))
        done = TrainingRun.objects.filter(
            pk=self.run.pk, attempt=self.run.attempt, status=RunStatus.RUNNING,
        ).update(status=status, phase=RunPhase.NONE, finished_at=timezone.now(),
                 failure_reason=reason[:4000], log_tail=tail)
        if done:
            self.run.refresh_from_db()
            _notify_on_commit(self.run.pk)
        return bool(done)


def run_execute(*, run_id: int, attempt: int, worker: str = "") -> TrainingRun | None:
    """The gpu-queue task's work for one attempt. Claims the row (only a queued row of this
    attempt), then runs it to an end state; never raises for a failure of the run itself."""
    now = timezone.now()
    claimed = TrainingRun.objects.filter(
        pk=run_id, attempt=attempt, status=RunStatus.QUEUED,
    ).update(status=RunStatus.RUNNING, phase=RunPhase.NONE, heartbeat_at=now,
             started_at=Coalesce(F("started_at"), Value(now)), worker=worker[:255],
             host=socket.gethostname()[:255], worker_pid=os.getpid(), process_pid=None,
             failure_reason="")
    if not claimed:
        logger.info("run %s attempt %s: not queued any more, nothing to do", run_id, attempt)
        return None
    run = TrainingRun.objects.select_related("snapshot").get(pk=run_id)
    _notify(run)
    job = _Attempt(run)
    try:
        job.execute()
    except RunCancelled:
        run.refresh_from_db()
        who = run.cancel_requested_by.get_username() if run.cancel_requested_by else "a user"
        job.finish(RunStatus.CANCELLED, f"Cancelled by {who}.")
    except RunLost:
        logger.warning("run %s attempt %s: the row was taken over; stopped", run_id, attempt)
    except WorkerStopping:
        job.requeue()
    except RunFailed as exc:
        job.finish(RunStatus.FAILED, str(exc))
    except Exception as exc:  # noqa: BLE001 - the run fails with a reason; the worker lives on
        logger.exception("run %s failed", run_id)
        job.finish(RunStatus.FAILED, f"The run stopped on an unexpected error "
                                     f"({type(exc).__name__}: {exc}).")
    run.refresh_from_db()
    return run
