"""Seed ensembles: members trained side by side, joined into one run that loads, evaluates and
predicts like any other."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ml.data import ClipDataset, DataError, read_manifest
from ml.ensemble import MemberProgress, member_dirs, train_ensemble
from ml.evaluate import evaluate_run, read_predictions
from ml.inference import load_model, predict, predict_with_heatmaps, spec_of
from ml.models import create_model
from ml.models.ensemble import SeedEnsemble, members_of
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
    assert ensemble.gradcam_layer_names == ["members.0.stage_a", "members.1.stage_a"]
    assert members_of(ensemble) == members and members_of(members[0]) == [members[0]]
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
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    # the members' progress is relayed: member 0's steps, and each epoch once both have it
    members = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
               for d in member_dirs(run, _config())]
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [e["step"] for e in members[0] if e["event"] == "step"]
    (epoch,) = [e for e in events if e["event"] == "epoch"]
    member_aurocs = [next(e["val_auroc"] for e in m if e["event"] == "epoch") for m in members]
    assert epoch["epoch"] == 1 and epoch["member_val_auroc"] == member_aurocs

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


def _epoch_line(n, auroc, loss=1.0):
    return json.dumps({"event": "epoch", "epoch": n, "epochs": 3, "train_loss": loss,
                       "val_loss": loss, "val_auroc": auroc, "lr": 0.1, "time": 2.0}) + "\n"


def test_member_progress_relays_an_epoch_once_every_member_has_it(tmp_path):
    dirs = [tmp_path / "seed-0", tmp_path / "seed-1"]
    for d in dirs:
        d.mkdir()
    sent = []
    progress = MemberProgress(dirs, lambda event, **data: sent.append({"event": event, **data}))
    (dirs[0] / "metrics.jsonl").write_text(_epoch_line(1, 0.6) + '{"event": "step", "st')
    progress.poll()
    assert sent == []  # the second member has no epoch yet; a torn line waits
    with (dirs[0] / "metrics.jsonl").open("a") as f:
        f.write('ep": 4, "steps_total": 12, "loss": 0.5}\n')
    (dirs[1] / "metrics.jsonl").write_text(_epoch_line(1, 0.8) + _epoch_line(2, 0.7))
    progress.poll()
    assert [(e["event"], e.get("epoch"), e.get("step")) for e in sent] == [
        ("step", None, 4), ("epoch", 1, None)]
    assert sent[1]["val_auroc"] == pytest.approx(0.7) and sent[1]["member_val_auroc"] == [0.6, 0.8]
    assert sent[1]["improved"] and sent[1]["best_epoch"] == 1
    # a resumed member repeats epoch 1; it is not sent again
    with (dirs[0] / "metrics.jsonl").open("a") as f:
        f.write(_epoch_line(1, 0.6) + _epoch_line(2, 0.5))
    progress.poll()
    assert [e.get("epoch") for e in sent[2:]] == [2]
    assert sent[2]["val_auroc"] == pytest.approx(0.6) and not sent[2]["improved"]
    assert sent[2]["best_epoch"] == 1


def test_an_ensemble_run_evaluates_like_any_run(ensemble_run):
    data, run, _ = ensemble_run
    m = evaluate_run(run)
    assert m["train_seconds"] > 0
    assert m["external_test"]["localisation"]["heatmap"] == "hirescam (default)"
    assert m["external_test"]["localisation_gradcam"]["heatmap"] == "gradcam (default)"
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
