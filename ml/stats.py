"""Statistics for diagnostic accuracy: AUROC with DeLong CIs, paired tests, thresholds, calibration.

Everything here is plain NumPy/SciPy on 1-D arrays, so the web platform, the CLI and notebooks get
the same numbers. R's pROC (Robin et al. 2011) is the reference implementation for the ROC part;
the tests reproduce its published results on the `aSAH` data to 1e-9.

Conventions shared by every function:

- `y_true` is 0/1 or boolean, 1/True meaning disease-positive (malignant). String labels go
  through `binary_labels(values, positive=...)` first; the CSV helpers do that for you.
- Scores are "higher = more likely positive". Unlike pROC we never flip the direction
  automatically: a model whose AUC is below 0.5 should be reported as such, not silently
  inverted (pROC's `direction="auto"` compares the medians of cases and controls).
- A prediction is positive when `score >= threshold`.

References
----------
DeLong ER, DeLong DM, Clarke-Pearson DL (1988). Comparing the areas under two or more correlated
    receiver operating characteristic curves: a nonparametric approach. Biometrics 44:837-845.
Sun X, Xu W (2014). Fast implementation of DeLong's algorithm for comparing the areas under
    correlated receiver operating characteristic curves. IEEE Signal Process Lett 21:1389-1393.
Wilson EB (1927). Probable inference, the law of succession, and statistical inference.
    J Am Stat Assoc 22:209-212. Newcombe RG (1998). Two-sided confidence intervals for the
    single proportion: comparison of seven methods. Stat Med 17:857-872.
McNemar Q (1947). Note on the sampling error of the difference between correlated proportions
    or percentages. Psychometrika 12:153-157. Edwards AL (1948), Psychometrika 13:185-187.
Youden WJ (1950). Index for rating diagnostic tests. Cancer 3:32-35.
Brier GW (1950). Verification of forecasts expressed in terms of probability.
    Mon Weather Rev 78:1-3.
Davison AC, Hinkley DV (1997). Bootstrap Methods and their Application, sec. 3.8 (clusters).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = [
    "AucCI",
    "BinaryMetrics",
    "BootstrapCI",
    "CalibrationCurve",
    "DelongPlacements",
    "DelongTest",
    "McNemarResult",
    "Proportion",
    "RocCurve",
    "YoudenThreshold",
    "binary_labels",
    "binary_metrics",
    "bootstrap_auc_ci",
    "brier_score",
    "calibration_curve",
    "delong_placements",
    "delong_roc_test",
    "mcnemar_test",
    "roc_auc_ci",
    "roc_ci_from_csv",
    "roc_curve_points",
    "roc_test_from_csv",
    "to_jsonable",
    "wilson_interval",
    "youden_threshold",
]

# Below this many discordant pairs McNemar's chi-square approximation is poor and we use the
# exact binomial test instead; 25 is the usual rule of thumb (and statsmodels' advice).
MCNEMAR_EXACT_BELOW = 25

_TRUE_WORDS = ("1", "true")


# --------------------------------------------------------------------------- labels and inputs


def binary_labels(values: ArrayLike, *, positive: Any = None) -> np.ndarray:
    """Map a truth column to a boolean array, True meaning disease-positive.

    Without `positive`, only unambiguous codings are accepted: booleans, the numbers 0/1, or the
    strings "0"/"1" and "false"/"true" (any case). Anything else, such as "Good"/"Poor" or
    "benign"/"malignant", needs `positive=<the positive level>`: guessing from sorted order or
    from a list of words silently inverts a study the day a centre spells its labels differently.
    With `positive`, the column must have at most two distinct levels.
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("labels are empty")

    if positive is not None:
        if arr.dtype.kind in "biuf" and isinstance(positive, int | float | np.number):
            if arr.dtype.kind == "f" and np.isnan(arr).any():
                raise ValueError("labels contain missing values (NaN)")
            levels = sorted({*arr.tolist()})
            is_pos = arr == positive
        else:
            text = np.char.strip(arr.astype(str))
            levels = sorted({*text.tolist()})
            positive = str(positive).strip()
            is_pos = text == positive
        if len(levels) > 2:
            raise ValueError(f"labels have {len(levels)} levels {levels}; expected two")
        if positive not in levels:
            raise ValueError(f"positive={positive!r} is not one of the label levels {levels}")
        return is_pos

    if arr.dtype.kind == "b":
        return arr.copy()
    if arr.dtype.kind in "iuf":
        bad = ~np.isin(arr, (0, 1))
        if bad.any():
            shown = sorted({*arr[bad].tolist()}, key=str)[:5]
            raise ValueError(f"labels must be 0/1; found {shown}")
        return arr == 1
    text = np.char.lower(np.char.strip(arr.astype(str)))
    levels = {*text.tolist()}
    if levels <= {"0", "1"} or levels <= {"false", "true"}:
        return np.isin(text, _TRUE_WORDS)
    raise ValueError(
        f"labels have levels {sorted({*np.char.strip(arr.astype(str)).tolist()})}, not 0/1; "
        "pass positive=<the level that means disease-positive> (e.g. positive='malignant')"
    )


