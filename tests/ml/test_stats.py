"""Tests for ml.stats: pROC's published aSAH results, hand-checked tables and edge cases."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from ml.stats import (
    MCNEMAR_EXACT_BELOW,
    binary_labels,
    binary_metrics,
    bootstrap_auc_ci,
    brier_score,
    calibration_curve,
    delong_placements,
    delong_roc_test,
    mcnemar_test,
    roc_auc_ci,
    roc_ci_from_csv,
    roc_curve_points,
    roc_test_from_csv,
    wilson_interval,
    youden_threshold,
)

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-9  # pROC prints 15 significant digits; we agree to rounding


def read_asah(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    y = np.array([r["outcome"] == "Poor" for r in rows])
    scores = {k: np.array([float(r[k]) for r in rows]) for k in ("wfns", "s100b", "ndka")}
    return y, scores


@pytest.fixture(scope="module")
def asah(asah_csv):
    return read_asah(asah_csv)


# --------------------------------------------------------------------------- pROC on aSAH

# pROC 1.18: auc(aSAH$outcome, aSAH$<marker>) and ci.auc(..., method = "delong")
PROC_AUC = [
    ("wfns", 0.823678861788618, None, None),
    ("s100b", 0.731368563685637, None, None),
    ("ndka", 0.611957994579946, 0.501244999271703, 0.722670989888189),
]


@pytest.mark.parametrize(("marker", "auc", "low", "high"), PROC_AUC)
def test_roc_auc_ci_matches_proc(asah, marker, auc, low, high):
    y, scores = asah
    res = roc_auc_ci(y, scores[marker])
    assert res.auc == pytest.approx(auc, abs=TOL)
    assert (res.n_positive, res.n_negative) == (41, 72)
    if low is not None:
        assert res.ci_low == pytest.approx(low, abs=TOL)
        assert res.ci_high == pytest.approx(high, abs=TOL)
    assert res.se == pytest.approx(np.sqrt(res.variance))


# pROC: roc.test(roc(aSAH$outcome, aSAH$a), roc(aSAH$outcome, aSAH$b)), DeLong's paired test
PROC_TESTS = [
    ("wfns", "s100b", 2.20898359144091, 0.0271757822291882, 0.0104061769564846, 0.174214419249478),
    ("wfns", "ndka", 2.79777591868904, 0.00514557970691098, None, None),
    ("ndka", "s100b", -1.39077002573558, 0.164295175223054, None, None),
]


@pytest.mark.parametrize(("a", "b", "z", "p", "low", "high"), PROC_TESTS)
def test_delong_roc_test_matches_proc(asah, a, b, z, p, low, high):
    y, scores = asah
    res = delong_roc_test(y, scores[a], scores[b])
    assert res.z == pytest.approx(z, abs=TOL)
    assert res.p_value == pytest.approx(p, abs=TOL)
    assert res.difference == pytest.approx(res.auc_a - res.auc_b)
    if low is not None:
        assert res.ci_low == pytest.approx(low, abs=TOL)
        assert res.ci_high == pytest.approx(high, abs=TOL)


def test_asah_direction_is_higher_score_positive(asah):
    # pROC picks direction "<" (controls below cases by median) for all three markers, the
    # convention our functions assume; if it did not, the comparison above would be void
    y, scores = asah
    for s in scores.values():
        assert np.median(s[~y]) < np.median(s[y])


def test_csv_helpers_match_proc_and_are_json(asah_csv):
    ci = roc_ci_from_csv(asah_csv, "outcome", "ndka", positive="Poor")
    assert ci["auc"] == pytest.approx(0.611957994579946, abs=TOL)
    assert ci["ci_low"] == pytest.approx(0.501244999271703, abs=TOL)
    assert ci["ci_high"] == pytest.approx(0.722670989888189, abs=TOL)
    assert ci["positive"] == "Poor"
    test = roc_test_from_csv(asah_csv, "outcome", "wfns", "s100b", positive="Poor")
    assert test["z"] == pytest.approx(2.20898359144091, abs=TOL)
    assert test["p_value"] == pytest.approx(0.0271757822291882, abs=TOL)
    json.dumps(ci, allow_nan=False)
    json.dumps(test, allow_nan=False)


def test_csv_string_truth_without_positive_is_refused(asah_csv):
    with pytest.raises(ValueError, match=r"\['Good', 'Poor'\].*positive="):
        roc_ci_from_csv(asah_csv, "outcome", "wfns")


def test_csv_errors_name_the_problem(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("label,score\n0,0.1\n1,0.9\n0,NA\n1,0.7\n")
    with pytest.raises(ValueError, match="line 4: column 'score' is missing"):
        roc_ci_from_csv(path, "label", "score")
    path.write_text("label,score\n0,0.1\n1,high\n")
    with pytest.raises(ValueError, match="line 3: column 'score' has 'high'"):
        roc_ci_from_csv(path, "label", "score")
    with pytest.raises(ValueError, match="no column \\['prob'\\]"):
        roc_ci_from_csv(path, "label", "prob")


def test_csv_zero_one_truth_needs_no_positive(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("label,score\n0,0.1\n0,0.4\n1,0.35\n1,0.8\n")
    res = roc_ci_from_csv(path, "label", "score")
    assert res["auc"] == pytest.approx(0.75)
    assert res["positive"] == "1"
    # one case per class short of a variance: the CI is null in JSON, not NaN
    path.write_text("label,score\n0,0.1\n0,0.4\n1,0.35\n")
    res = roc_ci_from_csv(path, "label", "score")
    assert res["auc"] == pytest.approx(0.5) and res["ci_low"] is None
    json.dumps(res, allow_nan=False)


# --------------------------------------------------------------------------- DeLong internals


def brute_force_delong(y, scores):
    """DeLong 1988 by its definition, O(m n) pairs, to check the mid-rank shortcut."""
    x, z = scores[:, y], scores[:, ~y]
    psi = (x[:, :, None] > z[:, None, :]) + 0.5 * (x[:, :, None] == z[:, None, :])
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    return psi.mean(axis=(1, 2)), np.cov(v10) / x.shape[1] + np.cov(v01) / z.shape[1]


def test_sun_xu_placements_equal_definition_with_ties():
    rng = np.random.default_rng(1)
    y = rng.random(60) < 0.4
    scores = rng.integers(0, 6, size=(3, 60)).astype(float)  # five-point scale: many ties
    p = delong_placements(y, scores)
    auc, cov = brute_force_delong(y, scores)
    np.testing.assert_allclose(p.auc, auc, atol=1e-12)
    np.testing.assert_allclose(p.covariance(), cov, atol=1e-12)
    for k in range(3):
        assert p.auc[k] == pytest.approx(roc_auc_score(y, scores[k]), abs=1e-12)


def test_identical_scores_give_z0_p1_like_proc(asah):
    y, scores = asah
    res = delong_roc_test(y, scores["wfns"], scores["wfns"])
    assert (res.difference, res.se, res.z, res.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_delong_test_is_antisymmetric(asah):
    y, scores = asah
    ab = delong_roc_test(y, scores["wfns"], scores["ndka"])
    ba = delong_roc_test(y, scores["ndka"], scores["wfns"])
    assert ab.z == pytest.approx(-ba.z) and ab.p_value == pytest.approx(ba.p_value)
    assert (ab.ci_low, ab.ci_high) == pytest.approx((-ba.ci_high, -ba.ci_low))
    assert -1 <= ab.correlation <= 1


def test_ci_is_clipped_to_unit_interval():
    y = np.array([0, 0, 0, 1, 1, 1])
    res = roc_auc_ci(y, [0.1, 0.2, 0.7, 0.6, 0.8, 0.9])  # AUC 8/9 with a wide interval
    assert res.auc == pytest.approx(8 / 9)
    assert res.ci_high == 1.0 and res.auc + 1.96 * res.se > 1.0
    perfect = roc_auc_ci(y, [0.1, 0.2, 0.3, 0.6, 0.8, 0.9])
    assert (perfect.auc, perfect.ci_low, perfect.ci_high) == (1.0, 1.0, 1.0)


def test_wider_alpha_gives_narrower_ci(asah):
    y, scores = asah
    ci95 = roc_auc_ci(y, scores["s100b"])
    ci80 = roc_auc_ci(y, scores["s100b"], alpha=0.2)
    assert ci95.ci_low < ci80.ci_low < ci80.auc < ci80.ci_high < ci95.ci_high


@pytest.mark.parametrize(
    ("y", "score", "message"),
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "no negative cases"),
        ([0, 0, 0], [0.1, 0.2, 0.3], "no positive cases"),
        ([0, 1, 2], [0.1, 0.2, 0.3], "must be 0/1"),
        (["b", "m", "m"], [0.1, 0.2, 0.3], "pass positive="),
        ([0, 1, 1], [0.1, np.nan, 0.3], "NaN"),
        ([0, 1, 1], [0.1, 0.3], "has 2 values but y_true has 3"),
    ],
)
def test_bad_inputs_raise_clear_errors(y, score, message):
    with pytest.raises(ValueError, match=message):
        roc_auc_ci(y, score)


def test_delong_test_needs_two_per_class():
    with pytest.raises(ValueError, match="at least 2 positive and 2 negative"):
        delong_roc_test([0, 0, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])


@pytest.mark.parametrize(
    ("values", "positive", "expected"),
    [
        ([0, 1, 1], None, [False, True, True]),
        ([True, False], None, [True, False]),
        ([0.0, 1.0], None, [False, True]),
        (["0", " 1"], None, [False, True]),
        (["False", "TRUE"], None, [False, True]),
        (["Good", "Poor", "Good"], "Poor", [False, True, False]),
        (["benign", "malignant"], "malignant", [False, True]),
        (["benign", "benign"], "malignant", ValueError),  # typo or wrong column
        (["a", "b", "c"], "a", ValueError),
        ([1, 2, 2], 2, [False, True, True]),
    ],
)
def test_binary_labels_table(values, positive, expected):
    if expected is ValueError:
        with pytest.raises(ValueError):
            binary_labels(values, positive=positive)
    else:
        assert binary_labels(values, positive=positive).tolist() == expected


# --------------------------------------------------------------------------- curve, threshold


def test_roc_curve_points_match_sklearn_with_ties():
    rng = np.random.default_rng(2)
    y = rng.random(80) < 0.5
    score = rng.integers(0, 10, 80) / 10
    fpr, tpr, thr = roc_curve_points(y, score)
    sk_fpr, sk_tpr, sk_thr = roc_curve(y, score, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert thr[0] == np.inf
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(y, score))


def test_youden_threshold_hand_example_and_rule():
    y = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1])
    score = np.arange(10) / 10
    res = youden_threshold(y, score)
    # at 0.6: tp 4/5, fp 0/5 (J 0.8); at 0.4: tp 5/5, fp 1/5 (J 0.8): the tie goes to 0.4
    assert res.threshold == pytest.approx(0.4)
    assert (res.sensitivity, res.specificity) == pytest.approx((1.0, 0.8))
    assert res.youden_j == pytest.approx(0.8)
    # binary_metrics applies the same rule: positive when score >= threshold
    m = binary_metrics(y, score, res.threshold)
    assert (m.tp, m.fp, m.tn, m.fn) == (5, 1, 4, 0)
    assert m.sensitivity.estimate == res.sensitivity
    assert m.specificity.estimate == res.specificity


def test_youden_threshold_is_deterministic_under_permutation(asah):
    y, scores = asah
    first = youden_threshold(y, scores["s100b"])
    order = np.random.default_rng(3).permutation(y.size)
    assert youden_threshold(y[order], scores["s100b"][order]) == first


# --------------------------------------------------------------------------- proportions


# Newcombe (1998) Table II, method 3 (Wilson score without continuity correction)
@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        (29, 29, 0.8830, 1.0),
    ],
)
def test_wilson_matches_newcombe(k, n, low, high):
    p = wilson_interval(k, n)
    assert (p.ci_low, p.ci_high) == pytest.approx((low, high), abs=5e-5)
    assert p.estimate == k / n


def test_wilson_closed_forms_at_the_edges():
    z2 = 1.959963984540054**2
    assert wilson_interval(0, 10).ci_high == pytest.approx(z2 / (10 + z2))
    assert wilson_interval(0, 10).ci_low == 0.0
    assert wilson_interval(10, 10).ci_low == pytest.approx(10 / (10 + z2))
    assert wilson_interval(1, 1).ci_high == 1.0


@pytest.mark.parametrize(("k", "n"), [(0, 0), (3, 2), (-1, 5), (1.5, 4)])
def test_wilson_rejects_impossible_counts(k, n):
    with pytest.raises(ValueError):
        wilson_interval(k, n)


def test_binary_metrics_counts_and_intervals():
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    score = [0.9, 0.8, 0.7, 0.2, 0.6, 0.4, 0.3, 0.2, 0.1, 0.0]
    m = binary_metrics(y, score, 0.5)
    assert (m.tp, m.fp, m.tn, m.fn) == (3, 1, 5, 1)
    assert m.sensitivity == wilson_interval(3, 4)
    assert m.specificity == wilson_interval(5, 6)
    assert m.ppv == wilson_interval(3, 4)
    assert m.npv == wilson_interval(5, 6)
    assert m.accuracy == wilson_interval(8, 10)
    json.dumps(m.to_dict(), allow_nan=False)


def test_binary_metrics_zero_denominators_are_none():
    m = binary_metrics([0, 0, 0], [0.1, 0.2, 0.3], threshold=0.9)
    assert m.sensitivity is None and m.ppv is None  # no positives, nothing called positive
    assert m.specificity.estimate == 1.0 and m.npv.estimate == 1.0
    assert m.to_dict()["sensitivity"] is None


@pytest.mark.parametrize(
    ("only_a", "only_b", "both", "method", "p"),
    [
        (1, 6, 10, "exact", 0.125),  # 2 * P(Bin(7, .5) <= 1) = 2 * 8/128
        (0, 0, 5, "exact", 1.0),
        (5, 5, 0, "exact", 1.0),
        # (18 - 1)^2 / 42 = 6.881 on 1 df: p = erfc(sqrt(6.881 / 2))
        (30, 12, 0, "chi2-cc", 0.00871191296),
    ],
)
def test_mcnemar_table(only_a, only_b, both, method, p):
    a = [1] * only_a + [0] * only_b + [1] * both
    b = [0] * only_a + [1] * only_b + [1] * both
    res = mcnemar_test(a, b)
    assert (res.only_a, res.only_b, res.method) == (only_a, only_b, method)
    assert res.p_value == pytest.approx(p, abs=1e-11)
    if method == "chi2-cc":
        assert res.statistic == pytest.approx(17**2 / 42)


def test_mcnemar_switches_to_chi_square_at_the_documented_count():
    n = MCNEMAR_EXACT_BELOW
    below = mcnemar_test([1] * (n - 1), [0] * (n - 1))
    at = mcnemar_test([1] * n, [0] * n)
    assert (below.method, at.method) == ("exact", "chi2-cc")
    with pytest.raises(ValueError, match="3 cases but correct_b has 2"):
        mcnemar_test([1, 0, 1], [1, 0])


# --------------------------------------------------------------------------- calibration


def test_brier_score_by_hand():
    assert brier_score([1, 0, 1, 0], [0.9, 0.1, 0.6, 0.5]) == pytest.approx(
        (0.01 + 0.01 + 0.16 + 0.25) / 4
    )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        brier_score([1, 0], [1.2, 0.1])


def test_calibration_uniform_bins_by_hand():
    y = [0, 0, 1, 1, 1, 0]
    prob = [0.05, 0.15, 0.12, 0.95, 1.0, 0.55]
    cc = calibration_curve(y, prob, n_bins=10)
    # bins [0, .1), [.1, .2), [.5, .6), [.9, 1]; the other six are empty and left out
    assert cc.bins.tolist() == [0, 1, 5, 9]
    assert cc.counts.tolist() == [1, 2, 1, 2]
    np.testing.assert_allclose(cc.mean_predicted, [0.05, 0.135, 0.55, 0.975])
    np.testing.assert_allclose(cc.observed_frequency, [0.0, 0.5, 0.0, 1.0])
    assert cc.bin_edges.size == 11


def test_calibration_quantile_bins_hold_equal_counts():
    rng = np.random.default_rng(4)
    prob = rng.random(1000) ** 3  # bunched near 0, as a rare-disease model's output is
    y = rng.random(1000) < prob
    cc = calibration_curve(y, prob, n_bins=5, strategy="quantile")
    assert cc.counts.tolist() == [200] * 5
    # a calibrated model: observed frequencies near mean predictions
    np.testing.assert_allclose(cc.observed_frequency, cc.mean_predicted, atol=0.1)
    tied = calibration_curve([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3], strategy="quantile")
    assert tied.counts.tolist() == [4]
    with pytest.raises(ValueError, match="strategy"):
        calibration_curve(y, prob, strategy="kmeans")


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_is_seeded_and_brackets_delong(asah):
    y, scores = asah
    first = bootstrap_auc_ci(y, scores["s100b"], n_boot=500, seed=7)
    assert bootstrap_auc_ci(y, scores["s100b"], n_boot=500, seed=7) == first
    assert first.auc == pytest.approx(0.731368563685637, abs=TOL)
    assert first.ci_low < first.auc < first.ci_high
    delong = roc_auc_ci(y, scores["s100b"])
    # the two methods estimate the same sampling variability
    assert first.ci_high - first.ci_low == pytest.approx(delong.ci_high - delong.ci_low, rel=0.2)
    assert first.n_valid == 500 and first.n_clusters == y.size


def test_cluster_bootstrap_resamples_patients_not_rows(asah):
    y, scores = asah
    s = scores["ndka"]
    # every patient contributes three identical videos: no new information
    y3, s3, patient = np.repeat(y, 3), np.repeat(s, 3), np.repeat(np.arange(y.size), 3)
    per_patient = bootstrap_auc_ci(y, s, n_boot=300, seed=1)
    clustered = bootstrap_auc_ci(y3, s3, groups=patient, n_boot=300, seed=1)
    naive = bootstrap_auc_ci(y3, s3, n_boot=300, seed=1)
    # resampling patients reproduces the one-row-per-patient analysis exactly...
    assert (clustered.ci_low, clustered.ci_high) == (per_patient.ci_low, per_patient.ci_high)
    assert clustered.n_clusters == y.size
    # ...while resampling rows pretends to three times the data: about 1/sqrt(3) as wide
    ratio = (naive.ci_high - naive.ci_low) / (clustered.ci_high - clustered.ci_low)
    assert 0.45 < ratio < 0.75


def test_bootstrap_drops_single_class_replicates():
    y = np.array([1, 0, 0, 0, 0, 0])
    res = bootstrap_auc_ci(y, np.arange(6.0), n_boot=200, seed=0)
    assert 0 < res.n_valid < 200  # a sixth of draws miss the lone positive
    with pytest.raises(ValueError, match="groups has 2 values"):
        bootstrap_auc_ci(y, np.arange(6.0), groups=[1, 2])


# --------------------------------------------------------------------------- boundary


def test_ml_stats_and_mrmc_do_not_import_django():
    code = "import sys, ml.stats, ml.mrmc; assert 'django' not in sys.modules, 'django imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
