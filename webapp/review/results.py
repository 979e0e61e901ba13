"""The analysis of a finished reader study, from its read rows (ml.stats, ml.mrmc).

Rating = the reader's likelihood of malignancy (0-100); the binary call gives sensitivity,
specificity and accuracy. Group figures (junior, senior, all) are means over the group's
readers, as reader-averaged figures are reported in MRMC studies. The change in accuracy is
given in percentage points (aided - unaided) and in per cent of the unaided accuracy. The
model is compared with each reader by the paired DeLong test on the cases it scored; the
aided-minus-unaided AUROC by Obuchowski-Rockette with Hillis degrees of freedom."""

from __future__ import annotations

from statistics import mean

import numpy as np

from ml.mrmc import or_analysis
from ml.stats import binary_metrics, delong_roc_test, roc_auc_ci
from webapp.review.models import Experience, Modality, ReaderStudy
from webapp.review.selectors import reads_of_study
from webapp.training.models import Prediction

CSV_COLUMNS = ["reader", "case", "modality", "truth", "rating"]


def study_rows(*, study: ReaderStudy) -> list[dict]:
    """One row per submitted reader x case x modality, in the iMRMC/MRMCaov long format."""
    reads = reads_of_study(study=study).filter(submitted_at__isnull=False).order_by(
        "reader__user__username", "modality", "case_id")
    return [{"reader": r.reader.user.username, "case": r.case.video_id, "modality": r.modality,
             "truth": r.case.truth, "rating": r.likelihood,
             "call": r.call, "experience": r.reader.experience, "seconds": r.seconds}
            for r in reads]


def _metrics(truth: np.ndarray, rating: np.ndarray, malignant_call: np.ndarray) -> dict:
    auc = roc_auc_ci(truth, rating)
    m = binary_metrics(truth, malignant_call.astype(float), 0.5)
    return {"auroc": auc.auc, "auroc_ci": (auc.ci_low, auc.ci_high),
            "sensitivity": m.sensitivity.estimate, "specificity": m.specificity.estimate,
            "accuracy": m.accuracy.estimate}


def _change(unaided: float, aided: float) -> dict:
    points = (aided - unaided) * 100
    relative = (aided - unaided) / unaided * 100 if unaided else None
    return {"points": points, "percent": relative}


def _mrmc(rows: list[dict]) -> dict | None:
    try:
        result = or_analysis(rows)
    except ValueError as exc:
        return {"error": str(exc)}
    # Modalities sort as ("aided", "unaided"), so the difference is aided minus unaided.
    diff = result.differences[0]
    assert (diff.modality_a, diff.modality_b) == (Modality.AIDED, Modality.UNAIDED)
    if not (diff.se > 0 and np.isfinite(diff.df)):
        return {"error": "No variability to test: every reader's AUROC is the same in both "
                         f"modalities ({diff.estimate:+.3f} difference)."}
    aucs = dict(zip(result.modalities, result.modality_auc, strict=True))
    return {"auc_unaided": float(aucs[Modality.UNAIDED]), "auc_aided": float(aucs[Modality.AIDED]),
            "difference": diff.estimate, "ci": (diff.ci_low, diff.ci_high), "df": diff.df,
            "t": diff.t, "p_value": diff.p_value, "f": result.f, "n_readers": len(result.readers),
            "n_cases": result.n_cases}


def study_results(*, study: ReaderStudy) -> dict:
    rows = study_rows(study=study)
    cases = sorted({row["case"] for row in rows})
    truth_of = {row["case"]: row["truth"] for row in rows}
    truth = np.array([truth_of[c] for c in cases])
    predictions: dict[int, float] = {}
    if study.model_version_id:
        predictions = dict(Prediction.objects.filter(
            model_version_id=study.model_version_id, video_id__in=cases)
            .values_list("video_id", "probability"))
    scored = [c for c in cases if c in predictions]
    scored_idx = np.array([cases.index(c) for c in scored], dtype=int)
    model_scores = np.array([predictions[c] for c in scored])
    model = None
    if len(scored) and 0 < truth[scored_idx].sum() < len(scored):
        model = {"auroc": roc_auc_ci(truth[scored_idx], model_scores).auc, "n_cases": len(scored),
                 "version": study.model_version}

    readers = []
    by_reader: dict[str, dict] = {}
    for row in rows:
        entry = by_reader.setdefault(row["reader"], {"experience": row["experience"]})
        entry.setdefault(row["modality"], {})[row["case"]] = row
    for name in sorted(by_reader):
        entry = by_reader[name]
        out = {"reader": name, "experience": entry["experience"]}
        for modality in Modality.values:
            reads = entry.get(modality, {})
            rating = np.array([reads[c]["rating"] for c in cases], dtype=float)
            malignant = np.array([reads[c]["call"] == "malignant" for c in cases])
            out[modality] = _metrics(truth, rating, malignant)
            out[modality]["seconds"] = mean(reads[c]["seconds"] or 0.0 for c in cases)
            if model is not None:
                try:
                    test = delong_roc_test(truth[scored_idx], model_scores, rating[scored_idx])
                except ValueError as exc:  # fewer than 2 cases of a class
                    out[modality]["vs_model"] = {"error": str(exc)}
                else:
                    out[modality]["vs_model"] = {"difference": test.difference,
                                                 "ci": (test.ci_low, test.ci_high),
                                                 "p_value": test.p_value}
        out["accuracy_change"] = _change(out["unaided"]["accuracy"], out["aided"]["accuracy"])
        readers.append(out)

    groups = []
    for key, label in [(Experience.JUNIOR, "Junior"), (Experience.SENIOR, "Senior"),
                       ("all", "All readers")]:
        members = [r for r in readers if key == "all" or r["experience"] == key]
        if not members:
            continue
        group = {"key": key, "label": label, "n_readers": len(members)}
        for modality in Modality.values:
            group[modality] = {k: mean(r[modality][k] for r in members) for k in (
                "auroc", "sensitivity", "specificity", "accuracy", "seconds")}
        group["accuracy_change"] = _change(group["unaided"]["accuracy"],
                                           group["aided"]["accuracy"])
        names = {r["reader"] for r in members}
        group["mrmc"] = _mrmc([row for row in rows if row["reader"] in names])
        groups.append(group)
    return {"n_cases": len(cases), "n_malignant": int(truth.sum()), "model": model,
            "readers": readers, "groups": groups}
