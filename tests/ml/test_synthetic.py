"""ml.synthetic: the synthetic multi-centre sweeps stand in for a real data set, so they must
be deterministic, carry ground truth that matches their pixels, hide microcalcifications
from single frames, and look different per centre without hiding the image region."""

import csv
import json
from collections import Counter

import cv2
import numpy as np
import pytest

from ml import synthetic, video
from ml.synthetic import COMET, MACRO, MICRO, RIM
from ml.video import Region

CENTRES = range(len(synthetic.CENTRE_STYLES))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny import folder: 2 centres x 3 nodules of 12-frame sweeps."""
    out = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(out, centres=2, nodules=3, seed=5, frames=12, progress=False)
    return out


@pytest.fixture(scope="module")
def malignant_cases():
    return [synthetic.generate_one(seed, seed % 6, label=1, frames=36) for seed in range(8)]


def test_generate_one_is_deterministic():
    a = synthetic.generate_one(11, 2, frames=16)
    b = synthetic.generate_one(11, 2, frames=16)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    c = synthetic.generate_one(12, 2, frames=16)
    assert not np.array_equal(a.frames, c.frames)


def test_generate_is_deterministic_to_the_byte(folder, tmp_path):
    synthetic.generate(tmp_path, centres=2, nodules=3, seed=5, frames=12, progress=False)
    assert (tmp_path / "manifest.csv").read_text() == (folder / "manifest.csv").read_text()
    rows = list(csv.DictReader((folder / "manifest.csv").open()))
    first = rows[0]["video"]
    assert (tmp_path / first).read_bytes() == (folder / first).read_bytes()
    again = next(video.iter_frames(tmp_path / rows[-1]["video"]))
    np.testing.assert_array_equal(again, next(video.iter_frames(folder / rows[-1]["video"])))


def test_manifest_is_an_import_folder(folder):
    with (folder / "manifest.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == synthetic.MANIFEST_COLUMNS
        rows = list(reader)
    assert len(rows) == 6 and {r["centre"] for r in rows} == {"C1", "C2"}
    for r in rows:
        assert r["video"] == f"videos/{r['centre']}/{r['patient']}_{r['nodule']}.mp4"
        assert r["patient"].startswith(r["centre"] + "-P") and r["scan_plane"] == "sweep"
        info = video.probe_video(folder / r["video"])
        assert (info.container, info.frame_count) == ("mp4", 12)
        style = synthetic.centre_style(int(r["centre"][1:]) - 1)
        assert (info.height, info.width) == style.frame_size and info.fps == style.fps
        with np.load(folder / "truth" / f"{r['patient']}_{r['nodule']}.npz") as z:
            assert z["mask"].shape == (12, info.height, info.width)
            assert z["mask"].dtype == np.uint8 and z["mask"].max() <= COMET
            assert z["boxes"].shape == (12, 4) and z["boxes"].dtype == np.float32
            assert tuple(z["region"]) == style.region
            meta = json.loads(str(z["meta"]))
            assert meta["outcome"] == r["outcome"] and meta["centre"] == r["centre"]
    report = json.loads((folder / "synthetic.json").read_text())
    assert report["seed"] == 5 and sum(report["outcomes"].values()) == 6


def test_plan_matches_the_study():
    plans = synthetic.plan_cases()  # the defaults: 6 centres x 60 nodules
    assert len(plans) == 360 and len({p.stem for p in plans}) == 360
    per_patient = Counter(p.patient for p in plans)
    assert set(per_patient.values()) <= {1, 2, 3}
    assert 1.6 <= len(plans) / len(per_patient) <= 2.0  # ~1.8 nodules per patient
    labelled = [p for p in plans if p.outcome != "indeterminate"]
    assert 0.40 <= np.mean([p.outcome == "malignant" for p in labelled]) <= 0.50
    assert 0 < sum(p.outcome == "indeterminate" for p in plans) < 0.06 * len(plans)
    for p in plans:  # the reference standard of DOMAIN.md
        if p.outcome == "malignant":
            assert p.label == 1
            assert p.diagnosis in ("papillary_carcinoma", "iefvptc")
            assert p.pathology_source == "surgery" or p.bethesda == "VI"
        elif p.outcome == "benign":
            assert p.label == 0
            assert p.diagnosis in ("follicular_nodular_disease", "follicular_adenoma",
                                   "oncocytic_adenoma")
            assert p.pathology_source == "surgery" or p.bethesda == "II"
        else:
            assert p.pathology_source == "fna" and p.bethesda in ("I", "III", "IV")
            assert p.diagnosis == ""


def test_masks_align_with_bright_pixels(malignant_cases):
    benign = [synthetic.generate_one(100 + s, s % 6, label=0, frames=24) for s in range(6)]
    seen = Counter()
    for case in malignant_cases + benign:
        gray = case.frames[..., 1]  # green: the gray image under any centre's tint
        for code in (MICRO, MACRO, RIM, COMET):
            on = case.mask == code
            if not on.any():
                continue
            seen[code] += 1
            frames = np.flatnonzero(on.any(axis=(1, 2)))
            # the nodule's own echo in the same frames, calcifications excluded
            box = case.boxes[frames[len(frames) // 2]].astype(int)
            t = frames[len(frames) // 2]
            nodule = gray[t, box[1] : box[3], box[0] : box[2]]
            nodule = nodule[case.mask[t, box[1] : box[3], box[0] : box[2]] == 0]
            assert np.median(gray[on]) > int(np.median(nodule)) + 40, case.spec.features()
    assert seen[MICRO] >= 5 and seen[MACRO] + seen[RIM] + seen[COMET] >= 3


def test_boxes_enclose_the_nodule(malignant_cases):
    for case in malignant_cases:
        present = ~np.isnan(case.boxes[:, 0])
        assert 0.4 < present.mean() < 0.95  # the sweep starts and ends outside the nodule
        assert present[len(case.boxes) // 2]
        x, y, w, h = case.region.as_tuple()
        b = case.boxes[present]
        assert (b[:, 0] >= x).all() and (b[:, 2] <= x + w).all() and (b[:, 1] >= y).all()
        foci = np.argwhere(case.mask == MICRO)  # every focus lies inside the nodule's box
        for t, yy, xx in foci:
            x0, y0, x1, y1 = case.boxes[t]
            assert x0 - 2 <= xx <= x1 + 2 and y0 - 2 <= yy <= y1 + 2


def test_microcalcifications_show_in_few_frames(malignant_cases):
    # one focus alone: a few frames of the sweep
    style, patient = synthetic.centre_style(0), synthetic.sample_patient(np.random.default_rng(0))
    for seed in range(3):
        rng = np.random.default_rng(seed)
        spec = synthetic.sample_nodule(rng, 1, style, frames=36)
        focus = synthetic.Calcification(MICRO, spec.centre[0] + 2, *spec.centre[1:], size=0.6,
                                        depth=0.9, amplitude=12.0)
        spec.calcs = [focus]
        _, mask, _ = synthetic.render_sweep(spec, style, patient, rng)
        assert 1 <= (mask == MICRO).any(axis=(1, 2)).sum() <= 4
        assert (mask == MICRO).sum(axis=(1, 2)).max() <= 5  # <= 2 px across
    # all foci of a nodule together: still a minority of the frames through it
    with_foci = [c for c in malignant_cases if (c.mask == MICRO).any()]
    assert len(with_foci) >= 5
    missed_by_middle, union = 0, []
    for case in with_foci:
        on = (case.mask == MICRO).any(axis=(1, 2))
        union.append(on.sum() / (~np.isnan(case.boxes[:, 0])).sum())
        missed_by_middle += not on[len(on) // 2]
    assert np.mean(union) < 0.5
    # sampled without rendering: the middle frame misses every focus in many sweeps
    rng = np.random.default_rng(0)
    misses = []
    for _ in range(300):
        spec = synthetic.sample_nodule(rng, 1, synthetic.centre_style(0), frames=48)
        foci = [c for c in spec.calcs if c.kind == MICRO]
        if foci:
            misses.append(all(abs(24 - c.t) > 1.6 * c.depth for c in foci))
    assert 0.3 < np.mean(misses) < 0.8
    assert missed_by_middle >= 1


def test_features_overlap_between_classes():
    rng = np.random.default_rng(1)
    feats = {0: Counter(), 1: Counter()}
    for label in (0, 1):
        for _ in range(400):
            spec = synthetic.sample_nodule(rng, label, synthetic.centre_style(0), frames=40)
            f = spec.features()
            feats[label]["micro"] += f["n_micro"] > 0
            feats[label]["macro"] += f["n_macro"] > 0
            feats[label]["comet"] += f["n_comet"] > 0
            feats[label]["irregular"] += f["margin"] == "irregular"
    b, m = feats[0], feats[1]
    assert m["micro"] > 3 * b["micro"] > 0  # punctate foci: the strongest sign, not perfect
    assert m["micro"] < 400 * 0.9
    assert b["macro"] > m["macro"] > 0 and b["comet"] > m["comet"]
    assert m["irregular"] > b["irregular"] > 0


@pytest.mark.parametrize("centre", CENTRES)
def test_overlay_outside_the_region_which_is_recovered(tmp_path, centre):
    case = synthetic.generate_one(centre, centre, frames=24)
    x, y, w, h = case.region.as_tuple()
    assert not case.overlay[y : y + h, x : x + w].any()
    assert case.overlay.sum() > 300  # burned-in text is really there
    outside = np.ones(case.overlay.shape, bool)
    outside[y : y + h, x : x + w] = False
    static = outside & ~case.overlay
    assert (case.frames[:, static] == case.frames[0, static]).all()  # nothing else moves
    path = tmp_path / "sweep.mp4"
    synthetic.write_video(path, case.frames, case.fps)
    clip, found = video.video_to_clip(path, size=(64, 64))
    assert found.iou(case.region) > 0.9, (found, case.region)
    assert clip.shape == (24, 64, 64)
    assert video.find_ultrasound_region(case.frames).iou(case.region) > 0.9


def test_centres_differ(tmp_path):
    # the same nodule seen by two scanners: a domain shift, not just new noise
    looks = []
    for centre in (0, 5):
        case = synthetic.generate_one(3, centre, label=1, frames=12)
        x, y, w, h = case.region.as_tuple()
        img = case.frames[:, y : y + h, x : x + w]
        gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in img])
        looks.append((case.frames.shape[1:3], gray.mean(), gray.std(),
                      img[..., 2].mean() - img[..., 0].mean()))
    (size_a, mean_a, _, tint_a), (size_b, mean_b, _, tint_b) = looks
    assert size_a != size_b and abs(mean_a - mean_b) > 5 and abs(tint_a - tint_b) > 5


def test_region_dataclass_round_trips(folder):
    row = next(csv.DictReader((folder / "manifest.csv").open()))
    with np.load(folder / "truth" / f"{row['patient']}_{row['nodule']}.npz") as z:
        region = Region(*(int(v) for v in z["region"]))
    clip, found = video.video_to_clip(folder / row["video"], min_frames=8)
    assert found.iou(region) > 0.9
