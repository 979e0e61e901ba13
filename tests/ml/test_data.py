"""ml.data: manifests, patient-level splits, sampling, ROI crop, augmentation, sampler."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.data import (
    AugmentSpec,
    BalancedSampler,
    CaseRecord,
    ClipDataset,
    ClipSpec,
    DataError,
    key_frame_index,
    leave_one_centre_out,
    nodule_frames,
    patient_level_split,
    prepare_clip,
    read_manifest,
    resize_mask,
    roi_crop_box,
    sample_frame_indices,
    truth_to_clip,
    write_loco_manifests,
    write_manifest,
)

# --------------------------------------------------------------------------------------------
# A tiny dataset directory, shared by the train, evaluate and CLI tests.

TINY_SPLITS = (
    # (split, centre, n_benign, n_malignant)
    ("train", "A", 2, 2), ("train", "B", 2, 2),
    ("val", "A", 1, 1), ("val", "B", 1, 1),
    ("internal_test", "A", 1, 1),
    ("external_test", "C", 2, 2),
)


def make_tiny_dataset(root: Path, frames: int = 12, side: int = 32, seed: int = 0) -> Path:
    """16 cases of (frames, side, side) clips: a grey nodule in speckle; malignant nodules hold
    a bright 2x2 focus in a few frames, marked in the mask (code 1). Every case has boxes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("clips", "masks", "boxes"):
        (root / sub).mkdir(exist_ok=True)
    records, n = [], 0
    for split, centre, n_benign, n_malig in TINY_SPLITS:
        for label in [0] * n_benign + [1] * n_malig:
            case = f"{centre}{n:02d}"
            clip = rng.integers(20, 60, (frames, side, side)).astype(np.uint8)
            cx, cy, r = rng.integers(12, 20), rng.integers(12, 20), 7
            boxes = np.full((frames, 4), np.nan, np.float32)
            mask = np.zeros(clip.shape, np.uint8)
            for t in range(1, frames - 1):
                clip[t, cy - r : cy + r, cx - r : cx + r] = 90
                boxes[t] = (cx - r, cy - r, cx + r, cy + r)
            if label:
                fy, fx = cy + rng.integers(-3, 2), cx + rng.integers(-3, 2)
                clip[3:9, fy : fy + 2, fx : fx + 2] = 250
                mask[3:9, fy : fy + 2, fx : fx + 2] = 1
            np.save(root / f"clips/{case}.npy", clip)
            np.save(root / f"masks/{case}.npy", mask)
            np.save(root / f"boxes/{case}.npy", boxes)
            records.append(CaseRecord(case, f"p{n // 2}{centre}", centre, split, label,
                                      f"clips/{case}.npy", f"masks/{case}.npy",
                                      f"boxes/{case}.npy"))
            n += 1
    write_manifest(root / "manifest.csv", records)
    return root


@pytest.fixture
def tiny(tmp_path) -> Path:
    return make_tiny_dataset(tmp_path / "data")


# --------------------------------------------------------------------------------------------
# Splits


