"""Browser: an ML engineer freezes a snapshot, is told why a configuration cannot run, launches
a tiny run and watches it live (progress, Plotly curves, log tail) until it is registered;
a real Celery worker trains it."""

from __future__ import annotations

import re

import pytest

from tests.conftest import make_user
from tests.webapp.training.conftest import (  # noqa: F401 - fixtures used below
    cohort,
    training_env,
    workers,
)

pytestmark = pytest.mark.e2e


def test_engineer_launches_a_run_and_watches_it_live(live_server, browser_page, workers,  # noqa: F811
                                                     cohort, centre_a):  # noqa: F811
    engineer = make_user("ml_engineer", centre_a)
    workers.start()
    page = browser_page
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Username").fill(engineer.username)
    page.get_by_label("Password").fill("pw-test-123")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="Training").click()

    page.get_by_role("link", name="Dataset snapshots").click()
    form = page.get_by_test_id("snapshot-form")
    form.get_by_label("Name").fill("Browser snapshot")
    form.locator("#id_centres_0").check()  # CA: development
    form.locator("#id_external_centres_1").check()  # CB: external test
    form.get_by_role("button", name="Freeze snapshot").click()
    page.get_by_role("heading", name=re.compile("Browser snapshot")).wait_for()
    assert "external_test" in page.get_by_test_id("snapshot-counts").inner_text()

    page.get_by_role("link", name="Train on this snapshot").click()
    form = page.get_by_test_id("run-form")
    for name, value in {"frames": 8, "size": 16, "epochs": 2, "batch_size": 4,
                        "num_workers": 0, "log_every": 1, "lr": 0.003}.items():
        form.locator(f"#id_hp_{name}").fill(str(value))
    form.get_by_role("button", name="Queue the run").click()
    assert "cannot take 8 frames of 16 x 16 pixels" in page.locator("main").inner_text()
    page.get_by_test_id("run-form").locator("#id_hp_size").fill("32")
    page.get_by_test_id("run-form").get_by_role("button", name="Queue the run").click()
    page.wait_for_url(re.compile(r"/training/runs/\d+/$"))

    # Live, without reloading: the worker's progress arrives (polling here: the test server
    # has no websockets), steps count up and Plotly draws the loss.
    page.wait_for_function(
        "() => /step [1-9]\\d*\\//.test("
        "document.querySelector('[data-testid=step-label]').textContent)", timeout=240000)
    page.locator("#loss-chart .scatterlayer .trace").first.wait_for(timeout=30000)
    status = page.get_by_test_id("run-status")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=run-status]').textContent === 'Succeeded'",
        timeout=240000)
    # The page reloads itself at the end; the reloaded page shows the same run, complete.
    page.get_by_test_id("model-link").get_by_role("link", name="model v1").wait_for(
        timeout=30000)
    assert status.inner_text() == "Succeeded"
    assert page.get_by_test_id("epoch-label").inner_text() == "epoch 2/2"
    assert page.get_by_test_id("run-progress").evaluate("bar => bar.value") == 1
    assert "epoch 2/2" in page.get_by_test_id("log-tail").inner_text()
    assert page.locator("#auroc-chart .scatterlayer .trace").count() >= 1

    page.get_by_role("link", name="model v1").click()
    assert page.get_by_test_id("model-state").inner_text() == "Candidate"
    assert "external_test" in page.get_by_test_id("metrics-table").inner_text()