def _truth(y_true: ArrayLike) -> np.ndarray:
    return binary_labels(y_true)


def _scores(score: ArrayLike, n: int, name: str = "y_score") -> np.ndarray:
    s = np.asarray(score, dtype=float)
    if s.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {s.shape}")
    if s.size != n:
        raise ValueError(f"{name} has {s.size} values but y_true has {n}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return s


def _require_both_classes(y: np.ndarray) -> tuple[int, int]:
    m = int(y.sum())
    n = int(y.size - m)
    if m == 0 or n == 0:
        which = "negative" if n == 0 else "positive"
        raise ValueError(
            f"an ROC analysis needs positive and negative cases; there are no {which} cases "
            f"among {y.size}"
        )
    return m, n


# --------------------------------------------------------------------------- DeLong AUROC


@dataclass(frozen=True)
class DelongPlacements:
    """DeLong's structural components (placement values) of k scores on the same cases."""

    auc: np.ndarray  # (k,) empirical (Mann-Whitney) AUC, ties counted 1/2
    v10: np.ndarray  # (k, m) per positive case: share of negatives it outranks
    v01: np.ndarray  # (k, n) per negative case: share of positives that outrank it
    n_positive: int  # m
    n_negative: int  # n

    def covariance(self) -> np.ndarray:
        """(k, k) DeLong covariance of the AUC estimates: S10/m + S01/n (DeLong 1988, eq. 2)."""
        # np.cov centres on the row means, which equal the AUCs, as DeLong's S10/S01 do;
        # ddof=1 as in DeLong 1988 and pROC
        s10 = np.atleast_2d(np.cov(self.v10))
        s01 = np.atleast_2d(np.cov(self.v01))
        return s10 / self.n_positive + s01 / self.n_negative


def delong_placements(y_true: ArrayLike, scores: ArrayLike) -> DelongPlacements:
    """Placement values for one score (n_cases,) or several on the same cases (k, n_cases).

    Uses the mid-rank algorithm of Sun & Xu (2014): with T_z the mid-ranks in the pooled sample
    and T_x, T_y those within positives and negatives, V10_i = (T_z,i - T_x,i) / n and
    V01_j = 1 - (T_z,j - T_y,j) / m, which is O(N log N) instead of DeLong's O(m n) pairs and
    gives exactly the same numbers, ties included.
    """
    y = _truth(y_true)
    s = np.asarray(scores, dtype=float)
    if s.ndim == 1:
        s = s[None, :]
    if s.ndim != 2 or s.shape[1] != y.size:
        raise ValueError(f"scores must have shape (n_cases,) or (k, n_cases) with n_cases={y.size}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    m, n = _require_both_classes(y)
    x, z = s[:, y], s[:, ~y]
    tx = stats.rankdata(x, axis=1)
    ty = stats.rankdata(z, axis=1)
    tz = stats.rankdata(np.concatenate([x, z], axis=1), axis=1)
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return DelongPlacements(auc=auc, v10=v10, v01=v01, n_positive=m, n_negative=n)


@dataclass(frozen=True)
class AucCI:
    """AUROC with its DeLong standard error and a Wald confidence interval."""

    auc: float
    variance: float  # DeLong variance of the AUC; NaN with fewer than 2 cases in a class
    se: float
    ci_low: float  # clipped to [0, 1] as pROC does
    ci_high: float
    alpha: float  # 0.05 for a 95% CI
    n_positive: int
    n_negative: int
    method: str = "delong"

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(asdict(self))


def roc_auc_ci(y_true: ArrayLike, y_score: ArrayLike, *, alpha: float = 0.05) -> AucCI:
    """AUROC with DeLong (1988) variance and CI, computed with Sun & Xu's (2014) algorithm.

    Same estimator as pROC's `ci.auc(method="delong")`: AUC +/- z_{1-alpha/2} * SE, clipped to
    [0, 1]. With a single positive or negative case the variance is undefined; then the AUC is
    still returned and variance, SE and CI are NaN (pROC returns NA).
    """
    y = _truth(y_true)
    score = _scores(y_score, y.size)
    p = delong_placements(y, score)
    auc = float(p.auc[0])
    if p.n_positive < 2 or p.n_negative < 2:
        nan = math.nan
        return AucCI(auc, nan, nan, nan, nan, alpha, p.n_positive, p.n_negative)
    variance = float(p.covariance()[0, 0])
    se = math.sqrt(variance)
    z = _z(alpha)
    return AucCI(
        auc=auc,
        variance=variance,
        se=se,
        ci_low=min(max(auc - z * se, 0.0), 1.0),
        ci_high=min(max(auc + z * se, 0.0), 1.0),
        alpha=alpha,
        n_positive=p.n_positive,
        n_negative=p.n_negative,
    )


@dataclass(frozen=True)
class DelongTest:
    """Paired DeLong test of two AUROCs measured on the same cases (a minus b)."""

    auc_a: float
    auc_b: float
    difference: float  # auc_a - auc_b
    se: float  # DeLong standard error of the difference
    z: float
    p_value: float  # two-sided
    ci_low: float  # Wald CI of the difference, not clipped (pROC does not clip it either)
    ci_high: float
    correlation: float  # DeLong correlation of the two AUC estimates; NaN if a variance is 0
    alpha: float
    n_positive: int
    n_negative: int
    method: str = "delong"

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(asdict(self))


def delong_roc_test(
    y_true: ArrayLike, score_a: ArrayLike, score_b: ArrayLike, *, alpha: float = 0.05
) -> DelongTest:
    """Paired two-sided DeLong (1988) test of AUC(a) = AUC(b), as pROC's `roc.test`.

    z = (AUC_a - AUC_b) / SE, SE^2 = L S L' with L = (1, -1) and S the DeLong covariance.
    Identical curves give z = 0 and p = 1 (pROC's special case for 0/0). Use it for two models,
    or a model against a reader who scored the same cases.
    """
    y = _truth(y_true)
    a = _scores(score_a, y.size, "score_a")
    b = _scores(score_b, y.size, "score_b")
    p = delong_placements(y, np.vstack([a, b]))
    m, n = p.n_positive, p.n_negative
    if m < 2 or n < 2:
        raise ValueError(
            f"the DeLong test needs at least 2 positive and 2 negative cases (got {m} and {n})"
        )
    cov = p.covariance()
    # the variance of the difference from the differenced placements: equal to L S L' but
    # never negative through rounding, and exactly 0 when the two scores coincide
    d10 = p.v10[0] - p.v10[1]
    d01 = p.v01[0] - p.v01[1]
    var_diff = float(np.var(d10, ddof=1) / m + np.var(d01, ddof=1) / n)
    se = math.sqrt(var_diff)
    diff = float(p.auc[0] - p.auc[1])
    if se == 0.0:
        z = 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
    else:
        z = diff / se
    pval = float(2.0 * stats.norm.sf(abs(z)))
    crit = _z(alpha)
    denom = math.sqrt(cov[0, 0] * cov[1, 1])
    return DelongTest(
        auc_a=float(p.auc[0]),
        auc_b=float(p.auc[1]),
        difference=diff,
        se=se,
        z=z,
        p_value=pval,
        ci_low=diff - crit * se,
        ci_high=diff + crit * se,
        correlation=float(cov[0, 1] / denom) if denom > 0 else math.nan,
        alpha=alpha,
        n_positive=m,
        n_negative=n,
    )


# --------------------------------------------------------------------------- ROC curve, threshold


class RocCurve(NamedTuple):
    """Empirical ROC curve; a NamedTuple so that `fpr, tpr, thr = roc_curve_points(...)` works."""

    fpr: np.ndarray  # (K+1,) starting at 0
    tpr: np.ndarray  # (K+1,) starting at 0
    thresholds: np.ndarray  # (K+1,) decreasing; [0] is +inf (nothing called positive)


def _roc_counts(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives at each distinct score, taken as threshold, highest first."""
    order = np.argsort(-score, kind="mergesort")
    s, yy = score[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]  # end of each run of equal scores
    tps = np.cumsum(yy)[last]
    fps = last + 1 - tps
    return tps, fps, s[last]


def roc_curve_points(y_true: ArrayLike, y_score: ArrayLike) -> RocCurve:
    """Every vertex of the empirical ROC curve, one per distinct score, for plotting.

    At threshold t a case is called positive when score >= t. Unlike scikit-learn's default we
    keep collinear points, so the curve can be joined to per-threshold tables.
    """
    y = _truth(y_true)
    score = _scores(y_score, y.size)
    m, n = _require_both_classes(y)
    tps, fps, thr = _roc_counts(y, score)
    return RocCurve(
        fpr=np.r_[0.0, fps / n],
        tpr=np.r_[0.0, tps / m],
        thresholds=np.r_[np.inf, thr],
    )


@dataclass(frozen=True)
class YoudenThreshold:
    """The operating point chosen on validation data, to be frozen for the test sets."""

    threshold: float  # call positive when score >= threshold
    youden_j: float  # sensitivity + specificity - 1 at the threshold
    sensitivity: float
    specificity: float

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(asdict(self))


def youden_threshold(y_true: ArrayLike, y_score: ArrayLike) -> YoudenThreshold:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (Youden 1950).

    The threshold is an observed score and a case is positive when score >= threshold, the rule
    `binary_metrics` applies. J is compared exactly (as integers tp*n - fp*m), and ties go to the
    lowest threshold, i.e. the highest sensitivity: for a malignancy triage a missed cancer costs
    more than an extra fine-needle aspiration.
    """
    y = _truth(y_true)
    score = _scores(y_score, y.size)
    m, n = _require_both_classes(y)
    tps, fps, thr = _roc_counts(y, score)
    j_scaled = tps * n - fps * m  # J * m * n, exact in integers
    best = int(np.flatnonzero(j_scaled == j_scaled.max())[-1])  # thresholds decrease
    sens = tps[best] / m
    spec = 1.0 - fps[best] / n
    return YoudenThreshold(
        threshold=float(thr[best]),
        youden_j=float(sens + spec - 1.0),
        sensitivity=float(sens),
        specificity=float(spec),
    )


# --------------------------------------------------------------------------- proportions


@dataclass(frozen=True)
class Proportion:
    """k successes out of n with a Wilson score interval."""

    estimate: float  # k / n
    ci_low: float
    ci_high: float
    k: int
    n: int


def wilson_interval(k: int, n: int, *, alpha: float = 0.05) -> Proportion:
    """Wilson (1927) score interval for k/n, without continuity correction.

    Preferred to the Wald interval because it stays inside [0, 1] and keeps its coverage for
    small n and for proportions near 0 or 1 (Newcombe 1998), which is where sensitivity and
    specificity of a good model live.
    """
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n:
        raise ValueError(f"k and n must be integers, got k={k!r}, n={n!r}")
    k, n = int(k), int(n)
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be between 0 and n={n}, got {k}")
    z = _z(alpha)
    z2 = z * z
    centre = (k + z2 / 2) / (n + z2)
    half = z / (n + z2) * math.sqrt(k * (n - k) / n + z2 / 4)
    # at k = 0 or k = n one bound is exactly 0 or 1; clip the rounding error
    return Proportion(
        estimate=k / n,
        ci_low=max(0.0, centre - half),
        ci_high=min(1.0, centre + half),
        k=k,
        n=n,
    )


@dataclass(frozen=True)
class BinaryMetrics:
    """The 2x2 table at a frozen threshold and the proportions users read off it.

    A proportion whose denominator is zero (e.g. PPV when nothing is called positive) is None,
    not 0 or NaN: it is undefined, and None survives JSON as null.
    """

    threshold: float  # positive when score >= threshold
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: Proportion | None  # tp / (tp + fn)
    specificity: Proportion | None  # tn / (tn + fp)
    ppv: Proportion | None  # tp / (tp + fp)
    npv: Proportion | None  # tn / (tn + fn)
    accuracy: Proportion | None  # (tp + tn) / all
    alpha: float

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(asdict(self))


def binary_metrics(
    y_true: ArrayLike, y_score: ArrayLike, threshold: float, *, alpha: float = 0.05
) -> BinaryMetrics:
    """Counts and Wilson-interval proportions at `threshold` (positive when score >= threshold).

    Does not require both classes: on a test subgroup with no malignant nodule the sensitivity
    is simply None.
    """
    y = _truth(y_true)
    score = _scores(y_score, y.size)
    pred = score >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    tn = int(np.sum(~pred & ~y))
    fn = int(np.sum(~pred & y))

    def prop(k: int, n: int) -> Proportion | None:
        return wilson_interval(k, n, alpha=alpha) if n > 0 else None

    return BinaryMetrics(
        threshold=float(threshold),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        sensitivity=prop(tp, tp + fn),
        specificity=prop(tn, tn + fp),
        ppv=prop(tp, tp + fp),
        npv=prop(tn, tn + fn),
        accuracy=prop(tp + tn, y.size),
        alpha=alpha,
    )


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test of paired proportions (e.g. accuracy of model vs reader on the same cases)."""

    only_a: int  # b: cases a got right and b got wrong
    only_b: int  # c: cases b got right and a got wrong
    n: int  # paired cases
    statistic: float | None  # chi-square with continuity correction; None for the exact test
    p_value: float  # two-sided
    method: Literal["exact", "chi2-cc"]

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(asdict(self))


def mcnemar_test(correct_a: ArrayLike, correct_b: ArrayLike) -> McNemarResult:
    """McNemar (1947) test on the discordant pairs b and c.

    With b + c < 25 (`MCNEMAR_EXACT_BELOW`) the exact two-sided binomial test,
    p = min(1, 2 P[Bin(b + c, 1/2) <= min(b, c)]); otherwise the chi-square statistic with
    Edwards' (1948) continuity correction, (|b - c| - 1)^2 / (b + c) on 1 df. No discordant pair
    at all gives p = 1.
    """
    a = binary_labels(correct_a)
    b_ = binary_labels(correct_b)
    if a.size != b_.size:
        raise ValueError(f"correct_a has {a.size} cases but correct_b has {b_.size}")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    d = b + c
    if d < MCNEMAR_EXACT_BELOW:
        p = 1.0 if d == 0 else min(1.0, 2.0 * float(stats.binom.cdf(min(b, c), d, 0.5)))
        return McNemarResult(b, c, int(a.size), None, p, "exact")
    chi2 = (abs(b - c) - 1.0) ** 2 / d
    return McNemarResult(b, c, int(a.size), chi2, float(stats.chi2.sf(chi2, 1)), "chi2-cc")


# --------------------------------------------------------------------------- calibration


def _probabilities(prob: ArrayLike, n: int) -> np.ndarray:
    p = _scores(prob, n, "prob")
    if (p < 0).any() or (p > 1).any():
        raise ValueError("prob must be probabilities in [0, 1] (apply the sigmoid to logits)")
    return p


def brier_score(y_true: ArrayLike, prob: ArrayLike) -> float:
    """Mean squared difference between predicted probability and outcome (Brier 1950)."""
    y = _truth(y_true)
    p = _probabilities(prob, y.size)
    return float(np.mean((p - y) ** 2))


@dataclass(frozen=True)
class CalibrationCurve:
    """Reliability diagram data. Empty bins are left out, as scikit-learn does."""

    mean_predicted: np.ndarray  # (B,) mean predicted probability in each non-empty bin
    observed_frequency: np.ndarray  # (B,) fraction of positives in the bin
    counts: np.ndarray  # (B,) cases in the bin
    bins: np.ndarray  # (B,) index of each kept bin into bin_edges
    bin_edges: np.ndarray  # (n_bins + 1,) bin i is [edge_i, edge_i+1), the last one closed
    strategy: str

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(asdict(self))


def calibration_curve(
    y_true: ArrayLike,
    prob: ArrayLike,
    *,
    n_bins: int = 10,
    strategy: Literal["uniform", "quantile"] = "uniform",
) -> CalibrationCurve:
    """Bin predictions and compare mean prediction with observed frequency per bin.

    "uniform" bins split [0, 1] into equal widths; "quantile" bins hold about the same number
    of cases, which suits models whose predictions bunch near 0 or 1. Quantile edges that
    coincide (many tied predictions) are merged, so there may be fewer bins than asked for.
    """
    y = _truth(y_true)
    p = _probabilities(prob, y.size)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1)))
        if edges.size == 1:  # every prediction equal: one bin holding all of them
            edges = np.r_[edges, edges]
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    idx = np.searchsorted(edges[1:-1], p, side="right")
    counts = np.bincount(idx, minlength=edges.size - 1)
    sum_p = np.bincount(idx, weights=p, minlength=edges.size - 1)
    sum_y = np.bincount(idx, weights=y.astype(float), minlength=edges.size - 1)
    kept = np.flatnonzero(counts)
    return CalibrationCurve(
        mean_predicted=sum_p[kept] / counts[kept],
        observed_frequency=sum_y[kept] / counts[kept],
        counts=counts[kept],
        bins=kept,
        bin_edges=edges,
        strategy=strategy,
    )


# --------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class BootstrapCI:
    """Percentile bootstrap CI of the AUROC."""

    auc: float  # on the original sample
    ci_low: float
    ci_high: float
    alpha: float
    n_boot: int  # replicates drawn
    n_valid: int  # replicates that contained both classes and were kept
    n_clusters: int  # resampling units: patients when groups were given, else cases
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(asdict(self))


def bootstrap_auc_ci(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> BootstrapCI:
    """Percentile bootstrap CI of the AUROC, resampling whole patients when `groups` is given.

    Several nodules or videos of one patient are correlated; resampling cases as if independent
    understates the variance. With `groups` (patient ids, one per case) each replicate draws
    patients with replacement and keeps all their cases (cluster bootstrap, Davison & Hinkley
    1997, sec. 3.8); without it each case is its own cluster. Replicates lacking a class are
    discarded and counted in `n_valid`. Deterministic for a given `seed`.
    """
    y = _truth(y_true)
    score = _scores(y_score, y.size)
    _require_both_classes(y)
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if groups is None:
        cluster = np.arange(y.size)
    else:
        g = np.asarray(groups)
        if g.shape != y.shape:
            raise ValueError(f"groups has {g.size} values but y_true has {y.size}")
        _, cluster = np.unique(g, return_inverse=True)
    n_clusters = int(cluster.max()) + 1

    # A replicate is a vector of weights (how often each case was drawn), so the AUC is a
    # weighted Mann-Whitney statistic over the distinct score levels: no copying of the data.
    levels, level = np.unique(score, return_inverse=True)
    lp, ln = level[y], level[~y]
    cp, cn = cluster[y], cluster[~y]
    k = levels.size
    rng = np.random.default_rng(seed)
    aucs = np.empty(n_boot)
    valid = np.zeros(n_boot, dtype=bool)
    for b in range(n_boot):
        draws = np.bincount(rng.integers(0, n_clusters, n_clusters), minlength=n_clusters)
        wp = np.bincount(lp, weights=draws[cp], minlength=k)
        wn = np.bincount(ln, weights=draws[cn], minlength=k)
        total_p, total_n = wp.sum(), wn.sum()
        if total_p == 0 or total_n == 0:
            continue
        below = np.cumsum(wn) - wn  # negatives scoring strictly lower than each level
        aucs[b] = float(wp @ (below + 0.5 * wn)) / (total_p * total_n)
        valid[b] = True
    if not valid.any():
        raise ValueError("no bootstrap replicate contained both classes")
    low, high = np.quantile(aucs[valid], [alpha / 2, 1 - alpha / 2])
    return BootstrapCI(
        auc=float(delong_placements(y, score).auc[0]),
        ci_low=float(low),
        ci_high=float(high),
        alpha=alpha,
        n_boot=n_boot,
        n_valid=int(valid.sum()),
        n_clusters=n_clusters,
        seed=seed,
    )


# --------------------------------------------------------------------------- CSV helpers (CLI)


def _read_columns(path: str | Path, names: Sequence[str]) -> dict[str, list[tuple[int, str]]]:
    """The named columns of a CSV as (line number, text) pairs; missing values are errors."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in names if c not in header]
        if missing:
            raise ValueError(f"{path}: no column {missing}; the columns are {header}")
        out: dict[str, list[tuple[int, str]]] = {c: [] for c in names}
        for row in reader:
            for c in names:
                value = (row[c] or "").strip()
                if value == "" or value.upper() in {"NA", "NAN"}:
                    raise ValueError(f"{path}, line {reader.line_num}: column {c!r} is missing")
                out[c].append((reader.line_num, value))
    if not out[names[0]]:
        raise ValueError(f"{path}: no data rows")
    return out


def _float_column(path: str | Path, name: str, cells: list[tuple[int, str]]) -> np.ndarray:
    values = []
    for line, text in cells:
        try:
            values.append(float(text))
        except ValueError:
            raise ValueError(
                f"{path}, line {line}: column {name!r} has {text!r}, not a number"
            ) from None
    return np.asarray(values)


def _csv_truth(
    path: str | Path, name: str, cells: list[tuple[int, str]], positive: Any
) -> tuple[np.ndarray, str]:
    texts = [t for _, t in cells]
    try:
        y = binary_labels(np.asarray(texts), positive=None if positive is None else str(positive))
    except ValueError as exc:
        raise ValueError(f"{path}: truth column {name!r}: {exc}") from None
    return y, ("1" if positive is None else str(positive))


def roc_ci_from_csv(
    path: str | Path, truth: str, score: str, positive: Any = None, *, alpha: float = 0.05
) -> dict[str, Any]:
    """`roc_auc_ci` on two columns of a CSV file; returns a JSON-serialisable dict.

    `truth` may be 0/1 (or true/false); any other coding needs `positive`, the level meaning
    disease-positive (e.g. positive="Poor" for pROC's aSAH, "malignant" for our manifests).
    Higher scores must mean "more likely positive". Missing or non-numeric cells raise
    ValueError naming the line, rather than being dropped silently.
    """
    cols = _read_columns(path, [truth, score])
    y, pos = _csv_truth(path, truth, cols[truth], positive)
    res = roc_auc_ci(y, _float_column(path, score, cols[score]), alpha=alpha)
    return {
        "path": str(path),
        "truth": truth,
        "positive": pos,
        "score": score,
        "direction": "higher score = positive",
        "conf_level": 1 - alpha,
        **res.to_dict(),
    }


def roc_test_from_csv(
    path: str | Path, truth: str, a: str, b: str, positive: Any = None, *, alpha: float = 0.05
) -> dict[str, Any]:
    """`delong_roc_test` of score columns `a` and `b` of a CSV; returns a JSON-serialisable dict.

    Same truth and direction rules as `roc_ci_from_csv`; `difference` is AUC(a) - AUC(b).
    """
    cols = _read_columns(path, [truth, a, b])
    y, pos = _csv_truth(path, truth, cols[truth], positive)
    res = delong_roc_test(
        y, _float_column(path, a, cols[a]), _float_column(path, b, cols[b]), alpha=alpha
    )
    return {
        "path": str(path),
        "truth": truth,
        "positive": pos,
        "a": a,
        "b": b,
        "direction": "higher score = positive",
        "conf_level": 1 - alpha,
        **res.to_dict(),
    }


# --------------------------------------------------------------------------- helpers


def _z(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return float(stats.norm.ppf(1.0 - alpha / 2.0))


def to_jsonable(value: Any) -> Any:
    """Nested dicts/lists with arrays as lists, NumPy scalars as Python, NaN/inf as None.

    `json.dumps(..., allow_nan=False)` accepts the result, so browsers' JSON.parse does too.
    """
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
