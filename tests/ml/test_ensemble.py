"""Seed ensembles: members trained side by side, joined into one run that loads, evaluates and
predicts like any other."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ml.data import ClipDataset, DataError, read_manifest
from ml.ensemble import member_dirs, train_ensemble
from ml.evaluate import evaluate_run, read_predictions
from ml.inference import load_model, predict, predict_with_heatmaps, spec_of
from ml.models import create_model
from ml.models.ensemble import SeedEnsemble
from ml.train import make_config
from tests.ml.test_data import make_tiny_dataset


def test_seed_ensemble_averages_its_members():
    torch.manual_seed(0)
    members = [create_model("irv2_cam"), create_model("irv2_cam")]
    ensemble = SeedEnsemble(members).eval()
    x = torch.rand(2, 1, 8, 32, 32)
    with torch.no_grad():
        expected = (members[0](x) + members[1](x)) / 2
        assert torch.allclose(ensemble(x), expected, atol=1e-6)
    assert len(ensemble.attention_maps) == 4  # two modules per member, first member first
    assert ensemble.gradcam_layer_name == "members.0.stage_a"
    with pytest.raises(ValueError, match="at least two"):
        SeedEnsemble(members[:1])


def _config(**kw):
    base = dict(arch="irv2_cam", frames=8, size=32, batch_size=4, epochs=1, num_workers=0,
                threads=1, members=2)
    return make_config("small", **{**base, **kw})


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    data = make_tiny_dataset(root / "data")
    run = root / "run"
    summary = train_ensemble(_config(), data, run)
    return data, run, summary


def test_members_train_side_by_side_and_join_into_one_run(ensemble_run):
    data, run, summary = ensemble_run
    assert summary["members"] == 2 and 0 <= summary["threshold"] <= 1
    seeds = [json.loads((d / "config.json").read_text())["train"]["seed"]
             for d in member_dirs(run, _config())]
    assert seeds == [0, 1]
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["members"] == 2 and config["threshold"] == summary["threshold"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    events = [json.loads(line)["event"] for line in lines]
    assert events == ["start", "done"]

    model, config = load_model(run)
    assert isinstance(model, SeedEnsemble)
    spec = spec_of(config)
    members = [load_model(d)[0] for d in member_dirs(run, _config())]
    ds = ClipDataset(data, "external_test", spec)
    clip, _, boxes = ds.load(0)
    # the ensemble's probability is that of its members' mean logit
    logits = []
    for m in members:
        p = predict(m, clip, spec, boxes=boxes)
        logits.append(np.log(p / (1 - p)))
    mean = 1 / (1 + np.exp(-np.mean(logits)))
    assert predict(model, clip, spec, boxes=boxes) == pytest.approx(mean, abs=1e-5)
    h = predict_with_heatmaps(model, clip, spec, boxes=boxes)
    assert h.gradcam.shape == clip.shape and len(h.attention) == 4


def test_an_ensemble_run_evaluates_like_any_run(ensemble_run):
    data, run, _ = ensemble_run
    m = evaluate_run(run)
    assert m["train_seconds"] > 0
    assert m["external_test"]["localisation"]["heatmap"].startswith("gradcam")
    preds = read_predictions(run / "predictions.csv")
    assert len(preds) == sum(r.split != "train" for r in read_manifest(data))


def test_running_again_keeps_finished_members(ensemble_run):
    data, run, _ = ensemble_run
    weights = [d / "model.safetensors" for d in member_dirs(run, _config())]
    before = [w.stat().st_mtime_ns for w in weights]
    train_ensemble(_config(), data, run)
    assert [w.stat().st_mtime_ns for w in weights] == before


def test_a_failing_member_fails_the_ensemble_with_its_log(tmp_path):
    data = make_tiny_dataset(tmp_path / "data")
    # both members fail; the message names them in member order, whichever ended first
    with pytest.raises(DataError, match=r"members failed: seed-0 .*train\.log\), seed-1 "):
        train_ensemble(_config(manifest="missing.csv"), data, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])[
        "event"] == "error"


def test_single_runs_refuse_members():
    from ml.train import train

    with pytest.raises(ValueError, match="side by side"):
        train(_config(), "unused", "unused")
    with pytest.raises(ValueError, match="members is 1"):
        _config(members=0)
