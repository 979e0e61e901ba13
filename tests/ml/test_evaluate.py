"""ml.evaluate and ml.inference: metrics.json keys and values, predictions, heatmaps, compare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ml.train as train_mod
from ml import stats
from ml.data import ClipDataset, DataError, read_manifest
from ml.evaluate import (
    classification_metrics,
    compare,
    evaluate_run,
    localisation_scores,
    read_predictions,
    summarise_localisation,
)
from ml.inference import (
    input_heatmaps,
    load_model,
    logits_of,
    predict,
    predict_with_heatmaps,
    spec_of,
    temporal_views,
    to_clip_grid,
)
from tests.ml.test_data import make_tiny_dataset
from tests.ml.test_train import tiny_config, tiny_model


def test_classification_metrics_on_hand_made_predictions():
    labels = [0, 0, 0, 1, 1, 1]
    probs = [0.1, 0.6, 0.3, 0.4, 0.8, 0.9]
    m = classification_metrics(labels, probs, threshold=0.5)
    assert m["n"] == 6 and m["n_malignant"] == 3
    assert m["auroc"] == pytest.approx(8 / 9)  # 8 of 9 malignant-benign pairs ordered
    low, high = m["auroc_ci"]
    assert low < 8 / 9 < high
    assert m["counts"] == {"tp": 2, "fp": 1, "tn": 2, "fn": 1}
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(2 / 3)
    assert m["ppv"] == pytest.approx(2 / 3) and m["npv"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    w = stats.wilson_interval(2, 3)
    assert m["sensitivity_ci"] == pytest.approx([w.ci_low, w.ci_high], abs=1e-6)
    brier = np.mean((np.array(probs) - np.array(labels)) ** 2)
    assert m["brier"] == pytest.approx(brier, abs=1e-6)
    assert m["threshold"] == 0.5


def test_classification_metrics_with_one_class():
    m = classification_metrics([0, 0, 0], [0.1, 0.7, 0.2], threshold=0.5)
    assert m["auroc"] is None and m["auroc_ci"] is None
    assert m["sensitivity"] is None and m["specificity"] == pytest.approx(2 / 3)
    json.dumps(m, allow_nan=False)


def test_localisation_scores_against_uniform():
    mask = np.zeros((4, 16, 16), np.uint8)
    mask[1, 5, 5] = 1
    mask[2, 10, 10] = 4  # comet-tail: not a calcification
    on = np.zeros((4, 16, 16), np.float32)
    on[1, 4:7, 4:7] = 1.0  # exactly the dilated mark
    s = localisation_scores(on, mask)
    assert s["energy"] == pytest.approx(1.0) and s["pointing"] == pytest.approx(1.0)
    assert s["energy_uniform"] == pytest.approx(9 / 256)
    flat = localisation_scores(np.ones_like(on), mask)
    assert flat["energy"] == pytest.approx(flat["energy_uniform"])
    assert localisation_scores(on, np.where(mask == 1, 0, mask)) is None
    summary = summarise_localisation([{"label": 1, **s}, {"label": 1, **flat}])
    assert summary["n"] == 2
    assert summary["energy_ratio"] == pytest.approx((1 + 9 / 256) / 2 / (9 / 256))


def test_to_clip_grid_maps_back_to_frames_and_crop():
    heat = np.zeros((3, 4, 4), np.float32)
    heat[2] = 1.0
    out = to_clip_grid(heat, np.array([0, 5, 9]), (2, 3, 10, 11), (10, 20, 20))
    assert out.shape == (10, 20, 20) and out.dtype == np.float16
    assert out[9, 3:11, 2:10].min() == 1 and out[9].sum() == 64  # pasted in the crop only
    assert out[8].sum() == 64 and out[7].sum() == 0  # nearest sampled frame
    part = to_clip_grid(heat, np.array([3, 4, 6]), (2, 3, 10, 11), (10, 20, 20))
    assert part[6].sum() == 64 and part[7].sum() == 0  # after the last sampled frame
    key = to_clip_grid(heat[2], np.array([4]), (0, 0, 20, 20), (10, 20, 20))
    assert key[4].min() == 1 and key.sum() == 400  # 2D models: the key frame only


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny trained runs on one tiny dataset."""
    mp = pytest.MonkeyPatch()
    mp.setattr(train_mod, "build_model", tiny_model)
    root = tmp_path_factory.mktemp("ev")
    data = make_tiny_dataset(root / "data")
    a, b = root / "a", root / "b"
    train_mod.train(tiny_config(epochs=2), data, a)
    train_mod.train(tiny_config(epochs=1, seed=1), data, b)
    yield data, a, b
    mp.undo()


