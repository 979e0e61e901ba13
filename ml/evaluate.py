"""Evaluate a trained run: `metrics.json` and `predictions.csv`; compare runs.

Every split is scored with the threshold frozen on validation (Youden J) when the run was
trained. AUROC CIs and paired tests are DeLong's (`ml.stats`, checked against pROC); proportions
carry Wilson intervals. Localisation (how much of the heatmap falls on the annotated
calcifications, against a uniform map) is scored on the model's input grid, where the mask is
aligned to the exact frames and crop the model saw: `localisation` for the heatmap the platform
shows (`ml.gradcam.DEFAULT_METHOD`, HiResCAM), `localisation_gradcam` for classic Grad-CAM,
`localisation_attention` for the first attention map.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ml import stats
from ml.data import CALCIFICATION_CODES, ClipDataset, read_manifest
from ml.gradcam import DEFAULT_METHOD, METHODS
from ml.inference import gradcam_layer_of, input_heatmaps, load_model, spec_of

log = logging.getLogger(__name__)

EVAL_SPLITS = ("val", "internal_test", "external_test")
PREDICTION_COLUMNS = ("case_id", "split", "centre", "label", "probability")


def _r(x, nd: int = 6):
    if x is None:
        return None
    x = float(x)
    return round(x, nd) if math.isfinite(x) else None


def _prop(p) -> tuple[float | None, list[float | None] | None]:
    if p is None:
        return None, None
    return _r(p.estimate), [_r(p.ci_low), _r(p.ci_high)]


def classification_metrics(labels: Sequence[int], probs: Sequence[float], threshold: float
                           ) -> dict:
    """The block metrics.json holds for a split or a centre.

    n, n_malignant, auroc, auroc_ci [low, high] (DeLong; null when a class is missing or has a
    single case), threshold, sensitivity, specificity, ppv, npv, accuracy (each with `_ci`,
    Wilson), counts {tp, fp, tn, fn}, brier.
    """
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probs, dtype=float)
    out: dict = {"n": int(y.size), "n_malignant": int(y.sum())}
    if y.size and 0 < y.sum() < y.size:
        ci = stats.roc_auc_ci(y, p)
        out["auroc"] = _r(ci.auc)
        out["auroc_ci"] = None if not math.isfinite(ci.ci_low) else [_r(ci.ci_low),
                                                                     _r(ci.ci_high)]
    else:
        out["auroc"], out["auroc_ci"] = None, None
    out["threshold"] = _r(threshold, 8)
    if y.size:
        bm = stats.binary_metrics(y, p, threshold)
        for name in ("sensitivity", "specificity", "ppv", "npv", "accuracy"):
            out[name], out[f"{name}_ci"] = _prop(getattr(bm, name))
        out["counts"] = {"tp": bm.tp, "fp": bm.fp, "tn": bm.tn, "fn": bm.fn}
        out["brier"] = _r(stats.brier_score(y, p))
    return out


# --------------------------------------------------------------------------------------------
# Localisation


def localisation_scores(heat: np.ndarray, mask: np.ndarray) -> dict | None:
    """Energy inside the calcification marks and the pointing game for one case, each beside
    the value a uniform heatmap gets (`ml.gradcam`: marks dilated by 1 px, frames with marks).

    heat, mask: (T, H, W) or (H, W) on the same grid. None when the mask has no calcification
    (codes 1-3; 4, the comet-tail artefact, is not one).
    """
    from ml.gradcam import energy_inside_mask, pointing_game

    if not np.isin(np.asarray(mask), CALCIFICATION_CODES).any():
        return None
    e = energy_inside_mask(heat[None], mask[None])
    p = pointing_game(heat[None], mask[None])
    return {"energy": float(e.value[0]), "energy_uniform": float(e.uniform[0]),
            "pointing": float(p.value[0]), "pointing_uniform": float(p.uniform[0])}


def summarise_localisation(rows: list[dict]) -> dict:
    """Means over cases; a ratio is the mean score over the mean uniform score."""
    if not rows:
        return {"n": 0}

    def mean(key):
        return float(np.mean([r[key] for r in rows]))

    # A flat heatmap (Grad-CAM with no positive evidence) has no energy to place: it scores
    # what a uniform map scores.
    rows = [dict(r) for r in rows]
    flat = [r for r in rows if not math.isfinite(r["energy"])]
    for r in flat:
        r["energy"], r["pointing"] = r["energy_uniform"], r["pointing_uniform"]
    out = {"n": len(rows), "n_flat": len(flat)}
    for name, label in (("energy", "energy_inside"), ("pointing", "pointing_game")):
        value, uniform = mean(name), mean(f"{name}_uniform")
        out[label] = _r(value)
        out[f"{name}_uniform"] = _r(uniform)
        out[f"{name}_ratio"] = _r(value / uniform) if uniform > 0 else None
    return out


# --------------------------------------------------------------------------------------------
# Scoring a run


@torch.no_grad()
def score_logits(model, ds: ClipDataset, batch_size: int = 8, device="cpu") -> np.ndarray:
    """(cases,) logits of `ds` as evaluation and inference score them: the dataset spec's
    temporal views and flip averaging (`ml.inference.logits_of`)."""
    from ml.inference import logits_of

    logits = []
    for batch in DataLoader(ds, batch_size=batch_size):
        out = logits_of(model, batch["clip"].to(device), ds.spec.flip_average,
                        ds.spec.temporal_views)
        logits += out[:, 0].float().cpu().tolist()
    return np.asarray(logits)


def _predict(model, ds: ClipDataset, batch_size: int, device) -> np.ndarray:
    logits = torch.from_numpy(score_logits(model, ds, batch_size, device)).float()
    return np.asarray(torch.sigmoid(logits).tolist())


def _localise(model, ds: ClipDataset, device, layer=None) -> tuple[dict[str, list[dict]],
                                                                    list[dict]]:
    """Per-case localisation rows for each heatmap method of `ml.gradcam` ({method: rows})
    and for the first attention map (if any), on the cases whose mask marks a calcification."""
    cam_rows: dict[str, list[dict]] = {m: [] for m in METHODS}
    att_rows = []
    for i, r in enumerate(ds.records):
        if not r.mask:
            continue
        item = ds[i]
        mask = item["mask"].numpy()
        if not np.isin(mask, CALCIFICATION_CODES).any():
            continue
        key = {"case_id": r.case_id, "label": r.label}
        for method in METHODS:
            _, heat, att = input_heatmaps(model, item["clip"][None].to(device), layer,
                                          ds.spec.temporal_views, method)
            cam_rows[method].append({**key, **localisation_scores(heat[0], mask)})
        if att:  # the first (finest) attention map
            att_rows.append({**key, **localisation_scores(att[0][0], mask)})
    return cam_rows, att_rows


def _localisation_block(rows: list[dict], heatmap: str) -> dict:
    return {"heatmap": heatmap, "all": summarise_localisation(rows),
            "malignant": summarise_localisation([r for r in rows if r["label"] == 1])}


def evaluate_run(
    run_dir: str | Path,
    data_root: str | Path | None = None,
    *,
    splits: Iterable[str] = EVAL_SPLITS,
    localisation: bool = True,
    batch_size: int = 8,
    device: str = "cpu",
) -> dict:
    """Score a run on its dataset; writes and returns `RUN_DIR/metrics.json`, and writes
    `RUN_DIR/predictions.csv` (case_id, split, centre, label, probability).

    `data_root` overrides the dataset directory recorded in the run's config (for a dataset
    moved since training).
    """
    from tqdm import tqdm

    run_dir = Path(run_dir)
    model, config = load_model(run_dir, device=device)
    spec = spec_of(config)
    threshold = config.get("threshold")
    if threshold is None:
        raise ValueError(f"{run_dir} has no frozen threshold: did training finish?")
    root = Path(data_root or config["data_root"])
    manifest = config["train"].get("manifest", "manifest.csv")
    records = read_manifest(root, manifest)
    metrics: dict = {
        "run": str(run_dir.resolve()),
        "arch": config["train"]["arch"],
        "preset": config["train"]["preset"],
        "data_root": str(root.resolve()),
        "threshold": _r(threshold, 8),
        "threshold_rule": "Youden J on val, frozen",
        "train_seconds": _train_seconds(run_dir),
    }
    predictions = []
    for split in tqdm(list(splits), desc="splits", unit="split", leave=False):
        ds = ClipDataset(root, split, spec, manifest=manifest, records=records)
        if not len(ds):
            continue
        probs = _predict(model, ds, batch_size, device)
        labels = ds.labels
        block = classification_metrics(labels, probs, threshold)
        by_centre = defaultdict(list)
        for k, r in enumerate(ds.records):
            by_centre[r.centre].append(k)
            predictions.append({"case_id": r.case_id, "split": split, "centre": r.centre,
                                "label": r.label,
                                # Full precision: validation cases sit exactly on the frozen
                                # threshold, and rounding would flip them when the metrics are
                                # recomputed from this file.
                                "probability": repr(float(probs[k]))})
        block["centres"] = {
            c: classification_metrics([labels[k] for k in ks], probs[ks], threshold)
            for c, ks in sorted(by_centre.items())
        }
        if localisation:
            cam_rows, att_rows = _localise(model, ds, device, gradcam_layer_of(model, config))
            layer = config["train"].get("gradcam_layer") or "default"
            # "localisation": the heatmap the platform shows; the others beside it
            block["localisation"] = _localisation_block(
                cam_rows[DEFAULT_METHOD], f"{DEFAULT_METHOD} ({layer})")
            for method in METHODS:
                if method != DEFAULT_METHOD:
                    block[f"localisation_{method}"] = _localisation_block(
                        cam_rows[method], f"{method} ({layer})")
            if att_rows:
                block["localisation_attention"] = _localisation_block(
                    att_rows, "attention (first module)")
        metrics[split] = block
    _write_predictions(run_dir / "predictions.csv", predictions)
    tmp = run_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    tmp.replace(run_dir / "metrics.json")
    return metrics


def _train_seconds(run_dir: Path) -> float | None:
    """Training wall time from metrics.jsonl: each session's start to its done or error event,
    summed over sessions (a resumed run has several); None until the run is done."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    total, start, done = 0.0, None, False
    for line in path.read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "start":
            start = e["time"]
        elif e["event"] in ("done", "error") and start is not None:
            total += e["time"] - start
            start, done = None, e["event"] == "done"
    # Millisecond resolution, as recorded: a tiny run can finish in under 0.05 s.
    return round(total, 3) if done else None


