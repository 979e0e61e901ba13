"""Tests for ml.mrmc against MRMCaov and OR-DBM MRMC / RJafroc results for the Van Dyke study."""

import json
from decimal import Decimal

import numpy as np
import pytest

from ml.mrmc import mrmc_data, or_analysis, read_mrmc_csv, to_mrmc_rows
from ml.stats import roc_auc_ci


def printed(text: str) -> object:
    """Match a published number to the precision it was printed with (half a last digit)."""
    exponent = Decimal(text).as_tuple().exponent
    return pytest.approx(float(text), abs=0.5 * 10.0**exponent, rel=0)


@pytest.fixture(scope="module")
def vandyke(vandyke_csv):
    return read_mrmc_csv(vandyke_csv)


@pytest.fixture(scope="module")
def delong(vandyke):
    return or_analysis(vandyke, cov_method="delong")


@pytest.fixture(scope="module")
def jackknife(vandyke):
    return or_analysis(vandyke, cov_method="jackknife")


# --------------------------------------------------------------------------- published results


def test_vandyke_design(delong):
    assert delong.modalities == ("1", "2")
    assert delong.readers == ("1", "2", "3", "4", "5")
    assert (delong.n_cases, delong.n_positive, delong.n_negative) == (114, 45, 69)


def test_vandyke_reader_aucs_match_rjafroc(delong):
    # RJafroc dataset02 (= VanDyke), StSignificanceTesting(FOM = "Wilcoxon")$FOMs$foms
    expected = [
        ["0.91964573", "0.85877617", "0.90386473", "0.97310789", "0.82979066"],
        ["0.94782609", "0.90531401", "0.92173913", "0.99935588", "0.92995169"],
    ]
    for i, row in enumerate(expected):
        for j, text in enumerate(row):
            assert delong.reader_auc[i, j] == printed(text)
    assert delong.modality_auc.tolist() == [printed("0.89703704"), printed("0.94083736")]


# MRMCaov: mrmc(empirical_auc(truth, rating), treatment, reader, case, VanDyke, cov = DeLong)
DELONG = {
    "var_error": "0.0007921325",
    "cov1": "0.0003420090",
    "cov2": "0.0003395265",
    "cov3": "0.0002358497",
    "f": "4.484854",
    "df2": "15.06611",
    "p_value": "0.05123303",
}
# OR-DBM MRMC 2.51, MRMCaov (cov = jackknife) and RJafroc (method = "OR")
JACKKNIFE = {
    "var_error": "0.00080228827",
    "cov1": "0.00034661371",
    "cov2": "0.00034407483",
    "cov3": "0.00023902837",
    "ms_t": "0.0047961705",
    "ms_tr": "0.00055103062",
    "f": "4.456319",
    "df2": "15.25967",
    "p_value": "0.05166569",
}


@pytest.mark.parametrize(("method", "expected"), [("delong", DELONG), ("jackknife", JACKKNIFE)])
def test_vandyke_or_test_matches_published(vandyke, method, expected):
    res = or_analysis(vandyke, cov_method=method)
    for name, text in expected.items():
        assert getattr(res, name) == printed(text), name
    assert res.df1 == 1


@pytest.mark.parametrize(
    ("method", "low", "high"),
    [
        ("delong", "-0.0878671960", "0.0002665519"),
        ("jackknife", "-0.0879594986", "0.0003588544"),
    ],
)
def test_vandyke_difference_ci_matches_published(vandyke, method, low, high):
    (diff,) = or_analysis(vandyke, cov_method=method).differences
    assert (diff.modality_a, diff.modality_b) == ("1", "2")
    assert diff.estimate == printed("-0.043800322")
    assert (diff.ci_low, diff.ci_high) == (printed(low), printed(high))
    # with two modalities the t test of the difference is the F test
    assert diff.t**2 == pytest.approx(or_analysis(vandyke, cov_method=method).f)


def test_vandyke_single_modality_cis_match_rjafroc(jackknife):
    # RJafroc StSignificanceTesting(dataset02, "Wilcoxon", "OR")$RRRC$ciAvgRdrEachTrt
    expected = [
        ("0.033173597", "12.744648", "0.82522360", "0.96885048", "0.00048396180"),
        ("0.021566368", "12.710190", "0.89413783", "0.98753689", "0.00020418785"),
    ]
    for single, (se, df, low, high, cov2) in zip(
        jackknife.modality_estimates, expected, strict=True
    ):
        assert (single.se, single.df, single.cov2) == (printed(se), printed(df), printed(cov2))
        assert (single.ci_low, single.ci_high) == (printed(low), printed(high))
    assert jackknife.modality_estimates[0].ms_r == printed("0.0030826287")
    assert jackknife.modality_estimates[0].var_error == printed("0.00101410277")


# --------------------------------------------------------------------------- internals


def test_delong_covariance_diagonal_is_the_single_reader_variance(vandyke, delong):
    d = mrmc_data(vandyke)
    for i in range(2):
        for j in range(5):
            single = roc_auc_ci(d.truth, d.ratings[i, j])
            assert delong.covariance[i * 5 + j, i * 5 + j] == pytest.approx(single.variance)
            assert delong.reader_auc[i, j] == pytest.approx(single.auc)