def test_evaluate_run_writes_documented_keys(runs):
    data, run, _ = runs
    m = evaluate_run(run)
    assert m == json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert m["threshold"] == pytest.approx(config["threshold"])
    assert m["train_seconds"] > 0
    preds = read_predictions(run / "predictions.csv")
    assert list(preds[0]) == ["case_id", "split", "centre", "label", "probability"]
    assert len(preds) == sum(r.split != "train" for r in read_manifest(data))
    for split in ("val", "internal_test", "external_test"):
        block = m[split]
        keys = {"n", "n_malignant", "auroc", "auroc_ci", "threshold", "sensitivity",
                "sensitivity_ci", "specificity", "specificity_ci", "ppv", "npv", "accuracy",
                "accuracy_ci", "counts", "brier", "centres", "localisation",
                "localisation_gradcam"}
        assert keys <= set(block), split
        rows = [p for p in preds if p["split"] == split]
        # the block's numbers are those of predictions.csv
        expect = classification_metrics([p["label"] for p in rows],
                                        [p["probability"] for p in rows], config["threshold"])
        for k in ("n", "n_malignant", "auroc", "counts", "sensitivity", "specificity"):
            assert block[k] == pytest.approx(expect[k], abs=1e-5), (split, k)
        assert set(block["centres"]) == {p["centre"] for p in rows}
        for name in ("localisation", "localisation_gradcam"):  # HiResCAM, classic Grad-CAM
            loc = block[name]["malignant"]
            assert loc["n"] == block["n_malignant"]  # every malignant tiny case has a mark
            assert 0 <= loc["energy_inside"] <= 1 and 0 < loc["energy_uniform"] < 1
    assert "localisation_attention" in m["external_test"]  # TinyNet has attention


def test_inference_matches_evaluation(runs):
    data, run, _ = runs
    if not (run / "predictions.csv").exists():
        evaluate_run(run, localisation=False)
    model, config = load_model(run)
    spec = spec_of(config)
    ds = ClipDataset(data, "external_test", spec)
    preds = {p["case_id"]: p["probability"] for p in read_predictions(run / "predictions.csv")}
    for i, r in enumerate(ds.records):
        clip, _, boxes = ds.load(i)
        assert predict(model, clip, spec, boxes=boxes) == pytest.approx(preds[r.case_id],
                                                                        abs=1e-5)
    clip, _, boxes = ds.load(0)
    h = predict_with_heatmaps(model, clip, spec, boxes=boxes)
    assert h.gradcam.shape == clip.shape and h.gradcam.dtype == np.float16
    assert len(h.attention) == 1 and h.attention[0].shape == clip.shape
    assert h.probability == pytest.approx(preds[ds.records[0].case_id], abs=1e-5)
    assert 0 <= float(h.gradcam.min()) and float(h.gradcam.max()) <= 1
    x0, y0, x1, y1 = h.crop_box
    assert not h.gradcam[:, :y0].any() and not h.gradcam[:, :, x1:].any()


def test_inference_resamples_clips_stored_at_another_size(runs):
    data, run, _ = runs
    model, config = load_model(run)
    spec = spec_of(config)
    assert spec.clip_size == (32, 32)  # the tiny dataset's stored clips
    record = read_manifest(data)[0]
    clip = np.load(data / record.clip)
    # The same sweep stored at twice the size scores as the model's own clip does ...
    big = np.repeat(np.repeat(clip, 2, axis=1), 2, axis=2)
    assert predict(model, big, spec) == pytest.approx(predict(model, clip, spec), abs=0.02)
    # ... and its heatmaps come back on its own grid.
    h = predict_with_heatmaps(model, big, spec)
    assert h.gradcam.shape == big.shape
    x0, y0, x1, y1 = h.crop_box
    assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
    with pytest.raises(DataError, match="a clip is"):
        predict(model, np.zeros((64, 64), np.uint8), spec)


def test_load_model_from_weights_and_config(runs):
    _, run, _ = runs
    config = json.loads((run / "config.json").read_text())
    a, _ = load_model(run)
    b, cfg_b = load_model((run / "checkpoint.pt", config))  # torch.load(weights_only=True)
    c, _ = load_model((run / "model.safetensors", run / "config.json"))
    assert cfg_b["threshold"] == config["threshold"]
    for k, v in a.state_dict().items():
        assert np.array_equal(v.numpy(), c.state_dict()[k].numpy())
    assert set(b.state_dict()) == set(a.state_dict())
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_model(run.parent)


