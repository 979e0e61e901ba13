"""Multi-reader multi-case (MRMC) ROC analysis: Obuchowski-Rockette with Hillis degrees of freedom.

A reader study (every reader reads every case in every modality, e.g. unaided and AI-aided) is
analysed with random readers and random cases, so that the conclusion applies to other
radiologists and other patients. Each reader x modality gets an empirical (Wilcoxon,
trapezoidal) AUC; the AUCs follow the Obuchowski-Rockette (1995) two-way ANOVA model with
correlated errors, whose covariance is estimated from the cases by DeLong's method (default)
or by the jackknife. The F test uses Hillis's (2007) denominator degrees of freedom.

R's MRMCaov (Smith, Hillis & Pesce) and OR-DBM MRMC / RJafroc are the references; the tests
reproduce their published results for the Van Dyke et al. (1993) data.

Input format
------------
One row per reader x modality x case, "long" like MRMCaov's `VanDyke` data frame:

    reader, modality, case, truth, rating
    1,      1,        1,    0,     1

`truth` is 0/1 per case (1 = diseased/malignant; the same on every row of a case), `rating`
any number where higher means "more likely diseased" (a 1-5 confidence scale, a 0-100 slider,
a probability). The design must be fully crossed. `or_analysis` takes this as a list of dicts,
a dict of columns (lists or arrays), or a NumPy structured array; `read_mrmc_csv` reads it from
a CSV. `to_mrmc_rows` writes MRMCaov-style rows or iMRMC's format (`readerID, caseID,
modalityID, score` plus one truth row per case) so that a result can be cross-checked in R.

References
----------
Obuchowski NA, Rockette HE (1995). Hypothesis testing of diagnostic accuracy for multiple
    readers and multiple tests: an ANOVA approach with dependent observations.
    Commun Stat Simul Comput 24:285-308.
Hillis SL (2007). A comparison of denominator degrees of freedom methods for multiple observer
    ROC analysis. Stat Med 26:596-619.
Hillis SL, Berbaum KS, Metz CE (2008). Recent developments in the Dorfman-Berbaum-Metz
    procedure for multireader ROC study analysis. Acad Radiol 15:647-661.
DeLong ER, DeLong DM, Clarke-Pearson DL (1988). Biometrics 44:837-845.
Van Dyke CW et al. (1993). Cine MRI in the diagnosis of thoracic aortic dissection.
    79th RSNA Meetings.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import stats

from ml.stats import binary_labels, delong_placements, to_jsonable

__all__ = [
    "MrmcData",
    "ORDifference",
    "ORModality",
    "ORResult",
    "mrmc_data",
    "or_analysis",
    "read_mrmc_csv",
    "to_mrmc_rows",
]

CovMethod = Literal["delong", "jackknife"]

# column names accepted for the modality by read_mrmc_csv: ours, MRMCaov's and RJafroc's
_MODALITY_ALIASES = ("modality", "treatment", "test")


@dataclass(frozen=True)
class MrmcData:
    """A validated, fully crossed reader study."""

    modalities: tuple[Any, ...]  # sorted; differences are reported as earlier minus later
    readers: tuple[Any, ...]
    cases: tuple[Any, ...]
    truth: np.ndarray  # (c,) bool, True = diseased
    ratings: np.ndarray  # (t, r, c) float, ratings[i, j, k] = modality i, reader j, case k


def _sorted_labels(values: list[Any]) -> tuple[Any, ...]:
    """Distinct labels, numerically sorted when they all read as numbers ("2" before "10")."""
    unique = list(dict.fromkeys(values))
    try:
        return tuple(sorted(unique, key=lambda v: (float(v), str(v))))
    except (TypeError, ValueError):
        return tuple(sorted(unique, key=str))


def _columns(data: Any, names: Sequence[str]) -> dict[str, list[Any]]:
    """The named columns of any accepted input layout, as Python lists."""
    if isinstance(data, np.ndarray) and data.dtype.names:
        table: Mapping[str, Any] = {name: data[name] for name in data.dtype.names}
    elif isinstance(data, Mapping):
        table = data
    elif isinstance(data, Sequence) and data and all(isinstance(row, Mapping) for row in data):
        missing = sorted({n for row in data for n in names if n not in row})
        if missing:
            raise ValueError(f"some rows of the reader-study data have no field {missing}")
        return {n: [row[n] for row in data] for n in names}
    else:
        raise TypeError(
            "data must be a non-empty list of dicts, a dict of columns or a NumPy structured array"
        )
    missing = [n for n in names if n not in table]
    if missing:
        raise ValueError(f"no column {missing} in the reader-study data; found {list(table)}")
    return {n: np.asarray(table[n]).tolist() for n in names}


def mrmc_data(
    data: Any,
    *,
    reader: str = "reader",
    modality: str = "modality",
    case: str = "case",
    truth: str = "truth",
    rating: str = "rating",
) -> MrmcData:
    """Validate long-format reader-study rows and arrange them as a (modality, reader, case) cube.

    Raises ValueError for a design that is not fully crossed (a reader skipped a case in a
    modality), duplicated readings, a case whose truth differs between rows, non-numeric or
    missing ratings, and studies with fewer than two modalities, readers, or cases of a class.
    """
    if isinstance(data, MrmcData):
        return data
    cols = _columns(data, [reader, modality, case, truth, rating])
    n_rows = len(cols[reader])
    if n_rows == 0:
        raise ValueError("the reader-study data has no rows")
    modalities = _sorted_labels(cols[modality])
    readers = _sorted_labels(cols[reader])
    cases = _sorted_labels(cols[case])
    t, r, c = len(modalities), len(readers), len(cases)
    if t < 2:
        raise ValueError(f"need at least 2 modalities to compare, found {list(modalities)}")
    if r < 2:
        raise ValueError(f"need at least 2 readers for random-reader analysis, found {r}")

    ti = _index(cols[modality], modalities)
    ri = _index(cols[reader], readers)
    ci = _index(cols[case], cases)
    try:
        values = np.asarray(cols[rating], dtype=float)
    except (TypeError, ValueError):
        raise ValueError("ratings must be numbers") from None
    if not np.isfinite(values).all():
        raise ValueError("ratings contain missing (NaN) or infinite values")
    y = binary_labels(np.asarray(cols[truth]))

    counts = np.zeros((t, r, c), dtype=np.int64)
    np.add.at(counts, (ti, ri, ci), 1)
    if (counts > 1).any():
        i, j, k = np.argwhere(counts > 1)[0]
        raise ValueError(
            f"reader {readers[j]!r} rated case {cases[k]!r} in modality {modalities[i]!r} "
            f"{counts[i, j, k]} times; each reading must appear once"
        )
    if (counts == 0).any():
        i, j, k = np.argwhere(counts == 0)[0]
        raise ValueError(
            f"the design is not fully crossed: reader {readers[j]!r} has no rating of case "
            f"{cases[k]!r} in modality {modalities[i]!r} ({int((counts == 0).sum())} of "
            f"{counts.size} readings missing)"
        )
    ratings = np.empty((t, r, c))
    ratings[ti, ri, ci] = values

    case_truth = np.zeros(c, dtype=np.int64)
    np.add.at(case_truth, ci, y)
    per_case = case_truth / (t * r)
    mixed = np.flatnonzero((per_case > 0) & (per_case < 1))
    if mixed.size:
        raise ValueError(f"case {cases[mixed[0]]!r} has different truth values on different rows")
    truth_arr = per_case == 1
    m = int(truth_arr.sum())
    if m < 2 or c - m < 2:
        raise ValueError(
            f"need at least 2 diseased and 2 non-diseased cases, found {m} and {c - m}"
        )
    return MrmcData(modalities, readers, cases, truth_arr, ratings)


def _index(values: list[Any], labels: tuple[Any, ...]) -> np.ndarray:
    lookup = {v: i for i, v in enumerate(labels)}
    return np.array([lookup[v] for v in values])


def read_mrmc_csv(path: str | Path) -> dict[str, list[Any]]:
    """Read a long-format reader-study CSV into columns for `or_analysis`.

    The modality column may be called `modality`, `treatment` (MRMCaov, e.g. VanDyke) or
    `test`; it is returned as `modality`. Reader, modality and case labels stay strings (they
    sort numerically when they are all numbers), ratings become floats and truth is checked by
    `mrmc_data`.
    """
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        mod = next((name for name in _MODALITY_ALIASES if name in header), None)
        needed = ["reader", "case", "truth", "rating"]
        missing = [n for n in needed if n not in header] + ([] if mod else ["modality"])
        if missing:
            raise ValueError(f"{path}: no column {missing}; the columns are {header}")
        cols: dict[str, list[Any]] = {
            "reader": [],
            "modality": [],
            "case": [],
            "truth": [],
            "rating": [],
        }
        for row in reader:
            for name in needed:
                cols[name].append((row[name] or "").strip())
            cols["modality"].append((row[mod] or "").strip())
    try:
        cols["rating"] = [float(v) for v in cols["rating"]]
    except ValueError:
        raise ValueError(f"{path}: column 'rating' has a value that is not a number") from None
    return cols


def to_mrmc_rows(
    data: Any, *, layout: Literal["mrmcaov", "imrmc"] = "mrmcaov", **columns: str
) -> list[dict[str, Any]]:
    """Rows to cross-check a study in R.

    "mrmcaov": `reader, treatment, case, truth, rating`, the layout of MRMCaov's `VanDyke`, for
    `mrmc(empirical_auc(truth, rating), treatment, reader, case, data = ...)`.
    "imrmc": `readerID, caseID, modalityID, score`, with one extra row per case whose readerID
    and modalityID are "truth" and whose score is 0/1, the layout of iMRMC's `dfMRMC_example`.
    `columns` are the column-name keywords of `mrmc_data`.
    """
    d = mrmc_data(data, **columns)
    rows: list[dict[str, Any]] = []
    if layout == "imrmc":
        rows += [
            {"readerID": "truth", "caseID": case, "modalityID": "truth", "score": int(y)}
            for case, y in zip(d.cases, d.truth, strict=True)
        ]
    elif layout != "mrmcaov":
        raise ValueError(f"layout must be 'mrmcaov' or 'imrmc', got {layout!r}")
    for i, mod in enumerate(d.modalities):
        for j, rdr in enumerate(d.readers):
            for k, case in enumerate(d.cases):
                score = float(d.ratings[i, j, k])
                if layout == "imrmc":
                    rows.append(
                        {"readerID": rdr, "caseID": case, "modalityID": mod, "score": score}
                    )
                else:
                    rows.append(
                        {
                            "reader": rdr,
                            "treatment": mod,
                            "case": case,
                            "truth": int(d.truth[k]),
                            "rating": score,
                        }
                    )
    return rows


# --------------------------------------------------------------------------- covariance


def _auc_covariance(
    truth: np.ndarray, flat: np.ndarray, method: CovMethod
) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and their (k, k) covariance over cases, for k = modality x reader ratings."""
    p = delong_placements(truth, flat)
    if method == "delong":
        # DeLong's structural-component estimator (ddof 1), as MRMCaov's DeLong()
        return p.auc, p.covariance()
    if method == "jackknife":
        # Leave-one-case-out AUCs straight from the placements, exact for the Wilcoxon AUC:
        # dropping positive i gives (m AUC - V10_i)/(m - 1), dropping negative j
        # (n AUC - V01_j)/(n - 1); no need to recompute c AUCs per reader and modality.
        m, n = p.n_positive, p.n_negative
        auc = p.auc[:, None]
        loo = np.concatenate([(m * auc - p.v10) / (m - 1), (n * auc - p.v01) / (n - 1)], axis=1)
        c = m + n
        dev = loo - loo.mean(axis=1, keepdims=True)
        # the jackknife covariance (c - 1)/c * sum of cross-products = (c-1)^2/c * sample cov
        return p.auc, (c - 1) / c * (dev @ dev.T)
    raise ValueError(f"cov_method must be 'delong' or 'jackknife', got {method!r}")


