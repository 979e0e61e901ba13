"""Read-outs of trained runs: benchmarks/snapshot_sweep.py (which epoch's weights a run keeps),
benchmarks/member_combinations.py (how many members an ensemble has),
benchmarks/paired_configs.py (two configurations, seed for seed),
benchmarks/view_sweep.py (how many temporal views it scores) and
benchmarks/tirads_head_readout.py (what a TI-RADS head reads)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ml.ensemble import train_ensemble
from ml.evaluate import evaluate_run, read_predictions
from ml.train import make_config
from tests.ml.test_data import make_tiny_dataset

ROOT = Path(__file__).resolve().parents[2]


def _module(name: str = "snapshot_sweep"):
    path = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluation_aurocs(run: Path) -> dict[str, float]:
    """`ml evaluate`'s AUROC per split, from the run's predictions.csv."""
    from sklearn.metrics import roc_auc_score

    evaluate_run(run, localisation=False)
    preds = read_predictions(run / "predictions.csv")
    return {split: roc_auc_score([p["label"] for p in preds if p["split"] == split],
                                 [p["probability"] for p in preds if p["split"] == split])
            for split in {p["split"] for p in preds}}


@pytest.fixture(scope="module")
def snapshot_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("snapshots")
    data = make_tiny_dataset(root / "data")
    run = root / "run"
    cfg = make_config("small", arch="irv2_cam", frames=8, size=32, batch_size=4, epochs=3,
                      num_workers=0, threads=1, members=2, select_after=0.5,
                      keep_snapshots=True)
    train_ensemble(cfg, data, run)
    return run


def test_every_rule_is_read_out_and_the_runs_own_choice_is_evaluations(snapshot_run):

    result = _module().sweep(snapshot_run)
    assert set(result["rules"]) == {"best_val", "last", "top3_val", "mean_last5", "mean_all",
                                    "swa_last5", "swa_all"}
    for name, member in result["members"].items():
        config = json.loads((snapshot_run / "members" / name / "config.json").read_text())
        assert list(member["epochs"]) == ["2", "3"]  # epoch 1 was not eligible
        assert member["best_epoch"] == config["best_epoch"]
        assert sorted(member["top3_epochs"]) == [2, 3]
    # the run's own choice scores as `ml evaluate` scores the run, split by split
    expected = evaluation_aurocs(snapshot_run)
    for split, block in result["rules"]["best_val"].items():
        assert block["ensemble"] == pytest.approx(expected[split], abs=1e-4)
        assert len(block["members"]) == 2


def test_a_run_without_snapshots_is_a_usage_error(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(SystemExit) as exc:
        _module().main([str(run)])
    assert exc.value.code == 2
    assert "not a run directory" in capsys.readouterr().err


def test_member_combinations_rebuild_the_ensemble_from_its_members(snapshot_run, tmp_path):

    out = tmp_path / "combinations.json"
    assert _module("member_combinations").main([str(snapshot_run), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result["members"]) == ["seed-0", "seed-1"]
    one, two = result["by_members"]["1"], result["by_members"]["2"]
    for split, block in one.items():
        assert block["combinations"] == {m: result["members"][m][split]["auroc"]
                                         for m in ("seed-0", "seed-1")}
        assert block["min"] <= block["mean"] <= block["max"]
    # the two-member combination is the run itself, as `ml evaluate` scores it
    expected = evaluation_aurocs(snapshot_run)
    for split, block in two.items():
        assert block["combinations"]["seed-0+seed-1"] == pytest.approx(expected[split], abs=1e-4)
        assert block["at_or_above_goal"] == (1.0 if block["mean"] >= 0.90 else 0.0)


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "not a run directory"),
    (["{run}", "{run}"], "share a seed"),
])
def test_member_combinations_refuses_what_it_cannot_compare(snapshot_run, tmp_path, capsys,
                                                            args, message):
    paths = {"run": str(snapshot_run), "missing": str(tmp_path / "nothing")}
    with pytest.raises(SystemExit) as exc:
        _module("member_combinations").main([a.format(**paths) for a in args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_view_sweep_reads_out_the_run_as_evaluation_scores_it(snapshot_run):
    result = _module("view_sweep").sweep(snapshot_run, [1, 2], flips=(False,))
    assert result["trained_views"] == 1 and set(result) >= {"1", "2"}
    # at the run's own views, the ensemble's AUROC is evaluation's, split by split
    expected = evaluation_aurocs(snapshot_run)
    for split, block in result["1"]["plain"].items():
        assert block["ensemble"] == pytest.approx(expected[split], abs=1e-4)
        assert len(block["members"]) == 2


def test_paired_configs_compare_the_same_seeds_ensemble_by_ensemble(snapshot_run, tmp_path,
                                                                    capsys):
    a_path = tmp_path / "a.json"
    _module("member_combinations").main([str(snapshot_run), "--out", str(a_path)])
    a = json.loads(a_path.read_text())
    data = Path(json.loads((snapshot_run / "config.json").read_text())["data_root"])
    paired = _module("paired_configs")
    labels = paired.split_labels(data)
    # B: the same seeds, but members that rank every case right
    b = json.loads(a_path.read_text())
    for member in b["members"].values():
        for split, block in member.items():
            block["logits"] = [5.0 if y else -5.0 for y in labels[split]]
    b_path = tmp_path / "b.json"
    b_path.write_text(json.dumps(b))
    assert paired.main([str(a_path), str(b_path), "--data", str(data)]) == 0
    result = paired.compare(a, b, labels, 2)
    for split, s in result["splits"].items():
        assert s["n_combinations"] == 1 and s["b_mean"] == 1.0
        assert s["a_mean"] == pytest.approx(a["by_members"]["2"][split]["mean"], abs=1e-4)
        assert s["b_minus_a_mean"] == pytest.approx(1.0 - s["a_mean"], abs=1e-4)
        assert s["b_better_share"] == (1.0 if s["a_mean"] < 1.0 else 0.0)
    # a configuration against itself: no difference anywhere, DeLong p = 1
    same = paired.compare(a, a, labels, 2)
    for tests in same["trained_pairs"].values():
        assert all(t["b_minus_a"] == 0 for t in tests.values())
        # DeLong on the splits with two cases of each class; the tiny internal test has one
        assert tests["val"]["p"] == 1.0 and tests["internal_test"]["p"] is None
    assert "seed-0+seed-1" in capsys.readouterr().out
    # read-outs of another dataset are refused, not compared
    b["members"]["seed-0"]["val"]["logits"].append(0.0)
    b_path.write_text(json.dumps(b))
    with pytest.raises(SystemExit) as exc:
        paired.main([str(a_path), str(b_path), "--data", str(data)])
    assert exc.value.code == 2 and "another dataset" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tirads_run(tmp_path_factory):
    from tests.ml.test_train import _with_tirads_readings

    root = tmp_path_factory.mktemp("tirads")
    data = _with_tirads_readings(make_tiny_dataset(root / "data"))
    run = root / "run"
    cfg = make_config("small", arch="irv2_cam", frames=8, size=32, batch_size=4, epochs=1,
                      num_workers=0, threads=1, temporal_views=2,
                      model_options={"tirads_head": True})
    from ml.train import train

    train(cfg, data, run)
    return run


def test_tirads_head_readout_scores_the_heads_logits_against_the_readers_calls(tirads_run,
                                                                              tmp_path):
    import numpy as np
    import torch

    from ml.data import ClipDataset, read_manifest
    from ml.inference import load_model, spec_of, temporal_views

    readout = _module("tirads_head_readout")
    out = tmp_path / "readout.json"
    assert readout.main([str(tirads_run), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    block = result["members"]["run"]
    records = read_manifest(json.loads((tirads_run / "config.json").read_text())["data_root"])
    for split, rows in block.items():
        in_split = [r for r in records if r.split == split]
        read = [r for r in in_split if r.tirads_echogenicity is not None]
        # one case of each split is unread; the tiny malignant cases are very hypoechoic
        assert rows["echogenicity"]["read"] == len(read) == len(in_split) - 1
        assert rows["echogenicity"]["suspicious"] == sum(r.label for r in read)
        assert rows["shape"]["auroc"] is None  # every reader called the shape wider-than-tall
    # the head's logits, as the read-out averages them over the run's two temporal views
    model, config = load_model(tirads_run)
    ds = ClipDataset(config["data_root"], "val", spec_of(config))
    direct = []
    with torch.no_grad():
        for view in temporal_views(ds[0]["clip"][None], 2):
            model(view)
            direct.append(model.tirads_logits[0].numpy())
    np.testing.assert_allclose(readout.head_outputs(model, ds)[0], np.mean(direct, axis=0),
                               rtol=1e-5, atol=1e-6)


def test_tirads_head_readout_refuses_a_run_without_the_head(snapshot_run, capsys):
    with pytest.raises(SystemExit) as exc:
        _module("tirads_head_readout").main([str(snapshot_run)])
    assert exc.value.code == 2 and "has no TI-RADS head" in capsys.readouterr().err