def test_compare_runs_with_paired_delong(runs):
    data, a, b = runs
    result = compare([a, b])
    n_ext = sum(r.split == "external_test" for r in read_manifest(data))
    assert result["n_shared"] == n_ext
    assert [r["name"] for r in result["runs"]] == ["a", "b"]
    (t,) = result["tests"]
    assert (t["a"], t["b"], t["n"]) == ("a", "b", n_ext)
    ma = json.loads((Path(a) / "metrics.json").read_text())
    assert t["auc_a"] == pytest.approx(ma["external_test"]["auroc"], abs=1e-5)
    assert "| a |" in result["table"] and "Paired DeLong" in result["table"]


def test_flip_averaged_runs_score_a_clip_and_its_mirror_alike(tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod, "build_model", tiny_model)
    data = make_tiny_dataset(tmp_path / "data")
    run = tmp_path / "run"
    train_mod.train(tiny_config(epochs=1, flip_average=True), data, run)
    m = evaluate_run(run, localisation=False)
    model, config = load_model(run)
    spec = spec_of(config)
    assert spec.flip_average
    # the threshold frozen during training is that of the flip-averaged validation scores
    assert m["threshold"] == pytest.approx(config["threshold"])
    ds = ClipDataset(data, "external_test", spec)
    preds = {p["case_id"]: p["probability"] for p in read_predictions(run / "predictions.csv")}
    for i, r in enumerate(ds.records):
        clip, _, boxes = ds.load(i)
        p = predict(model, clip, spec, boxes=boxes)
        assert p == pytest.approx(preds[r.case_id], abs=1e-5)
        h = predict_with_heatmaps(model, clip, spec, boxes=boxes)
        assert h.probability == pytest.approx(p, abs=1e-5)
    # a prepared clip and its mirror score the same; one view alone does not
    x = torch.rand(2, 1, 6, 16, 16)
    with torch.no_grad():
        both = logits_of(model, x, True), logits_of(model, torch.flip(x, dims=[-1]), True)
        one = logits_of(model, x, False), logits_of(model, torch.flip(x, dims=[-1]), False)
    assert torch.allclose(*both, atol=1e-6) and not torch.allclose(*one, atol=1e-4)


def test_temporal_views_score_the_mean_of_interleaved_clips(tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod, "build_model", tiny_model)
    data = make_tiny_dataset(tmp_path / "data")
    run = tmp_path / "run"
    train_mod.train(tiny_config(epochs=1, temporal_views=2), data, run)
    m = evaluate_run(run)
    model, config = load_model(run)
    spec = spec_of(config)
    assert (spec.frames, spec.temporal_views) == (6, 2)
    assert m["threshold"] == pytest.approx(config["threshold"])
    ds = ClipDataset(data, "external_test", spec)
    assert ds[0]["clip"].shape[1] == 12  # evaluation samples frames x views
    x = ds[0]["clip"][None]
    with torch.no_grad():
        by_hand = (model(x[:, :, 0::2]) + model(x[:, :, 1::2])) / 2
        assert torch.allclose(logits_of(model, x, False, 2), by_hand, atol=1e-6)
        assert not torch.allclose(logits_of(model, x, False, 1), by_hand, atol=1e-4)
    # evaluation, inference and the heatmaps' probability agree
    preds = {p["case_id"]: p["probability"] for p in read_predictions(run / "predictions.csv")}
    clip, _, boxes = ds.load(0)
    p = predict(model, clip, spec, boxes=boxes)
    assert p == pytest.approx(preds[ds.records[0].case_id], abs=1e-5)
    h = predict_with_heatmaps(model, clip, spec, boxes=boxes)
    assert h.probability == pytest.approx(p, abs=1e-5) and len(h.frame_indices) == 12
    # each view is explained on its own frames: view 1's heatmap is the Grad-CAM of view 1
    _, heat, _ = input_heatmaps(model, x, views=2)
    _, heat_view1, _ = input_heatmaps(model, x[:, :, 1::2])
    assert heat.shape == (1, 12, 16, 16)
    np.testing.assert_allclose(heat[:, 1::2], heat_view1, atol=1e-6)
    # training samples `frames` frames; images and a single view pass through
    train_ds = ClipDataset(data, "train", spec, train=True)
    assert train_ds[0]["clip"].shape[1] == 6
    image = torch.rand(2, 1, 16, 16)
    assert temporal_views(image, 2) == [image] and len(temporal_views(x, 1)) == 1
    with pytest.raises(ValueError, match="do not split into 5 views"):
        temporal_views(x, 5)
    with pytest.raises(ValueError, match="temporal_views is 1 or more"):
        train_mod.make_config("small", temporal_views=0)
    assert train_mod.make_config("small", temporal_views=3).clip_spec(2).temporal_views == 1