# --------------------------------------------------------------------------- OR analysis


@dataclass(frozen=True)
class ORDifference:
    """Difference of reader-averaged AUCs between two modalities, random readers and cases."""

    modality_a: Any
    modality_b: Any
    estimate: float  # mean AUC of a minus mean AUC of b
    se: float  # sqrt(2/r * (MS(TR) + r * max(Cov2 - Cov3, 0)))
    df: float  # Hillis (2007) denominator degrees of freedom
    t: float
    p_value: float  # two-sided
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class ORModality:
    """One modality's reader-averaged AUC from its own data (Hillis 2007, single-test CI)."""

    modality: Any
    auc: float
    ms_r: float  # reader mean square of this modality's AUCs
    var_error: float  # mean error variance of this modality's AUCs
    cov2: float  # mean covariance between different readers in this modality
    se: float  # sqrt(MS(R)/r + max(Cov2, 0))
    df: float  # (MS(R) + r max(Cov2, 0))^2 / (MS(R)^2 / (r - 1))
    ci_low: float  # clipped to [0, 1], as MRMCaov does
    ci_high: float


@dataclass(frozen=True)
class ORResult:
    """Obuchowski-Rockette analysis with random readers and random cases (Hillis 2007 df)."""

    modalities: tuple[Any, ...]
    readers: tuple[Any, ...]
    n_cases: int
    n_positive: int
    n_negative: int
    cov_method: str
    alpha: float
    reader_auc: np.ndarray  # (t, r) empirical AUC per modality x reader
    modality_auc: np.ndarray  # (t,) reader-averaged AUC
    covariance: np.ndarray  # (t*r, t*r) error covariance, modality-major: index i * r + j
    var_error: float  # mean error variance of an AUC
    cov1: float  # same reader, different modalities
    cov2: float  # different readers, same modality
    cov3: float  # different readers, different modalities
    ms_t: float  # modality mean square
    ms_tr: float  # modality x reader interaction mean square
    f: float  # MS(T) / (MS(TR) + r max(Cov2 - Cov3, 0))
    df1: int
    df2: float  # Hillis (2007): denominator^2 / (MS(TR)^2 / ((t-1)(r-1)))
    p_value: float
    differences: tuple[ORDifference, ...]  # every pair of modalities, earlier minus later
    modality_estimates: tuple[ORModality, ...]  # one per modality

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(asdict(self))