def small_study(seed: int, readers: int = 3, cases: int = 16) -> list[dict]:
    rng = np.random.default_rng(seed)
    truth = np.r_[np.ones(cases // 2, int), np.zeros(cases - cases // 2, int)]
    rows = []
    for modality in ("unaided", "aided"):
        for reader in range(readers):
            ratings = rng.integers(1, 6, cases) + truth * (2 if modality == "aided" else 1)
            rows += [
                {
                    "reader": f"r{reader}",
                    "modality": modality,
                    "case": k,
                    "truth": int(truth[k]),
                    "rating": int(ratings[k]),
                }
                for k in range(cases)
            ]
    return rows


def test_fast_jackknife_equals_leave_one_case_out():
    rows = small_study(5)
    res = or_analysis(rows, cov_method="jackknife")
    d = mrmc_data(rows)
    t, r, c = d.ratings.shape
    loo = np.empty((c, t * r))
    for k in range(c):
        keep = np.arange(c) != k
        for idx in range(t * r):
            loo[k, idx] = roc_auc_ci(d.truth[keep], d.ratings.reshape(t * r, c)[idx, keep]).auc
    dev = loo - loo.mean(axis=0)
    np.testing.assert_allclose(res.covariance, (c - 1) / c * dev.T @ dev, atol=1e-14)


def test_input_layouts_agree(vandyke):
    by_columns = or_analysis(vandyke)
    records = [
        dict(zip(vandyke, values, strict=True)) for values in zip(*vandyke.values(), strict=True)
    ]
    structured = np.rec.fromarrays([np.asarray(vandyke[k]) for k in vandyke], names=list(vandyke))
    for other in (or_analysis(records), or_analysis(structured)):
        assert other.f == by_columns.f and other.df2 == by_columns.df2
    renamed = {("treatment" if k == "modality" else k): v for k, v in vandyke.items()}
    assert or_analysis(renamed, modality="treatment").p_value == by_columns.p_value


def test_modality_order_sets_the_sign_only():
    rows = small_study(6)
    flipped = [{**row, "modality": "z" if row["modality"] == "aided" else "a"} for row in rows]
    res, res_flipped = or_analysis(rows), or_analysis(flipped)
    assert res.modalities == ("aided", "unaided") and res_flipped.modalities == ("a", "z")
    assert res_flipped.differences[0].estimate == pytest.approx(-res.differences[0].estimate)
    assert res_flipped.f == pytest.approx(res.f)


def test_numeric_labels_sort_numerically():
    rows = [
        {**row, "reader": {"r0": "2", "r1": "10", "r2": "9"}[row["reader"]]}
        for row in small_study(7)
    ]
    assert or_analysis(rows).readers == ("2", "9", "10")


def test_result_is_strict_json(delong):
    out = json.loads(json.dumps(delong.to_dict(), allow_nan=False))
    assert out["differences"][0]["modality_a"] == "1"
    assert len(out["reader_auc"]) == 2 and len(out["covariance"]) == 10


# --------------------------------------------------------------------------- errors


def drop_first(rows):
    return rows[1:]


def duplicate_first(rows):
    return rows + rows[:1]


def conflicting_truth(rows):
    return [{**rows[0], "truth": 1 - rows[0]["truth"]}] + rows[1:]


def one_modality(rows):
    return [row for row in rows if row["modality"] == "aided"]


def one_reader(rows):
    return [row for row in rows if row["reader"] == "r0"]


def missing_rating(rows):
    return [{**rows[0], "rating": float("nan")}] + rows[1:]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (drop_first, "not fully crossed: reader 'r0' has no rating of case 0"),
        (duplicate_first, "rated case 0 in modality 'unaided' 2 times"),
        (conflicting_truth, "case 0 has different truth values"),
        (one_modality, "at least 2 modalities"),
        (one_reader, "at least 2 readers"),
        (missing_rating, "NaN"),
    ],
)
def test_invalid_studies_raise_clear_errors(mutate, message):
    with pytest.raises(ValueError, match=message):
        or_analysis(mutate(small_study(8)))


def test_unknown_cov_method_and_missing_column():
    rows = small_study(9)
    with pytest.raises(ValueError, match="cov_method"):
        or_analysis(rows, cov_method="bootstrap")
    with pytest.raises(ValueError, match="no field \\['modality'\\]"):
        or_analysis([{k: v for k, v in row.items() if k != "modality"} for row in rows])


# --------------------------------------------------------------------------- export


def test_export_rows_round_trip(vandyke):
    rows = to_mrmc_rows(vandyke)
    assert len(rows) == 1140 and set(rows[0]) == {"reader", "treatment", "case", "truth", "rating"}
    assert or_analysis(rows, modality="treatment").f == or_analysis(vandyke).f


def test_imrmc_rows_have_one_truth_row_per_case(vandyke):
    rows = to_mrmc_rows(vandyke, layout="imrmc")
    truth_rows = [row for row in rows if row["readerID"] == "truth"]
    assert len(truth_rows) == 114 and sum(row["score"] for row in truth_rows) == 45
    assert all(row["modalityID"] == "truth" for row in truth_rows)
    assert len(rows) == 114 + 1140