def _write_predictions(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PREDICTION_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def read_predictions(path: str | Path) -> list[dict]:
    with Path(path).open(newline="") as f:
        return [{**r, "label": int(r["label"]), "probability": float(r["probability"])}
                for r in csv.DictReader(f)]


# --------------------------------------------------------------------------------------------
# Comparing runs


def compare(run_dirs: Sequence[str | Path], split: str = "external_test") -> dict:
    """Side-by-side metrics of several runs, and pairwise paired DeLong tests on the `split`
    cases every run scored. Runs without metrics.json are evaluated first.

    Returns {"runs": [...], "tests": [...], "n_shared": int, "table": markdown}.
    """
    runs = []
    for d in run_dirs:
        d = Path(d)
        if not (d / "metrics.json").is_file() or not (d / "predictions.csv").is_file():
            log.info("evaluating %s", d)
            evaluate_run(d)
        m = json.loads((d / "metrics.json").read_text())
        preds = {p["case_id"]: p for p in read_predictions(d / "predictions.csv")
                 if p["split"] == split}
        runs.append({"name": d.name, "dir": str(d), "metrics": m, "preds": preds})
    shared = sorted(set.intersection(*(set(r["preds"]) for r in runs))) if runs else []
    tests = []
    if shared:
        y = np.array([runs[0]["preds"][c]["label"] for c in shared])
        for a, b in itertools.combinations(runs, 2):
            if any(a["preds"][c]["label"] != b["preds"][c]["label"] for c in shared):
                raise ValueError(f"{a['name']} and {b['name']} disagree on labels")
            pa = np.array([a["preds"][c]["probability"] for c in shared])
            pb = np.array([b["preds"][c]["probability"] for c in shared])
            try:
                t = stats.delong_roc_test(y, pa, pb).to_dict()
            except ValueError as e:
                t = {"error": str(e)}
            tests.append({"a": a["name"], "b": b["name"], "n": len(shared), **t})
    rows = [_compare_row(r["name"], r["metrics"]) for r in runs]
    return {"split": split, "n_shared": len(shared), "runs": rows, "tests": tests,
            "table": _markdown(rows, tests, split)}


def _compare_row(name: str, m: dict) -> dict:
    row = {"name": name, "arch": m.get("arch"), "threshold": m.get("threshold"),
           "train_seconds": m.get("train_seconds")}
    for split in EVAL_SPLITS:
        b = m.get(split, {})
        loc = (b.get("localisation") or {}).get("malignant") or {}
        classic = (b.get("localisation_gradcam") or {}).get("malignant") or {}
        row[split] = {k: b.get(k) for k in ("n", "n_malignant", "auroc", "auroc_ci",
                                            "sensitivity", "specificity")}
        row[split]["energy_ratio"] = loc.get("energy_ratio")
        row[split]["pointing_game"] = loc.get("pointing_game")
        row[split]["energy_ratio_gradcam"] = classic.get("energy_ratio")
    return row


def _fmt_auc(b: dict) -> str:
    if b.get("auroc") is None:
        return "-"
    ci = b.get("auroc_ci")
    return f"{b['auroc']:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def _fmt(x, nd=3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _markdown(rows: list[dict], tests: list[dict], split: str) -> str:
    head = ("| run | arch | val AUROC | internal test AUROC | external AUROC (95% CI) | "
            "ext. sens | ext. spec | ext. heatmap energy / uniform (malignant): HiResCAM "
            "(Grad-CAM) | train min |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        e = r["external_test"]
        mins = None if r["train_seconds"] is None else r["train_seconds"] / 60
        lines.append(
            f"| {r['name']} | {r['arch']} | {_fmt_auc(r['val'])} | "
            f"{_fmt_auc(r['internal_test'])} | {_fmt_auc(e)} | {_fmt(e['sensitivity'])} | "
            f"{_fmt(e['specificity'])} | {_fmt(e['energy_ratio'], 2)} "
            f"({_fmt(e['energy_ratio_gradcam'], 2)}) | {_fmt(mins, 1)} |")
    if tests:
        lines += ["", f"Paired DeLong tests on the {split} cases all runs scored:", "",
                  "| a | b | n | AUROC a | AUROC b | difference (95% CI) | p |",
                  "|---|---|---|---|---|---|---|"]
        for t in tests:
            if "error" in t:
                lines.append(f"| {t['a']} | {t['b']} | {t['n']} | | | {t['error']} | |")
                continue
            lines.append(
                f"| {t['a']} | {t['b']} | {t['n']} | {t['auc_a']:.3f} | {t['auc_b']:.3f} | "
                f"{t['difference']:+.3f} ({_fmt(t['ci_low'])} to {_fmt(t['ci_high'])}) | "
                f"{_fmt(t['p_value'], 4)} |")
    return "\n".join(lines)