def _f_sf(f: float, df1: int, df2: float) -> float:
    if math.isinf(df2):  # F(df1, inf) is chi-square(df1) / df1
        return float(stats.chi2.sf(f * df1, df1))
    return float(stats.f.sf(f, df1, df2))


def _satterthwaite(denominator: float, ms: float, df_ms: int) -> float:
    return math.inf if ms == 0.0 else denominator**2 / (ms**2 / df_ms)


def or_analysis(
    data: Any,
    *,
    cov_method: CovMethod = "delong",
    alpha: float = 0.05,
    **columns: str,
) -> ORResult:
    """Obuchowski-Rockette (1995) test of equal reader-averaged AUCs, random readers and cases.

    With t modalities, r readers, AUC_ij of modality i and reader j, and the error covariances
    Var (same i, j), Cov1 (same reader), Cov2 (same modality), Cov3 (neither) averaged over the
    matching pairs of the case covariance matrix:

        F = MS(T) / [MS(TR) + r max(Cov2 - Cov3, 0)]  on (t - 1, df2) degrees of freedom,
        df2 = [MS(TR) + r max(Cov2 - Cov3, 0)]^2 / [MS(TR)^2 / ((t - 1)(r - 1))]   (Hillis 2007),

    and each pairwise difference of modality means gets a t interval with the same df2.
    The max(., 0) keeps the test conservative when the covariance estimates disagree with the
    model (Hillis 2008). `cov_method` is "delong" (DeLong 1988 structural components) or
    "jackknife" (leave-one-case-out, as OR-DBM MRMC); both need a fully crossed design.
    `columns` rename the input columns (e.g. modality="treatment"); see `mrmc_data`.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    d = mrmc_data(data, **columns)
    t, r, c = d.ratings.shape
    auc_flat, cov = _auc_covariance(d.truth, d.ratings.reshape(t * r, c), cov_method)
    theta = auc_flat.reshape(t, r)

    mod = np.repeat(np.arange(t), r)
    rdr = np.tile(np.arange(r), t)
    same_m = mod[:, None] == mod[None, :]
    same_r = rdr[:, None] == rdr[None, :]
    var_error = float(np.mean(np.diag(cov)))
    cov1 = float(cov[~same_m & same_r].mean())
    cov2 = float(cov[same_m & ~same_r].mean())
    cov3 = float(cov[~same_m & ~same_r].mean())

    mean_m = theta.mean(axis=1)
    mean_r = theta.mean(axis=0)
    grand = theta.mean()
    ms_t = float(r * np.sum((mean_m - grand) ** 2) / (t - 1))
    df_tr = (t - 1) * (r - 1)
    ms_tr = float(np.sum((theta - mean_m[:, None] - mean_r[None, :] + grand) ** 2) / df_tr)

    denominator = ms_tr + r * max(cov2 - cov3, 0.0)
    f = ms_t / denominator if denominator > 0 else math.inf
    df2 = _satterthwaite(denominator, ms_tr, df_tr)
    p_value = _f_sf(f, t - 1, df2)

    se_diff = math.sqrt(2.0 / r * denominator)
    crit = float(stats.t.ppf(1 - alpha / 2, df2))
    differences = []
    for a in range(t):
        for b in range(a + 1, t):
            est = float(mean_m[a] - mean_m[b])
            tstat = est / se_diff if se_diff > 0 else math.copysign(math.inf, est)
            differences.append(
                ORDifference(
                    modality_a=d.modalities[a],
                    modality_b=d.modalities[b],
                    estimate=est,
                    se=se_diff,
                    df=df2,
                    t=tstat,
                    p_value=float(2 * stats.t.sf(abs(tstat), df2)),
                    ci_low=est - crit * se_diff,
                    ci_high=est + crit * se_diff,
                )
            )

    singles = []
    off_reader = ~np.eye(r, dtype=bool)
    for i in range(t):
        block = cov[i * r : (i + 1) * r, i * r : (i + 1) * r]
        cov2_i = float(block[off_reader].mean())
        ms_r = float(np.var(theta[i], ddof=1))
        den_i = ms_r + r * max(cov2_i, 0.0)
        se_i = math.sqrt(den_i / r)
        df_i = _satterthwaite(den_i, ms_r, r - 1)
        crit_i = float(stats.t.ppf(1 - alpha / 2, df_i))
        singles.append(
            ORModality(
                modality=d.modalities[i],
                auc=float(mean_m[i]),
                ms_r=ms_r,
                var_error=float(np.mean(np.diag(block))),
                cov2=cov2_i,
                se=se_i,
                df=df_i,
                ci_low=min(max(float(mean_m[i]) - crit_i * se_i, 0.0), 1.0),
                ci_high=min(max(float(mean_m[i]) + crit_i * se_i, 0.0), 1.0),
            )
        )

    m = int(d.truth.sum())
    return ORResult(
        modalities=d.modalities,
        readers=d.readers,
        n_cases=c,
        n_positive=m,
        n_negative=c - m,
        cov_method=cov_method,
        alpha=alpha,
        reader_auc=theta,
        modality_auc=mean_m,
        covariance=cov,
        var_error=var_error,
        cov1=cov1,
        cov2=cov2,
        cov3=cov3,
        ms_t=ms_t,
        ms_tr=ms_tr,
        f=f,
        df1=t - 1,
        df2=df2,
        p_value=p_value,
        differences=tuple(differences),
        modality_estimates=tuple(singles),
    )
