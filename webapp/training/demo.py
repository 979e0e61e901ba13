"""`make demo`'s model: once the demo cases are processed, freeze a snapshot, train a small
model in the worker, promote it, and let the workers score every demo video.

The demo imports only a handful of cases per centre, fewer than a patient-level split needs
(ml.train wants at least 2 cases of each class in train and in validation). When that is so,
three more synthetic hospitals (C3-C5) are rendered with `ml.synthetic` and imported, C5 held
out as the external test centre. Everything is done as the demo's ML engineer, through the
same services as the pages, so the snapshot, run, promotion and predictions are ordinary,
audited rows.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path

from django.db import transaction

from annotations.models import Centre, User, Video, VideoStatus
from webapp.training import hyperparameters as hp
from webapp.training import selectors, services
from webapp.training.models import ModelVersion, Prediction, RunStatus, TrainingRun

DEMO_USER = "mlengineer"
# Rendered when the demo's own cases are too few to train on: nodules per centre, the last
# centre (the external test one) smaller.
TOP_UP = {"C3": 20, "C4": 20, "C5": 12}
TOP_UP_SEED = 11
TOP_UP_FRAMES = 32
# Small enough for a few minutes on a laptop CPU, large enough to learn the synthetic foci.
HYPERPARAMETERS = {"frames": 16, "size": 64, "epochs": 10, "batch_size": 8, "lr": 0.002,
                   "warmup_epochs": 0.5, "patience": 0, "log_every": 2}

Log = Callable[[str], None]


class DemoStopped(Exception):
    pass


def _wait(condition: Callable[[], object], *, timeout: float, alive: Callable[[], bool],
          what: str, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise DemoStopped("the demo stopped")
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise DemoStopped(f"gave up waiting for {what} after {timeout:.0f} s")


def processing_done() -> bool:
    return not Video.objects.filter(
        status__in=[VideoStatus.UPLOADED, VideoStatus.PROCESSING]).exists()


def split_refusal(development: list[Centre], external: list[Centre], seed: int = 0
                  ) -> str | None:
    """Why a snapshot of these centres (split with `seed`) could not train the demo model."""
    from ml.data import patient_level_split
    from ml.train import make_config
    from webapp.training.services.snapshots import FRACTIONS, eligible_cases

    cases, _ = eligible_cases(centres=development + external)
    if not cases:
        return "no eligible case"
    split = patient_level_split(cases, FRACTIONS, external_centres=[c.code for c in external],
                                seed=seed)
    counts: dict = {}
    for c in cases:
        block = counts.setdefault(split[c["case_id"]], {"n": 0, "benign": 0, "malignant": 0})
        block["n"] += 1
        block["malignant" if c["label"] else "benign"] += 1
    return hp.split_refusal(counts, make_config("small").min_per_class)


def render_top_up(folder: Path, log: Log, alive: Callable[[], bool]) -> Path:
    """Synthetic sweeps of the top-up hospitals as an import folder (once)."""
    from ml.synthetic import MANIFEST_COLUMNS, plan_cases, render_case, write_video

    manifest = folder / "manifest.csv"
    if manifest.is_file():
        return manifest
    codes = list(TOP_UP)
    plans, taken = [], dict.fromkeys(codes, 0)
    for plan in plan_cases(int(codes[-1][1:]), max(TOP_UP.values()), TOP_UP_SEED):
        centre = plan.row()["centre"]
        if centre in TOP_UP and taken[centre] < TOP_UP[centre]:
            plans.append(plan)
            taken[centre] += 1
    log(f"rendering {len(plans)} synthetic sweeps for {', '.join(codes)}")
    for plan in plans:
        if not alive():
            raise DemoStopped("the demo stopped")
        case = render_case(plan, TOP_UP_FRAMES)
        (folder / plan.video).parent.mkdir(parents=True, exist_ok=True)
        write_video(folder / plan.video, case.frames, case.fps)
    tmp = manifest.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(p.row() for p in plans)
    tmp.replace(manifest)
    return manifest


def import_top_up(folder: Path, log: Log, alive: Callable[[], bool]) -> None:
    """Import the top-up cases, processed here (not by the workers, which stay free)."""
    from annotations import imports

    manifest = render_top_up(folder, log, alive)
    rows = imports.read_manifest(manifest, imports.CASE_COLUMNS[:4])
    results = []
    for line, row in enumerate(rows, start=2):
        if not alive():
            raise DemoStopped("the demo stopped")
        results.append(imports.import_case_row(row, base=folder, line=line,
                                               create_centres=True, inline=True))
    done = sum(r.outcome != imports.REJECTED for r in results)
    log(f"imported {done} of {len(rows)} top-up cases")


def demo_model(*, folder: Path, log: Log, alive: Callable[[], bool] = lambda: True,
               timeout: float = 3600) -> ModelVersion | None:
    """Train, promote and score; idempotent (a restarted demo keeps its production model
    and only queues the predictions it lacks)."""
    t0 = time.monotonic()
    if (current := selectors.production_model()) is not None:
        queued = services.predictions_backfill()
        log(f"model v{current.number} is in production; {queued} prediction(s) queued")
        return current
    user = User.objects.get(username=DEMO_USER)
    _wait(processing_done, timeout=timeout, alive=alive, what="the demo videos")
    run = TrainingRun.objects.filter(created_by=user).exclude(
        status__in=[RunStatus.FAILED, RunStatus.CANCELLED]).first()
    if run is None:
        own = [c for c in Centre.objects.order_by("code") if c.code not in TOP_UP]
        development, external = own[:-1], own[-1:]
        if split_refusal(development, external):
            import_top_up(folder, log, alive)
            centres = list(Centre.objects.order_by("code"))
            external = [c for c in centres if c.code == list(TOP_UP)[-1]]
            development = [c for c in centres if c not in external]
        seed = next((s for s in range(20) if not split_refusal(development, external, s)),
                    None)
        if seed is None:
            log(f"the demo cases cannot train a model: {split_refusal(development, external)}")
            return None
        snapshot = services.snapshot_freeze(
            user=user, name="Demo snapshot", centres=development, external_centres=external,
            seed=seed)
        log(f"snapshot {snapshot.pk}: {snapshot.counts}")
        with transaction.atomic():
            run = services.run_create(user=user, snapshot=snapshot, arch="irv2_cam",
                                      preset="small", hyperparameters=HYPERPARAMETERS)
        log(f"run {run.pk} queued")
    t_train = time.monotonic()
    run = _wait(lambda: (r := TrainingRun.objects.get(pk=run.pk)).status in
                (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED) and r,
                timeout=timeout, alive=alive, what=f"run {run.pk}", every=5.0)
    if run.status != RunStatus.SUCCEEDED:
        log(f"run {run.pk} {run.status}: {run.failure_reason}")
        return None
    version = run.model_version
    log(f"run {run.pk} succeeded in {time.monotonic() - t_train:.0f} s (train "
        f"{run.summary.get('seconds')} s): model v{version.number}, "
        f"{selectors.headline(version)}")
    with transaction.atomic():
        services.model_promote(user=user, version=version)
    ready = Video.objects.filter(status=VideoStatus.READY).exclude(clip="").count()
    _wait(lambda: Prediction.objects.filter(model_version=version).count() >= ready,
          timeout=timeout, alive=alive, what="the predictions")
    log(f"model v{version.number} in production; {ready} videos scored; "
        f"{time.monotonic() - t0:.0f} s in all")
    return version
