"""The run page and its data: what a reload shows equals what was pushed live; Plotly comes
from the installed package, never a CDN."""

from __future__ import annotations

from pathlib import Path

import plotly
import pytest
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from tests.conftest import make_user
from tests.webapp.training.conftest import TINY, frozen_snapshot
from webapp.training.models import RunEpoch, RunStatus, RunStep, TrainingRun

BUNDLE = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def test_plotly_is_found_in_the_installed_package_and_collected(tmp_path, settings):
    assert finders.find("vendor/plotly.min.js") == str(BUNDLE)
    assert finders.find("vendor/plotly.min.js", find_all=True) == [str(BUNDLE)]
    settings.STATIC_ROOT = tmp_path / "static"
    call_command("collectstatic", "--noinput", verbosity=0)
    collected = tmp_path / "static" / "vendor" / "plotly.min.js"
    assert collected.read_bytes() == BUNDLE.read_bytes()


@pytest.fixture
def run_with_progress(cohort, centre_a):
    engineer = make_user("ml_engineer", centre_a)
    run = TrainingRun.objects.create(
        snapshot=frozen_snapshot(engineer, cohort), created_by=engineer, arch="irv2_cam",
        preset="small", hyperparameters=TINY, run_dir="runs/page", status=RunStatus.RUNNING,
        epoch=1, epochs=2, step=3, steps_total=6, log_tail="epoch 1/2 train_loss 0.69",
        heartbeat_at=timezone.now(), host="gpu-host-1", worker_pid=1)
    RunEpoch.objects.create(run=run, epoch=1, train_loss=0.7, val_loss=0.68, val_auroc=0.625)
    for step in (1, 2, 3):
        RunStep.objects.create(run=run, step=step, epoch=1 + (step > 2), loss=1.0 / step)
    return engineer, run


def test_a_reload_shows_the_stored_progress(run_with_progress):
    engineer, run = run_with_progress
    client = Client()
    client.force_login(engineer)
    page = client.get(f"/training/runs/{run.pk}/").content.decode()
    assert "epoch 1/2" in page and "step 3/6" in page
    assert 'value="0.5"' in page  # the progress bar
    assert "epoch 1/2 train_loss 0.69" in page  # the log tail
    assert "/static/vendor/plotly.min.js" in page and "cdn" not in page.lower()
    assert 'data-testid="cancel-form"' in page
    state = client.get(f"/training/runs/{run.pk}/state.json").json()
    assert state["run"]["status"] == "running" and state["run"]["progress"] == 0.5
    assert [p["step"] for p in state["steps"]] == [1, 2, 3]
    assert state["epochs"] == [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.68,
                                "val_auroc": 0.625, "lr": None, "seconds": None,
                                "best_epoch": None}]
    assert state["log_tail"] == run.log_tail
