"""Performance of a model version per centre, computed with `ml.stats` from arrays the
selectors fetched: AUROC with a DeLong 95% CI, the 2x2 table at the frozen threshold with
Wilson intervals, the ROC curve, calibration and the Brier score; and the paired DeLong test
(DeLong et al., Biometrics 1988) of every other registered version on the shared cases."""

from __future__ import annotations

import math

import numpy as np

from ml import stats
from webapp.dashboards.selectors import ARCH_GROUPS, LabelledCases

ROC_MAX_POINTS = 400  # vertices per plotted curve; a 2,000-case curve needs no more on screen
CALIBRATION_BINS = 10


def _finite(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _proportion(p: stats.Proportion | None) -> dict | None:
    if p is None:
        return None
    return {"estimate": p.estimate, "ci_low": p.ci_low, "ci_high": p.ci_high, "k": p.k, "n": p.n}


def _thin(fpr: np.ndarray, tpr: np.ndarray) -> tuple[list, list]:
    if fpr.size <= ROC_MAX_POINTS:
        return fpr.tolist(), tpr.tolist()
    keep = np.unique(np.r_[np.linspace(0, fpr.size - 1, ROC_MAX_POINTS).astype(int)])
    return fpr[keep].tolist(), tpr[keep].tolist()


def performance(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """Everything the dashboard shows for one group of cases (labels y, probabilities p)."""
    n, m = int(y.size), int(y.sum())
    out: dict = {"n": n, "n_malignant": m, "n_benign": n - m, "auroc": None, "auroc_ci": None,
                 "roc": None, "brier": None, "calibration": None}
    if n == 0:
        out |= {"tp": 0, "fp": 0, "tn": 0, "fn": 0, "sensitivity": None, "specificity": None,
                "ppv": None, "npv": None}
        return out
    bm = stats.binary_metrics(y, p, threshold)
    out |= {"tp": bm.tp, "fp": bm.fp, "tn": bm.tn, "fn": bm.fn,
            "sensitivity": _proportion(bm.sensitivity), "specificity": _proportion(bm.specificity),
            "ppv": _proportion(bm.ppv), "npv": _proportion(bm.npv)}
    out["brier"] = stats.brier_score(y, p)
    cal = stats.calibration_curve(y, p, n_bins=CALIBRATION_BINS)
    out["calibration"] = {"mean_predicted": cal.mean_predicted.tolist(),
                          "observed": cal.observed_frequency.tolist(),
                          "counts": cal.counts.tolist()}
    if 0 < m < n:
        ci = stats.roc_auc_ci(y, p)
        out["auroc"] = ci.auc
        low, high = _finite(ci.ci_low), _finite(ci.ci_high)
        out["auroc_ci"] = [low, high] if low is not None else None
        curve = stats.roc_curve_points(y, p)
        fpr, tpr = _thin(np.asarray(curve.fpr), np.asarray(curve.tpr))
        out["roc"] = {"fpr": fpr, "tpr": tpr}
    return out


def _aligned(cases: LabelledCases, scores: dict) -> tuple[np.ndarray, np.ndarray]:
    """The cases that have a score: (mask over cases, their probabilities)."""
    have = np.fromiter((v in scores for v in cases.video_ids.tolist()), bool,
                       count=cases.video_ids.size)
    probs = np.fromiter((scores[v] for v in cases.video_ids[have].tolist()), float,
                        count=int(have.sum()))
    return have, probs


def version_performance(cases: LabelledCases, scores: dict, threshold: float) -> dict:
    """{"overall": performance, "centres": {code: performance}} over the cases with a
    prediction of the version."""
    have, p = _aligned(cases, scores)
    y, centres = cases.labels[have], cases.centres[have]
    return {
        "overall": performance(y, p, threshold),
        "centres": {str(c): performance(y[centres == c], p[centres == c], threshold)
                    for c in sorted(set(centres.tolist()))},
        "missing_predictions": int((~have).sum()),
    }


def comparison(cases: LabelledCases, versions: list, selected, all_scores: dict) -> list[dict]:
    """One row per registered version: AUROC on the cases it shares with the selected version,
    the selected version's AUROC on the same cases, and the paired DeLong p-value."""
    base = all_scores.get(selected.pk, {})
    rows = []
    for v in versions:
        scores = all_scores.get(v.pk, {})
        shared = np.fromiter((vid in scores and vid in base for vid in cases.video_ids.tolist()),
                             bool, count=cases.video_ids.size)
        ids = cases.video_ids[shared].tolist()
        y = cases.labels[shared]
        a = np.array([base[i] for i in ids], float)
        b = np.array([scores[i] for i in ids], float)
        m = int(y.sum())
        row = {"id": v.pk, "number": v.number, "arch": v.arch, "preset": v.preset,
               "group": ARCH_GROUPS.get(v.arch, "other"), "state": v.state,
               "selected": v.pk == selected.pk, "n_shared": len(ids), "n_malignant": m,
               "auroc": None, "auroc_ci": None, "auroc_selected": None, "difference": None,
               "p_value": None}
        if 0 < m < len(ids):
            ci = stats.roc_auc_ci(y, b)
            row["auroc"] = ci.auc
            if not math.isnan(ci.ci_low):
                row["auroc_ci"] = [ci.ci_low, ci.ci_high]
            row["auroc_selected"] = stats.roc_auc_ci(y, a).auc
            if v.pk != selected.pk and m >= 2 and len(ids) - m >= 2:
                test = stats.delong_roc_test(y, a, b)
                row["difference"] = test.difference
                row["p_value"] = test.p_value
        rows.append(row)
    return rows
