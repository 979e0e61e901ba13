"""`python -m ml`: every subcommand end to end on tiny data."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import ml.train as train_mod
from ml.cli import main
from ml.data import read_manifest
from tests.ml.test_train import tiny_model

ROOT = Path(__file__).resolve().parents[2]


def write_import_folder(root: Path, per_centre=(("A", 9), ("B", 9), ("C", 4))) -> Path:
    """Tiny mp4 sweeps in the import_cases format: a speckled image region inside a black
    frame, a nodule, and in malignant cases a bright focus; ground truth in truth/*.npz."""
    rng = np.random.default_rng(0)
    (root / "truth").mkdir(parents=True)
    rows = []
    for centre, n in per_centre:
        (root / "videos" / centre).mkdir(parents=True)
        for k in range(n):
            label = k % 2
            frames = np.zeros((12, 72, 96, 3), np.uint8)
            mask = np.zeros((12, 72, 96), np.uint8)
            boxes = np.full((12, 4), np.nan, np.float32)
            region = (16, 8, 64, 56)  # x, y, w, h
            for t in range(12):
                img = rng.integers(40, 110, (56, 64)).astype(np.uint8)
                img[20:36, 24:40] = 60
                if label and 3 <= t <= 8:
                    img[27:29, 31:33] = 255
                    mask[t, 8 + 27 : 8 + 29, 16 + 31 : 16 + 33] = 1
                frames[t, 8:64, 16:80] = img[..., None]
                boxes[t] = (16 + 24, 8 + 20, 16 + 40, 8 + 36)
            stem = f"{centre}-P{k:02d}_N1"
            rel = f"videos/{centre}/{stem}.mp4"
            w = cv2.VideoWriter(str(root / rel), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 72))
            for f in frames:
                w.write(f)
            w.release()
            np.savez_compressed(root / "truth" / f"{stem}.npz", mask=mask, boxes=boxes,
                                region=np.array(region))
            rows.append({"centre": centre, "patient": f"{centre}-P{k:02d}", "nodule": "N1",
                         "video": rel, "scan_plane": "transverse",
                         "outcome": "malignant" if label else "benign", "diagnosis": "",
                         "pathology_source": "cytology", "bethesda": "VI" if label else "II"})
    rows.append({**rows[0], "patient": "A-P99", "video": "videos/A/A-P99_N1.mp4",
                 "outcome": "indeterminate"})
    (root / "videos/A/broken.mp4").write_text("not a video")
    rows.append({**rows[0], "patient": "A-P98", "video": "videos/A/broken.mp4"})
    with (root / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setattr(train_mod, "build_model", tiny_model)
    yield tmp_path_factory.mktemp("cli")
    mp.undo()


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().out


def test_dataset_train_evaluate_compare_gradcam_stats(workspace, capsys):
    src = write_import_folder(workspace / "import")
    data = workspace / "data"
    code, out = run_cli(capsys, "dataset", "--from-synth", src, "--out", data, "--external",
                        "C", "--size", 48, "--loco")
    assert code == 0
    report = json.loads(out)
    reasons = {Path(e["video"]).name: e["reason"] for e in report["excluded"]}
    assert reasons["A-P99_N1.mp4"] == "outcome 'indeterminate'"
    assert "broken.mp4" in reasons
    assert report["counts"]["external_test"] == {"n": 4, "malignant": 2, "benign": 2}
    assert len(report["loco_manifests"]) == 3
    records = read_manifest(data)
    assert len(records) == 22 and all(r.mask and r.boxes for r in records)
    clip = np.load(data / records[0].clip)
    assert clip.shape == (12, 48, 48) and clip.dtype == np.uint8
    # the mask followed the crop to the region and the resize: it sits on the bright focus
    malignant = next(r for r in records if r.label == 1)
    c, m = np.load(data / malignant.clip), np.load(data / malignant.mask)
    assert m[5].any() and c[5][m[5] > 0].mean() > c[5].mean() + 50
    b = np.load(data / malignant.boxes)
    np.testing.assert_allclose(b[0], [18, 20 * 48 / 56, 30, 36 * 48 / 56], atol=1e-4)

    run = workspace / "run"
    code, out = run_cli(capsys, "train", "--data", data, "--arch", "tiny", "--config", "small",
                        "--out", run, "--epochs", 2, "--frames", 4, "--size", 16,
                        "--num-workers", 0, "--min-per-class", 1, "--batch-size", 4)
    assert code == 0 and json.loads(out)["best_epoch"] >= 1
    code, _ = run_cli(capsys, "train", "--data", data, "--out", run, "--resume")
    assert code == 0  # resuming a finished run only re-freezes the threshold

    code, out = run_cli(capsys, "evaluate", "--run", run)
    assert code == 0
    metrics = json.loads(out)
    assert metrics["external_test"]["n"] == 4
    assert (run / "predictions.csv").is_file()

    run2 = workspace / "run2"
    assert run_cli(capsys, "train", "--data", data, "--arch", "tiny", "--out", run2,
                   "--epochs", 1, "--frames", 4, "--size", 16, "--num-workers", 0,
                   "--min-per-class", 1, "--seed", 1)[0] == 0
    table = workspace / "compare.json"
    code, out = run_cli(capsys, "compare", run, run2, "--json", table)
    assert code == 0 and "| run |" in out and "Paired DeLong" in out
    assert json.loads(table.read_text())["tests"][0]["n"] == 4

    heat = workspace / "heat.npy"
    code, out = run_cli(capsys, "gradcam", "--run", run, "--clip", data / malignant.clip,
                        "--boxes", data / malignant.boxes, "--out", heat)
    assert code == 0
    h = np.load(heat)
    assert h.shape == (12, 48, 48) and h.dtype == np.float16
    assert 0 <= json.loads(out)["probability"] <= 1
    assert json.loads(out)["method"] == "hirescam"
    classic = workspace / "classic.npy"
    code, out = run_cli(capsys, "gradcam", "--run", run, "--clip", data / malignant.clip,
                        "--boxes", data / malignant.boxes, "--out", classic,
                        "--method", "gradcam")
    assert code == 0 and json.loads(out)["method"] == "gradcam"
    assert np.load(classic).shape == h.shape

    code, out = run_cli(capsys, "stats", "roc-ci", "--csv", run / "predictions.csv",
                        "--truth", "label", "--score", "probability")
    assert code == 0 and 0 <= json.loads(out)["auc"] <= 1
    scores = workspace / "scores.csv"
    scores.write_text("y,a,b\n" + "".join(f"{y},{a},{b}\n" for y, a, b in [
        (0, 0.1, 0.3), (0, 0.4, 0.2), (0, 0.3, 0.6), (1, 0.8, 0.5), (1, 0.35, 0.7),
        (1, 0.9, 0.4)]))
    code, out = run_cli(capsys, "stats", "roc-test", "--csv", scores, "--truth", "y",
                        "--a", "a", "--b", "b")
    res = json.loads(out)
    assert code == 0 and res["auc_a"] == pytest.approx(8 / 9) and 0 <= res["p_value"] <= 1


def test_bad_input_exits_2_with_a_message(workspace, capsys, caplog):
    assert main(["evaluate", "--run", str(workspace / "missing")]) == 2
    assert "not a run directory" in caplog.text
    assert main(["dataset", "--from-synth", str(workspace / "nope"), "--out",
                 str(workspace / "x")]) == 2
    assert "not an import folder" in caplog.text
    assert main(["train", "--data", str(workspace), "--out", str(workspace / "r")]) == 2
    assert "not a dataset directory" in caplog.text


def test_synth_subcommand(tmp_path, capsys):
    pytest.importorskip("ml.synthetic")
    code, _ = run_cli(capsys, "synth", "--out", tmp_path / "s", "--centres", 1, "--nodules", 2)
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "s/manifest.csv").open()))
    assert len(rows) == 2 and all((tmp_path / "s" / r["video"]).is_file() for r in rows)


def test_bench_delegates(capsys):
    pytest.importorskip("ml.bench")
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_the_cli_offers_every_heatmap_method_default_first():
    from ml import cli, gradcam

    assert set(cli.HEATMAP_METHODS) == set(gradcam.METHODS)
    assert cli.HEATMAP_METHODS[0] == gradcam.DEFAULT_METHOD


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "ml", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    for cmd in ("synth", "dataset", "train", "evaluate", "compare", "gradcam", "stats", "bench"):
        assert cmd in proc.stdout
