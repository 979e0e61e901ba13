"""ml.tirads and the TI-RADS head's targets: the ACR chart as training targets, the synthetic
generator read as TI-RADS, the head's loss, and the dataset path from an `ml synth` folder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ml import synthetic
from ml.data import (
    ClipDataset,
    ClipSpec,
    DataError,
    build_dataset_from_import_folder,
    read_manifest,
)
from ml.models import tirads_loss
from ml.synthetic import tirads_reading
from ml.tirads import FEATURES, MAX_POINTS, feature_points, tirads_targets


@pytest.mark.parametrize("reading, points", [
    ({"composition": "solid", "echogenicity": "very_hypo", "shape": "taller",
      "margin": "extrathyroidal"}, {"composition": 2, "echogenicity": 3, "shape": 3, "margin": 3}),
    ({"composition": "spongiform", "echogenicity": "anechoic", "shape": "wider",
      "margin": "smooth"}, {"composition": 0, "echogenicity": 0, "shape": 0, "margin": 0}),
    ({"composition": "mixed", "echogenicity": "hyper_iso", "margin": "ill_defined"},
     {"composition": 1, "echogenicity": 1, "shape": None, "margin": 0}),
    ({"echogenicity": "hypo", "margin": "lobulated", "shape": ""},
     {"composition": None, "echogenicity": 2, "shape": None, "margin": 2}),
    ({}, {"composition": None, "echogenicity": None, "shape": None, "margin": None}),
])
def test_feature_points_follow_the_acr_chart(reading, points):
    assert feature_points(reading) == points


def test_feature_points_name_an_unknown_option():
    with pytest.raises(ValueError, match="echogenicity option 'dark'"):
        feature_points({"echogenicity": "dark"})


@pytest.mark.parametrize("points, expected", [
    ({"composition": 2, "echogenicity": 3, "shape": 3, "margin": 3}, [1, 1, 1, 1]),
    ({"composition": 1, "echogenicity": 2, "shape": 0, "margin": 2}, [0.5, 2 / 3, 0, 2 / 3]),
    ({"composition": None, "echogenicity": 1, "shape": None, "margin": 0},
     [math.nan, 1 / 3, math.nan, 0]),
    ({}, [math.nan] * 4),
])
def test_targets_scale_points_by_the_features_maximum(points, expected):
    got = tirads_targets(points)
    assert got.dtype == np.float32 and got.shape == (len(FEATURES),)
    np.testing.assert_allclose(got, np.array(expected, np.float32), rtol=1e-6)


def test_targets_refuse_points_outside_the_chart():
    assert MAX_POINTS == (2, 3, 3, 3)
    with pytest.raises(ValueError, match="composition points 3 are outside 0-2"):
        tirads_targets({"composition": 3})


@pytest.mark.parametrize("meta, reading", [
    ({"echo": 0.2, "margin": "irregular", "taller_than_wide": True, "cystic": False,
      "n_micro": 4, "n_macro": 1, "rim": False},
     {"composition": "solid", "echogenicity": "very_hypo", "shape": "taller",
      "margin": "lobulated", "echogenic_foci": ["macro", "punctate"]}),
    ({"echo": 0.5, "margin": "lobulated", "taller_than_wide": False, "cystic": True,
      "n_micro": 0, "n_macro": 0, "rim": True},
     {"composition": "mixed", "echogenicity": "hypo", "shape": "wider",
      "margin": "lobulated", "echogenic_foci": ["rim"]}),
    ({"echo": 0.7, "margin": "smooth", "taller_than_wide": False, "cystic": False,
      "n_micro": 0, "n_macro": 0, "rim": False},
     {"composition": "solid", "echogenicity": "hyper_iso", "shape": "wider",
      "margin": "smooth", "echogenic_foci": ["none"]}),
])
def test_the_generators_features_read_as_tirads(meta, reading):
    # an irregular margin is ACR's "lobulated or irregular", not smooth
    assert tirads_reading(meta) == reading
    feature_points(tirads_reading(meta))  # every option is on the chart


def test_tirads_loss_is_bce_over_the_read_features_only():
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 2 / 3, math.nan, 0.0], [math.nan] * 4])
    loss = tirads_loss(logits, targets)
    read = ~torch.isnan(targets)
    expected = F.binary_cross_entropy_with_logits(logits[read], targets[read],
                                                  reduction="sum") / targets.numel()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert logits.grad[0, 2] == 0 and not logits.grad[1].any() and logits.grad[0, 0] != 0


def test_tirads_loss_without_readings_is_zero_and_keeps_the_graph():
    logits = torch.zeros(3, 4, requires_grad=True)
    loss = tirads_loss(logits, torch.full((3, 4), math.nan))
    assert float(loss.detach()) == 0 and loss.requires_grad
    with pytest.raises(ValueError, match="differ"):
        tirads_loss(logits, torch.zeros(3, 3))


@pytest.fixture(scope="module")
def synth_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("tirads")
    synthetic.generate(root / "synth", centres=2, nodules=3, seed=5, frames=12, progress=False)
    build_dataset_from_import_folder(root / "synth", root / "data", size=(32, 32),
                                     fractions=(0.5, 0.25, 0.25), progress=False)
    return root


def test_a_synthetic_folder_gives_every_case_its_tirads_reading(synth_dataset):
    records = read_manifest(synth_dataset / "data")
    assert records
    for r in records:
        stem = r.case_id.split("_", 1)[1]
        with np.load(synth_dataset / "synth" / "truth" / f"{stem}.npz") as z:
            meta = json.loads(str(z["meta"]))
        assert r.tirads_points == feature_points(tirads_reading(meta))
    item = ClipDataset(synth_dataset / "data", None, ClipSpec(frames=4, size=(16, 16)))[0]
    np.testing.assert_allclose(item["tirads"].numpy(), tirads_targets(records[0].tirads_points))
    assert not torch.isnan(item["tirads"]).any()


def test_a_manifest_with_points_off_the_chart_is_refused(synth_dataset):
    manifest = synth_dataset / "data" / "manifest.csv"
    text = manifest.read_text()
    header, first, *rest = text.splitlines()
    cells = first.split(",")
    cells[header.split(",").index("tirads_composition")] = "3"
    bad = synth_dataset / "bad"
    bad.mkdir()
    (bad / "manifest.csv").write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    with pytest.raises(DataError, match=r"manifest.csv:2: tirads_composition '3' is not "
                                        r"TI-RADS points 0-2"):
        read_manifest(bad)