def _records(n_centres=4, patients=12, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for c in range(n_centres):
        for p in range(patients):
            for k in range(int(rng.integers(1, 4))):  # 1-3 nodules per patient
                out.append({"case_id": f"c{c}p{p}n{k}", "patient": f"p{p}", "centre": f"c{c}",
                            "label": int(rng.random() < 0.4)})
    return out


def test_split_keeps_patients_together_and_centres_external():
    records = _records()
    split = patient_level_split(records, external_centres=["c3"], seed=1)
    assert set(split) == {r["case_id"] for r in records}
    by_patient = {}
    for r in records:
        by_patient.setdefault((r["centre"], r["patient"]), set()).add(split[r["case_id"]])
    assert all(len(s) == 1 for s in by_patient.values())
    for r in records:
        assert (split[r["case_id"]] == "external_test") == (r["centre"] == "c3")
    # patient "p0" exists in every centre: they are different people, split independently
    assert {split[r["case_id"]] for r in records if r["patient"] == "p0"} != {"external_test"}


def test_split_proportions_and_stratification():
    records = _records(n_centres=5, patients=40, seed=2)
    split = patient_level_split(records, fractions=(0.7, 0.1, 0.1), seed=0)
    n = Counter(split.values())
    total = len(records)
    assert abs(n["train"] / total - 7 / 9) < 0.03
    assert abs(n["val"] / total - 1 / 9) < 0.03
    assert abs(n["internal_test"] / total - 1 / 9) < 0.03
    overall = np.mean([r["label"] for r in records])
    for s in ("train", "val", "internal_test"):
        rate = np.mean([r["label"] for r in records if split[r["case_id"]] == s])
        assert abs(rate - overall) < 0.08, (s, rate, overall)


def test_split_is_deterministic_per_seed():
    records = _records()
    a = patient_level_split(records, seed=3)
    assert a == patient_level_split(list(reversed(records)), seed=3)
    assert a != patient_level_split(records, seed=4)


def test_split_rejects_duplicate_case_ids():
    r = {"case_id": "x", "patient": "p", "centre": "c", "label": 0}
    with pytest.raises(ValueError, match="duplicate"):
        patient_level_split([r, dict(r)])


def test_leave_one_centre_out_and_fold_manifests(tiny):
    records = read_manifest(tiny)
    folds = leave_one_centre_out(records)
    assert set(folds) == {"A", "B", "C"}
    for centre, split in folds.items():
        ext = {r.case_id for r in records if split[r.case_id] == "external_test"}
        assert ext == {r.case_id for r in records if r.centre == centre}
    paths = write_loco_manifests(tiny)
    assert [p.name for p in paths] == ["loco_A.csv", "loco_B.csv", "loco_C.csv"]
    ds = ClipDataset(tiny, "external_test", ClipSpec(frames=4, size=(16, 16)),
                     manifest="folds/loco_A.csv")
    assert {r.centre for r in ds.records} == {"A"}
    assert ds[0]["clip"].shape == (1, 4, 16, 16)  # clip paths resolve from the fold folder


def test_manifest_errors_are_readable(tmp_path):
    with pytest.raises(DataError, match="not a dataset directory"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_text("case_id,patient,centre,split,label,clip\n"
                                           "a,p,c,training,1,clips/a.npy\n")
    with pytest.raises(DataError, match="split 'training'"):
        read_manifest(tmp_path)


# --------------------------------------------------------------------------------------------
# Frames, key frames, crops


def test_sample_frame_indices_uniform_and_jittered():
    assert sample_frame_indices(9, 5).tolist() == [0, 2, 4, 6, 8]
    assert sample_frame_indices(3, 5).tolist() == [0, 0, 1, 2, 2]  # short sweeps repeat frames
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = sample_frame_indices(100, 16, train=True, rng=rng)
        assert len(idx) == 16 and (np.diff(idx) > 0).all() and 0 <= idx[0] and idx[-1] < 100
        assert idx[-1] - idx[0] >= 60  # spans most of the sweep
    runs = {tuple(sample_frame_indices(100, 8, True, np.random.default_rng(s))) for s in range(5)}
    assert len(runs) == 5


def test_frames_are_sampled_where_the_nodule_shows():
    boxes = np.full((100, 4), np.nan, np.float32)
    boxes[30:70] = (10, 10, 20, 20)
    assert nodule_frames(boxes, 100) == (26, 73)  # 40 frames, widened by 4 on each side
    assert nodule_frames(None, 100) == (0, 99)
    assert sample_frame_indices(100, 5, window=(26, 73)).tolist() == [26, 38, 50, 61, 73]
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = sample_frame_indices(100, 8, True, rng, window=(26, 73))
        assert idx.min() >= 26 and idx.max() <= 73
    clip = np.zeros((100, 32, 32), np.uint8)
    out = prepare_clip(clip, ClipSpec(frames=5, size=(16, 16)), boxes=boxes)
    assert out["frame_indices"].tolist() == [26, 38, 50, 61, 73]
    whole = prepare_clip(clip, ClipSpec(frames=5, size=(16, 16), roi=False), boxes=boxes)
    assert whole["frame_indices"].tolist() == [0, 25, 50, 74, 99]


def test_key_frame_index():
    boxes = np.full((7, 4), np.nan, np.float32)
    boxes[2] = (0, 0, 10, 10)
    boxes[4] = (5, 5, 20, 25)  # largest
    boxes[5] = (0, 0, 12, 12)
    assert key_frame_index(boxes) == 4
    assert key_frame_index(np.full((7, 4), np.nan)) == 3
    assert key_frame_index(None, n_frames=10) == 4


def test_roi_crop_box_is_square_inside_and_adds_margin():
    boxes = np.array([[40, 50, 60, 60], [np.nan] * 4, [45, 45, 70, 58]], np.float32)
    x0, y0, x1, y1 = roi_crop_box(boxes, (128, 128), margin=0.25)
    assert x1 - x0 == y1 - y0 == 45  # union 30 x 15 -> side 30 x 1.5
    assert x0 <= 40 and x1 >= 70 and y0 <= 45 and y1 >= 60
    # near the edge the square is shifted inside, never cut
    x0, y0, x1, y1 = roi_crop_box(np.array([[0, 0, 20, 20]]), (128, 128), margin=0.5)
    assert (x0, y0, x1 - x0) == (0, 0, 40)
    assert roi_crop_box(None, (30, 40), 0.25) == (0, 0, 40, 30)


@pytest.mark.parametrize("box, expected", [
    ((40, 40, 60, 60), (18, 18, 82, 82)),  # small nodule: 64 px around its centre
    ((20, 30, 110, 90), (33, 28, 97, 92)),  # large nodule: the same 64 px, its edges cut
    ((0, 0, 10, 10), (0, 0, 64, 64)),  # at the corner: shifted inside, never cut
])
def test_roi_crop_box_with_a_fixed_side_ignores_the_nodule_size(box, expected):
    assert roi_crop_box(np.array([box], np.float32), (128, 128), 0.25,
                        fixed_side=64) == expected


@pytest.mark.parametrize("box, jitter, expected", [
    ((40, 40, 60, 60), None, (35, 35, 65, 65)),  # small nodule: 1.5 x its side, under the cap
    ((20, 30, 110, 90), None, (33, 28, 97, 92)),  # large nodule: 64 px, not 135
    ((40, 40, 60, 60), (3.0, 0.0, 0.0), (18, 18, 82, 82)),  # the cap holds after the jitter
    ((20, 30, 110, 90), (0.5, 0.0, 0.0), (33, 28, 97, 92)),  # 67 px jittered: capped at 64
])
def test_roi_crop_box_caps_the_side_of_a_large_nodule_crop(box, jitter, expected):
    assert roi_crop_box(np.array([box], np.float32), (128, 128), 0.25, jitter=jitter,
                        max_side=64) == expected


def test_roi_crop_box_cap_leaves_a_crop_without_boxes_whole():
    assert roi_crop_box(None, (30, 40), 0.25, max_side=16) == (0, 0, 40, 30)


def test_resize_mask_keeps_one_pixel_foci_and_prefers_punctate():
    m = np.zeros((1, 128, 128), np.uint8)
    m[0, 37, 91] = 1  # a single-pixel punctate focus
    m[0, 100:110, 10:30] = 4  # comet-tail artefact
    m[0, 101, 12] = 1
    out = resize_mask(m, (32, 32))
    assert out[0, 37 * 32 // 128, 91 * 32 // 128] == 1
    assert out[0, 101 * 32 // 128, 12 * 32 // 128] == 1  # punctate wins over comet-tail
    assert (out == 4).sum() > 5
    up = resize_mask(m, (256, 256))
    assert (up == 1).sum() == 8  # growing repeats pixels: 2 foci x 2 x 2


def test_truth_to_clip_follows_region_crop_and_resize():
    mask = np.zeros((5, 240, 320), np.uint8)
    mask[:, 100, 200] = 1
    boxes = np.tile(np.array([[180, 90, 220, 130]], np.float32), (5, 1))
    boxes[0] = np.nan
    m, b = truth_to_clip(mask, boxes, (40, 20, 200, 200), (100, 100), n_frames=4)
    assert m.shape == (4, 100, 100) and b.shape == (4, 4)
    ys, xs = np.nonzero(m[1])
    assert ys.tolist() == [40] and xs.tolist() == [80]  # (100-20)/2, (200-40)/2
    assert np.isnan(b[0]).all()
    np.testing.assert_allclose(b[1], [70, 35, 90, 55])


# --------------------------------------------------------------------------------------------
# prepare_clip and ClipDataset


def _marker_clip(t=10, h=48, w=64):
    clip = np.full((t, h, w), 30, np.uint8)
    mask = np.zeros((t, h, w), np.uint8)
    for k in range(t):  # a bright 3x3 block that moves with time
        y, x = 12 + k, 20 + 2 * k
        clip[k, y : y + 3, x : x + 3] = 255
        mask[k, y : y + 3, x : x + 3] = 1
    boxes = np.tile(np.array([[10, 5, 50, 40]], np.float32), (t, 1))
    return clip, mask, boxes


@pytest.mark.parametrize("seed", range(8))
def test_mask_follows_clip_through_training_augmentation(seed):
    clip, mask, boxes = _marker_clip()
    aug = AugmentSpec(gamma=(1, 1), contrast=(1, 1), brightness=0, speckle=0)
    out = prepare_clip(clip, ClipSpec(frames=6, size=(32, 32), normalise=False), boxes=boxes,
                       mask=mask, train=True, augment=aug, rng=np.random.default_rng(seed))
    x, m = out["clip"][0], out["mask"]
    assert x.shape == (6, 32, 32) and m.shape == (6, 32, 32) and x.dtype == np.float32
    for k in range(6):
        assert m[k].any(), "the focus survived the resize and warp"
        y, xx = np.unravel_index(np.argmax(x[k]), x[k].shape)
        assert m[k, y, xx] == 1, f"frame {k}: brightest clip pixel is outside the mask"
        # and the mask's centre sits on bright pixels
        cy, cx = np.argwhere(m[k]).mean(0).round().astype(int)
        assert x[k, cy, cx] > 0.2  # background is 30 / 255 = 0.12
        assert (m[k] > 0).sum() <= 16  # a 3 x 3 block at scale ~2/3, not smeared


def _scanner_augmented(seed: int, **options) -> np.ndarray:
    """A speckle clip through training augmentation with every other step neutral."""
    speckle = np.random.default_rng(99).integers(60, 200, (8, 48, 48), dtype=np.uint8)
    aug = AugmentSpec(time_reverse=0, hflip=0, crop_scale=(1, 1), crop_shift=0, rotate_deg=0,
                      gamma=(1, 1), contrast=(1, 1), brightness=0, speckle=0, **options)
    return prepare_clip(speckle, ClipSpec(frames=8, size=(48, 48), roi=False, normalise=False),
                        train=True, augment=aug, rng=np.random.default_rng(seed))["clip"][0]


def _roughness(x: np.ndarray) -> float:
    return float(np.abs(np.diff(x, axis=-1)).mean())


def test_resolution_augmentation_blurs_or_sharpens_the_speckle():
    plain = _roughness(_scanner_augmented(0))
    rough = [_roughness(_scanner_augmented(seed, resolution=1.5)) for seed in range(12)]
    assert min(rough) < 0.8 * plain and max(rough) > 1.2 * plain  # both directions occur


def test_depth_gain_augmentation_adds_a_ramp_from_top_to_bottom():
    slopes = []
    for seed in range(12):
        x = _scanner_augmented(seed, depth_gain=0.3)
        diff = (x - _scanner_augmented(seed)).mean(axis=(0, 2))  # per row
        assert np.allclose(np.diff(diff[4:-4]), np.diff(diff[4:-4]).mean(), atol=1e-3)
        slopes.append(diff[-1] - diff[0])
    assert min(slopes) < -0.1 and max(slopes) > 0.1 and max(map(abs, slopes)) <= 0.3 + 1e-6


def test_prepare_clip_eval_is_deterministic_and_uses_the_roi():
    clip, mask, boxes = _marker_clip()
    spec = ClipSpec(frames=5, size=(20, 20), roi_margin=0.0)
    a = prepare_clip(clip, spec, boxes=boxes, mask=mask)
    b = prepare_clip(clip, spec, boxes=boxes, mask=mask)
    np.testing.assert_array_equal(a["clip"], b["clip"])
    assert a["frame_indices"].tolist() == [0, 2, 4, 7, 9]  # uniform over the sweep
    assert a["crop_box"] == (10, 2, 50, 42)  # the 40 x 35 box squared to its larger side
    full = prepare_clip(clip, ClipSpec(frames=5, size=(20, 20), roi=False), boxes=boxes)
    assert full["crop_box"] == (0, 0, 64, 48)
    assert a["clip"].min() >= 0 and a["clip"].max() <= 1


def test_normalisation_removes_gain_and_offset():
    rng = np.random.default_rng(0)
    base = rng.normal(100, 20, (8, 48, 48)).clip(0, 255)
    base[:, 20:24, 20:24] = 40  # a dark nodule
    base[:, 22, 22] = 230  # a bright focus
    spec = ClipSpec(frames=8, size=(48, 48))
    a = prepare_clip(base.astype(np.uint8), spec)["clip"]
    b = prepare_clip((base * 0.7 + 30).astype(np.uint8), spec)["clip"]  # another scanner
    assert np.abs(a - b).mean() < 0.01
    assert np.median(a) == pytest.approx(0.4, abs=0.01)
    assert a[0, 0, 22, 22] > 0.8 and a[0, 0, 21, 21] < 0.2
    raw = prepare_clip(base.astype(np.uint8), ClipSpec(frames=8, size=(48, 48), normalise=False))
    assert raw["clip"].max() == pytest.approx(230 / 255, abs=0.01)


def test_prepare_clip_2d_takes_the_key_frame():
    clip, mask, boxes = _marker_clip()
    boxes[6] = (5, 5, 60, 45)
    out = prepare_clip(clip, ClipSpec(frames=1, size=(24, 24), spatial_dims=2), boxes=boxes,
                       mask=mask)
    assert out["clip"].shape == (1, 24, 24) and out["mask"].shape == (24, 24)
    assert out["frame_indices"].tolist() == [6]


@pytest.mark.parametrize("spatial_dims, frames", [(3, 5), (2, 1)])
def test_context_channel_is_the_whole_nodule_beside_the_capped_crop(spatial_dims, frames):
    clip, mask, boxes = _marker_clip()  # a 40 x 35 nodule box: crops of 40 (margin 0)
    kw = dict(frames=frames, size=(20, 20), roi_margin=0.0, spatial_dims=spatial_dims)
    capped = prepare_clip(clip, ClipSpec(roi_max_side=24, **kw), boxes=boxes, mask=mask)
    whole = prepare_clip(clip, ClipSpec(**kw), boxes=boxes, mask=mask)
    both = prepare_clip(clip, ClipSpec(roi_max_side=24, context_channel=True, **kw),
                        boxes=boxes, mask=mask)
    assert ClipSpec(context_channel=True).channels == 2 and ClipSpec().channels == 1
    assert both["clip"].shape == (2, *capped["clip"].shape[1:])
    np.testing.assert_array_equal(both["clip"][0], capped["clip"][0])
    np.testing.assert_array_equal(both["clip"][1], whole["clip"][0])
    # heatmaps and masks stay on the capped crop
    assert both["crop_box"] == capped["crop_box"] != whole["crop_box"]
    np.testing.assert_array_equal(both["mask"], capped["mask"])


def test_context_channel_gets_the_same_flip_and_rotation_in_training():
    clip, mask, boxes = _marker_clip()
    aug = AugmentSpec(gamma=(1, 1), contrast=(1, 1), brightness=0, speckle=0, crop_scale=(1, 1),
                      crop_shift=0)
    spec = ClipSpec(frames=6, size=(32, 32), normalise=False, context_channel=True)
    for seed in range(6):  # no cap: both channels are the same crop, so they must match
        x = prepare_clip(clip, spec, boxes=boxes, mask=mask, train=True, augment=aug,
                         rng=np.random.default_rng(seed))["clip"]
        np.testing.assert_allclose(x[0], x[1], atol=1e-6)


def test_prepare_clip_rejects_misaligned_inputs():
    clip, mask, boxes = _marker_clip()
    with pytest.raises(DataError, match="does not match"):
        prepare_clip(clip, ClipSpec(), mask=mask[:-1])
    with pytest.raises(DataError, match="boxes have"):
        prepare_clip(clip, ClipSpec(), boxes=boxes[:-1])


def test_clip_dataset_items(tiny):
    spec = ClipSpec(frames=6, size=(16, 16))
    ds = ClipDataset(tiny, "train", spec, train=True, seed=0)
    assert len(ds) == 8 and sorted(ds.labels) == [0] * 4 + [1] * 4
    item = ds[(0, 0, 0)]
    assert item["clip"].shape == (1, 6, 16, 16) and item["clip"].dtype == torch.float32
    assert item["mask"].shape == (6, 16, 16) and item["mask"].dtype == torch.uint8
    assert bool(item["has_mask"]) and item["label"].dtype == torch.int64
    # an item's augmentation depends on (seed, epoch, index, draw) only
    assert torch.equal(ds[(0, 0, 0)]["clip"], item["clip"])
    assert not torch.equal(ds[(0, 1, 0)]["clip"], item["clip"])
    assert not torch.equal(ds[(0, 0, 1)]["clip"], item["clip"])
    # malignant clips' masks mark the focus
    malignant = [i for i, y in enumerate(ds.labels) if y == 1]
    ev = ClipDataset(tiny, "train", spec)
    assert all(ev[i]["mask"].any() for i in malignant)
    ds2 = ClipDataset(tiny, ["val", "internal_test"], ClipSpec(frames=1, size=(16, 16),
                                                                spatial_dims=2))
    assert len(ds2) == 6 and ds2[0]["clip"].shape == (1, 16, 16)


def test_clip_dataset_without_masks(tiny):
    rows = list(csv.DictReader((tiny / "manifest.csv").open()))
    for r in rows:
        r["mask"] = r["boxes"] = ""
    with (tiny / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    item = ClipDataset(tiny, "val", ClipSpec(frames=4, size=(16, 16)))[0]
    assert not bool(item["has_mask"]) and not item["mask"].any()


def test_balanced_sampler_balances_and_shards():
    labels = [0] * 90 + [1] * 10
    s = BalancedSampler(labels, num_samples=2000, seed=0)
    drawn = [labels[i] for i, _, _ in s]
    assert abs(np.mean(drawn) - 0.5) < 0.05
    first = list(s)
    assert list(s) == first  # deterministic per epoch
    s.set_epoch(1)
    assert list(s) != first and all(e == 1 for _, e, _ in s)
    ranks = [list(BalancedSampler(labels, 100, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 50
    assert {d for _, _, d in ranks[0]}.isdisjoint({d for _, _, d in ranks[1]})
