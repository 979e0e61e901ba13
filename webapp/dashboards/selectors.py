"""Reads for the dashboards. Every case-level row starts from
`annotations.selectors.videos_visible_to`, so a centre's users see their own centres' cases
and platform roles see all; objects outside answer 404.

Each read is a fixed number of aggregate queries (values_list over joins and subqueries),
whatever the number of cases: the dashboards must stay fast on a registry of 10,000 videos.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from django.db.models import (
    Case,
    Count,
    Exists,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)

from annotations.labels import BENIGN, MALIGNANT, label_expression
from annotations.models import Annotation, AnnotationState, User, VideoStatus
from annotations.selectors import (
    centres_visible_to,
    nodules_visible_to,
    patients_visible_to,
    videos_visible_to,
)
from webapp.training.models import ModelState, ModelVersion, Prediction, SnapshotCase, Split

# Which cases a dashboard reads. Test splits come from the model's frozen snapshot (its stored
# split and label), so the numbers are those of the held-out sets the model never saw; "all"
# is every case with a benign or malignant pathology label now, training cases included.
SPLITS = [
    ("external_test", "External test"),
    ("internal_test", "Internal test"),
    ("test", "Internal and external test"),
    ("all", "All labelled cases (includes training cases)"),
]
SPLIT_NAMES = dict(SPLITS)
TEST_SPLITS = {"external_test": [Split.EXTERNAL_TEST], "internal_test": [Split.INTERNAL_TEST],
               "test": [Split.INTERNAL_TEST, Split.EXTERNAL_TEST]}

# Worklists: cells of the 2x2 table at the model's frozen threshold.
WORKLISTS = [
    ("all", "All cases"),
    ("fn", "False negatives"),
    ("fp", "False positives"),
    ("tp", "True positives"),
    ("tn", "True negatives"),
]
WORKLIST_NAMES = dict(WORKLISTS)

# How the registry's architectures are described in the comparison table (ml/models).
ARCH_GROUPS = {
    "irv2_cam": "3D calcification attention (the study model)",
    "irv2": "3D ablation: no attention",
    "r3d_18": "3D baseline", "r2plus1d_18": "3D baseline", "densenet121_3d": "3D baseline",
    "x3d_s": "3D baseline",
    "irv2_2d": "2D static baseline", "resnet18_2d": "2D static baseline",
    "densenet121_2d": "2D static baseline",
}


def model_versions_for_dashboard() -> list[ModelVersion]:
    """Every registered version, newest first. Their names, architectures and thresholds are
    not centre data; what a user sees of their performance comes from visible cases only."""
    return list(ModelVersion.objects.only(
        "id", "number", "arch", "preset", "threshold", "state", "snapshot_id", "created_at"))


def default_version(versions: list[ModelVersion]) -> ModelVersion | None:
    for v in versions:
        if v.state == ModelState.PRODUCTION:
            return v
    return versions[0] if versions else None


def _snapshot_cases(*, user: User, version: ModelVersion, split: str) -> QuerySet[SnapshotCase]:
    return SnapshotCase.objects.filter(
        snapshot_id=version.snapshot_id, split__in=TEST_SPLITS[split],
        video__in=videos_visible_to(user=user).values("pk"),
    )


@dataclass
class LabelledCases:
    """Visible cases of a split: video ids, their centre codes and labels (1 malignant)."""

    video_ids: np.ndarray  # (N,) int
    centres: np.ndarray  # (N,) str
    labels: np.ndarray  # (N,) int 0/1


def labelled_cases(*, user: User, version: ModelVersion, split: str) -> tuple[LabelledCases,
                                                                            QuerySet]:
    """The cases (one query) and a values("video_id") subquery of them for further joins."""
    if split in TEST_SPLITS:
        cases = _snapshot_cases(user=user, version=version, split=split)
        rows = list(cases.values_list("video_id", "centre_code", "label"))
        ids = cases.values("video_id")
    else:
        videos = (videos_visible_to(user=user)
                  .annotate(truth=label_expression("nodule__pathology__"))
                  .filter(truth__in=[BENIGN, MALIGNANT]))
        rows = [(pk, centre, int(truth == MALIGNANT)) for pk, centre, truth in
                videos.values_list("pk", "nodule__patient__centre__code", "truth")]
        ids = videos.values("pk")
    ids_arr = np.array([r[0] for r in rows], dtype=np.int64)
    return LabelledCases(
        video_ids=ids_arr,
        centres=np.array([r[1] for r in rows], dtype=object),
        labels=np.array([r[2] for r in rows], dtype=np.int64),
    ), ids


def prediction_scores(*, versions: list[ModelVersion], cases: LabelledCases,
                      video_ids: QuerySet) -> np.ndarray:
    """(len(versions), N) probabilities of each version on each case (NaN: no prediction), in
    one query."""
    scores = np.full((len(versions), cases.video_ids.size), np.nan)
    rows = np.array(Prediction.objects.filter(
        model_version__in=[v.pk for v in versions], video_id__in=video_ids,
    ).values_list("model_version_id", "video_id", "probability"), dtype=float).reshape(-1, 3)
    if not rows.size:
        return scores
    order = np.argsort(cases.video_ids, kind="stable")
    position = order[np.searchsorted(cases.video_ids, rows[:, 1].astype(np.int64),
                                     sorter=order)]
    row_of = {v.pk: i for i, v in enumerate(versions)}
    scores[[row_of[int(k)] for k in rows[:, 0]], position] = rows[:, 2]
    return scores


# --- Inventory ------------------------------------------------------------------------------


def centre_inventory(*, user: User) -> list[dict]:
    """Per visible centre: patients, nodules, videos, ready, annotated (any annotation),
    accepted (an accepted consensus), labelled nodules and the share malignant. Four grouped
    queries, each over one table and its parents (no fan-out of joined counts)."""
    centres = list(centres_visible_to(user=user).order_by("code").values_list(
        "pk", "code", "name"))
    patients = dict(patients_visible_to(user=user).values_list("centre_id")
                    .annotate(n=Count("pk")).values_list("centre_id", "n"))
    videos = {c: rest for c, *rest in (
        videos_visible_to(user=user)
        .annotate(
            has_annotation=Exists(Annotation.objects.filter(video=OuterRef("pk"))),
            has_consensus=Exists(Annotation.objects.filter(
                video=OuterRef("pk"), is_consensus=True, state=AnnotationState.ACCEPTED)))
        .values_list("nodule__patient__centre_id")
        .annotate(n=Count("pk"), ready=Count("pk", filter=Q(status=VideoStatus.READY)),
                  annotated=Count("pk", filter=Q(has_annotation=True)),
                  accepted=Count("pk", filter=Q(has_consensus=True)))
        .values_list("nodule__patient__centre_id", "n", "ready", "annotated", "accepted"))}
    labels: dict[int, dict[str, int]] = {}
    rows = (nodules_visible_to(user=user).annotate(truth=label_expression())
            .values_list("patient__centre_id", "truth").annotate(n=Count("pk"))
            .values_list("patient__centre_id", "truth", "n"))
    for centre_id, truth, n in rows:
        labels.setdefault(centre_id, {})[truth] = n
    out = []
    for pk, code, name in centres:
        n_videos, ready, annotated, accepted = videos.get(pk, (0, 0, 0, 0))
        lab = labels.get(pk, {})
        labelled = lab.get(BENIGN, 0) + lab.get(MALIGNANT, 0)
        out.append({
            "centre": code, "name": name, "patients": patients.get(pk, 0),
            "nodules": sum(lab.values()), "videos": n_videos, "ready": ready,
            "annotated": annotated, "accepted": accepted,
            "labelled": labelled, "malignant": lab.get(MALIGNANT, 0),
            "share_malignant": lab.get(MALIGNANT, 0) / labelled if labelled else None,
            "annotated_share": annotated / ready if ready else None,
            "accepted_share": accepted / ready if ready else None,
        })
    return out


# --- Worklists and case review --------------------------------------------------------------


def predictions_visible_to(*, user: User) -> QuerySet[Prediction]:
    return Prediction.objects.filter(video__in=videos_visible_to(user=user).values("pk"))


def worklist(*, user: User, version: ModelVersion, split: str, kind: str = "all",
             centre: str = "") -> QuerySet[Prediction]:
    """Visible predictions of `version` on the split's cases with their truth (`truth` 1 or
    0), filtered to one cell of the 2x2 table at the frozen threshold; highest probability
    first."""
    preds = predictions_visible_to(user=user).filter(model_version=version)
    if split in TEST_SPLITS:
        cases = SnapshotCase.objects.filter(snapshot_id=version.snapshot_id,
                                            split__in=TEST_SPLITS[split], video=OuterRef("video"))
        preds = preds.annotate(truth=Subquery(cases.values("label")[:1])).filter(
            truth__isnull=False)
    else:
        preds = preds.annotate(truth_label=label_expression("video__nodule__pathology__")).filter(
            truth_label__in=[BENIGN, MALIGNANT]).annotate(truth=Case(
                When(truth_label=MALIGNANT, then=Value(1)), default=Value(0),
                output_field=IntegerField()))
    positive = Q(probability__gte=version.threshold)
    cells = {"tp": Q(truth=1) & positive, "fn": Q(truth=1) & ~positive,
             "fp": Q(truth=0) & positive, "tn": Q(truth=0) & ~positive}
    if kind in cells:
        preds = preds.filter(cells[kind])
    if centre:
        preds = preds.filter(video__nodule__patient__centre__code=centre)
    return preds.order_by("-probability", "pk")


def case_review(*, user: User, prediction_id: int) -> Prediction | None:
    return (predictions_visible_to(user=user)
            .select_related("model_version", "video__nodule__patient__centre",
                            "video__nodule__pathology")
            .filter(pk=prediction_id).first())


def case_truth(*, prediction: Prediction) -> tuple[str, str]:
    """(split, label) of the case in the model's snapshot, ('', '') when it was not in it."""
    row = SnapshotCase.objects.filter(snapshot_id=prediction.model_version.snapshot_id,
                                      video_id=prediction.video_id).values_list(
        "split", "label").first()
    if row is None:
        return "", ""
    return row[0], MALIGNANT if row[1] else BENIGN


def case_annotation(*, user: User, prediction: Prediction) -> Annotation | None:
    """The accepted consensus annotation of the case's video, else the newest visible one."""
    from annotations.selectors import annotations_visible_to

    rows = annotations_visible_to(user=user).filter(video_id=prediction.video_id)
    return rows.order_by(
        Case(When(is_consensus=True, state=AnnotationState.ACCEPTED, then=Value(0)),
             default=Value(1)), "-updated_at").first()


def heatmap_source(*, user: User, prediction_id: int) -> dict | None:
    """The few fields the heatmap download needs, in one query (404 when not visible)."""
    return (predictions_visible_to(user=user)
            .filter(pk=prediction_id, video__status=VideoStatus.READY)
            .values("id", "heatmaps", "frames_version").first())
