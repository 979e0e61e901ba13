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


def version_performance(cases: LabelledCases, scores: np.ndarray, threshold: float) -> dict:
    """{"overall": performance, "centres": {code: performance}} over the cases with a
    prediction of the version (`scores`: (N,) probabilities, NaN where there is none)."""
    have = ~np.isnan(scores)
    y, p, centres = cases.labels[have], scores[have], cases.centres[have]
    return {
        "overall": performance(y, p, threshold),
        "centres": {str(c): performance(y[centres == c], p[centres == c], threshold)
                    for c in sorted(set(centres.tolist()))},
        "missing_predictions": int((~have).sum()),
    }


def comparison(cases: LabelledCases, versions: list, selected, scores: np.ndarray) -> list[dict]:
    """One row per registered version: AUROC on the cases it shares with the selected version,
    the selected version's AUROC on the same cases, and the paired DeLong p-value.
    `scores`: (len(versions), N), NaN where a version has no prediction."""
    base = scores[[v.pk for v in versions].index(selected.pk)]
    rows = []
    for v, own in zip(versions, scores, strict=True):
        shared = ~np.isnan(base) & ~np.isnan(own)
        y, a, b = cases.labels[shared], base[shared], own[shared]
        n, m = int(shared.sum()), int(y.sum())
        row = {"id": v.pk, "number": v.number, "arch": v.arch, "preset": v.preset,
               "group": ARCH_GROUPS.get(v.arch, "other"), "state": v.state,
               "selected": v.pk == selected.pk, "n_shared": n, "n_malignant": m,
               "auroc": None, "auroc_ci": None, "auroc_selected": None, "difference": None,
               "p_value": None}
        if 0 < m < n:
            ci = stats.roc_auc_ci(y, b)
            row["auroc"] = ci.auc
            if not math.isnan(ci.ci_low):
                row["auroc_ci"] = [ci.ci_low, ci.ci_high]
            row["auroc_selected"] = stats.roc_auc_ci(y, a).auc
            if v.pk != selected.pk and m >= 2 and n - m >= 2:
                test = stats.delong_roc_test(y, a, b)
                row["difference"] = test.difference
                row["p_value"] = test.p_value
        rows.append(row)
    return rows
