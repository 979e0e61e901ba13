"""The training label of a nodule, derived from its pathology (DOMAIN.md, "Reference
standard"): surgical histology first; otherwise cytology, Bethesda II benign and VI
malignant; anything else is indeterminate, kept but excluded from training. How NIFTP counts
is the setting THYROCINE["NIFTP_LABEL"].

One table, used both in Python (`training_label`) and in SQL (`label_expression`, for
filtering case lists), so the two cannot disagree.
"""

from __future__ import annotations

from django.db.models import Case, CharField, Q, Value, When

from annotations.conf import setting
from annotations.models import Bethesda, Diagnosis, Pathology, PathologyOutcome, PathologySource

BENIGN = "benign"
MALIGNANT = "malignant"
EXCLUDED = "excluded"  # indeterminate (or NIFTP when set so): kept, not trained on
MISSING = "missing"  # no pathology recorded yet

LABEL_CHOICES = [
    (BENIGN, "Benign"),
    (MALIGNANT, "Malignant"),
    (EXCLUDED, "Indeterminate (excluded)"),
    (MISSING, "No pathology"),
]

BENIGN_DIAGNOSES = frozenset({
    Diagnosis.FOLLICULAR_NODULAR_DISEASE, Diagnosis.FOLLICULAR_ADENOMA,
    Diagnosis.ONCOCYTIC_ADENOMA, Diagnosis.THYROIDITIS,
})
LOW_RISK_DIAGNOSES = frozenset({Diagnosis.NIFTP, Diagnosis.UMP})
MALIGNANT_DIAGNOSES = frozenset(Diagnosis) - BENIGN_DIAGNOSES - LOW_RISK_DIAGNOSES


def niftp_label() -> str:
    value = setting("NIFTP_LABEL")
    return {"benign": BENIGN, "malignant": MALIGNANT}.get(value, EXCLUDED)


def diagnosis_label(diagnosis: str) -> str:
    if diagnosis in BENIGN_DIAGNOSES:
        return BENIGN
    if diagnosis in MALIGNANT_DIAGNOSES:
        return MALIGNANT
    if diagnosis == Diagnosis.NIFTP:
        return niftp_label()
    return EXCLUDED  # tumour of uncertain malignant potential


def label_of(pathology: Pathology | None) -> str:
    """benign, malignant, excluded or missing."""
    if pathology is None:
        return MISSING
    if pathology.source == PathologySource.SURGERY:
        if pathology.diagnosis:
            return diagnosis_label(pathology.diagnosis)
        return {PathologyOutcome.BENIGN: BENIGN,
                PathologyOutcome.MALIGNANT: MALIGNANT}.get(pathology.outcome, EXCLUDED)
    if pathology.bethesda == Bethesda.II:
        return BENIGN
    if pathology.bethesda == Bethesda.VI:
        return MALIGNANT
    return EXCLUDED


def training_label(pathology: Pathology | None) -> int | None:
    """1 malignant, 0 benign, None when the nodule is not trained on."""
    return {BENIGN: 0, MALIGNANT: 1}.get(label_of(pathology))


def label_expression(prefix: str = "pathology__") -> Case:
    """`label_of` as an SQL expression over a queryset of nodules (or with another prefix)."""
    surgery = Q(**{f"{prefix}source": PathologySource.SURGERY})
    diagnosis = f"{prefix}diagnosis"
    whens = [
        When(Q(**{f"{prefix}isnull": True}), then=Value(MISSING)),
        When(surgery & Q(**{f"{diagnosis}__in": list(BENIGN_DIAGNOSES)}), then=Value(BENIGN)),
        When(surgery & Q(**{f"{diagnosis}__in": list(MALIGNANT_DIAGNOSES)}),
             then=Value(MALIGNANT)),
        When(surgery & Q(**{diagnosis: Diagnosis.NIFTP}), then=Value(niftp_label())),
        When(surgery & Q(**{diagnosis: Diagnosis.UMP}), then=Value(EXCLUDED)),
        When(surgery & Q(**{f"{prefix}outcome": PathologyOutcome.BENIGN}), then=Value(BENIGN)),
        When(surgery & Q(**{f"{prefix}outcome": PathologyOutcome.MALIGNANT}),
             then=Value(MALIGNANT)),
        When(surgery, then=Value(EXCLUDED)),
        When(Q(**{f"{prefix}bethesda": Bethesda.II}), then=Value(BENIGN)),
        When(Q(**{f"{prefix}bethesda": Bethesda.VI}), then=Value(MALIGNANT)),
    ]
    return Case(*whens, default=Value(EXCLUDED), output_field=CharField())
