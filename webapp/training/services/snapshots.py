"""Dataset snapshots: freeze a case list with labels and splits; export it as the dataset
directory `ml.data` reads."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import QuerySet

from annotations import labels
from annotations.conf import setting as annotations_setting
from annotations.models import AuditAction, Centre, Nodule, User, VideoStatus
from annotations.services import audit_record
from webapp.training.conf import training_dir
from webapp.training.models import DatasetSnapshot, SnapshotCase, Split
from webapp.training.services.common import ValidationError, require_train

# The paper's 70/10/10 of the development centres (the remaining 10% is the external centre).
FRACTIONS = (0.7, 0.1, 0.1)

EXCLUDED_NO_PATHOLOGY = "no pathology recorded"
EXCLUDED_INDETERMINATE = "label indeterminate (excluded by the label rule)"
EXCLUDED_NO_VIDEO = "no ready video"
EXCLUDED_NO_ANNOTATION = "no accepted consensus annotation"


class SnapshotError(Exception):
    """A snapshot cannot be exported as frozen; the message says which case and why."""


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", str(text).strip())


def _eligible_video(nodule: Nodule):
    """The nodule's newest ready original video with a training clip (one case per nodule,
    as in the study: one dynamic video per nodule)."""
    videos = [v for v in nodule.videos.all()
              if v.status == VideoStatus.READY and v.clip and not v.duplicate_of_id]
    if not videos:
        return None
    return max(videos, key=lambda v: (v.processed_at is not None, v.processed_at, v.pk))


def eligible_cases(
    *, centres: QuerySet[Centre] | list[Centre], only_accepted: bool = False,
) -> tuple[list[dict], Counter]:
    """(cases, excluded reasons) for `centres`: nodules whose label is known by the platform's
    label rule (`annotations.labels`) and that have a ready video; each with its video's
    accepted consensus annotation, if any (required with `only_accepted`)."""
    from annotations.selectors import consensus_annotations_for

    nodules = (Nodule.objects.filter(patient__centre__in=list(centres))
               .select_related("patient__centre", "pathology")
               .prefetch_related("videos").order_by("patient__centre__code", "patient__code",
                                                    "code"))
    cases, excluded = [], Counter()
    for nodule in nodules:
        pathology = getattr(nodule, "pathology", None)
        label = labels.training_label(pathology)
        if label is None:
            excluded[EXCLUDED_NO_PATHOLOGY if pathology is None else EXCLUDED_INDETERMINATE] += 1
            continue
        video = _eligible_video(nodule)
        if video is None:
            excluded[EXCLUDED_NO_VIDEO] += 1
            continue
        cases.append({"nodule": nodule, "video": video, "label": label,
                      "label_source": pathology.source})
    accepted = {a.video_id: a for a in consensus_annotations_for(
        videos=[c["video"].pk for c in cases])}
    kept = []
    for c in cases:
        annotation = accepted.get(c["video"].pk)
        if annotation is None and only_accepted:
            excluded[EXCLUDED_NO_ANNOTATION] += 1
            continue
        nodule, video = c["nodule"], c["video"]
        patient = nodule.patient
        kept.append({
            "case_id": "_".join([_safe(patient.centre.code), _safe(patient.code),
                                 _safe(nodule.code), f"v{video.pk}"]),
            "patient": patient.code,
            "centre": patient.centre.code,
            "label": c["label"],
            "label_source": c["label_source"],
            "video": video,
            "nodule_code": nodule.code,
            "annotation": annotation,
        })
    return kept, excluded


@transaction.atomic
def snapshot_freeze(
    *, user: User, name: str, centres: list[Centre], external_centres: list[Centre] = (),
    seed: int = 0, only_accepted: bool = False,
) -> DatasetSnapshot:
    """Freeze the eligible cases of `centres` (development) and `external_centres` (held out
    whole as the external test set): case list, labels, clips, the accepted consensus
    annotations (documents and versions) and a patient-level split, stratified by label and
    seeded (`ml.data.patient_level_split`)."""
    from ml.data import patient_level_split

    require_train(user)
    centres, external_centres = list(centres), list(external_centres)
    name = name.strip()
    if not name:
        raise ValidationError("A snapshot needs a name.")
    if not centres:
        raise ValidationError("Choose at least one development centre (train, validation and "
                              "internal test come from them).")
    overlap = {c.code for c in centres} & {c.code for c in external_centres}
    if overlap:
        raise ValidationError(f"{', '.join(sorted(overlap))} cannot be both a development and "
                              "an external-test centre.")
    cases, excluded = eligible_cases(centres=centres + external_centres,
                                     only_accepted=only_accepted)
    if not cases:
        reasons = ", ".join(f"{n} {r}" for r, n in excluded.items()) or "no nodules"
        raise ValidationError(f"No eligible case in these centres ({reasons}).")
    external_codes = [c.code for c in external_centres]
    split = patient_level_split(cases, FRACTIONS, external_centres=external_codes, seed=seed)
    counts: dict = {}
    centre_counts: dict = defaultdict(Counter)
    order = {s: i for i, s in enumerate(Split.values)}
    for c in sorted(cases, key=lambda c: order[split[c["case_id"]]]):
        block = counts.setdefault(split[c["case_id"]],
                                  {"n": 0, "benign": 0, "malignant": 0, "annotated": 0})
        block["n"] += 1
        block["malignant" if c["label"] == 1 else "benign"] += 1
        block["annotated"] += c["annotation"] is not None
        centre_counts[c["centre"]][split[c["case_id"]]] += 1
    # Created whole: the row is immutable from its INSERT on (migration 0002).
    snapshot = DatasetSnapshot.objects.create(
        name=name[:200], created_by=user,
        centres=sorted(c.code for c in centres), external_centres=sorted(external_codes),
        eligibility={
            "label": "benign or malignant by the platform's label rule (surgical histology "
                     "first, else Bethesda II benign / VI malignant)",
            "niftp": annotations_setting("NIFTP_LABEL"),
            "video": "ready, not a duplicate; the newest per nodule",
            "annotations": "only cases with an accepted consensus annotation" if only_accepted
            else "the accepted consensus annotation where there is one (masks, boxes)",
        },
        only_accepted=only_accepted,
        seed=seed, fractions=list(FRACTIONS), counts=counts,
        centre_counts={k: dict(v) for k, v in sorted(centre_counts.items())},
        excluded=dict(excluded),
    )
    SnapshotCase.objects.bulk_create([SnapshotCase(
        snapshot=snapshot, video=c["video"], case_id=c["case_id"], centre_code=c["centre"],
        patient_code=c["patient"], nodule_code=c["nodule_code"], label=c["label"],
        label_source=c["label_source"], split=split[c["case_id"]], clip=c["video"].clip,
        clip_shape=list(c["video"].clip_shape or []),
        frames_version=c["video"].frames_version,
        region=list(c["video"].region) if c["video"].region else None,
        annotation_id=c["annotation"].pk if c["annotation"] else None,
        annotation_version=c["annotation"].version if c["annotation"] else None,
        annotation=c["annotation"].data if c["annotation"] else None,
    ) for c in cases])
    audit_record(user=user, action=AuditAction.CREATE, obj=snapshot,
                 detail={"cases": len(cases), "counts": snapshot.counts,
                         "external": snapshot.external_centres, "seed": seed})
    return snapshot


def snapshot_export(*, snapshot: DatasetSnapshot, out: Path, user: User | None = None) -> dict:
    """Write the dataset directory `ml.data` reads: `manifest.csv`, `clips/<case>.npy`
    (copied from storage as frozen), `masks/` and `boxes/` from the frozen annotations
    (`annotations.annotation_format.training_targets`, aligned to the clip), the
    annotations' TI-RADS points in the manifest's `tirads_<feature>` columns, and
    `dataset.json`. `out` must not exist or be empty."""
    from annotations.annotation_format import tirads_training_points, training_targets
    from ml.data import CaseRecord, write_manifest

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SnapshotError(f"{out} is not empty; export into a new folder.")
    for sub in ("clips", "masks", "boxes"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    records = []
    for case in snapshot.cases.order_by("case_id"):
        rel = f"clips/{case.case_id}.npy"
        try:
            with default_storage.open(case.clip, "rb") as src, (out / rel).open("wb") as dst:
                shutil.copyfileobj(src, dst, 4 * 1024 * 1024)
        except (FileNotFoundError, OSError) as exc:
            raise SnapshotError(
                f"The clip of case {case.case_id} (video {case.video_id}) is missing from "
                f"storage ({case.clip}): the video was processed again after the snapshot "
                "was frozen, or its files were removed. Freeze a new snapshot.") from exc
        shape = np.load(out / rel, mmap_mode="r").shape
        if case.clip_shape and list(shape) != list(case.clip_shape):
            raise SnapshotError(f"The clip of case {case.case_id} is {list(shape)}, not the "
                                f"frozen {case.clip_shape}.")
        mask_rel = boxes_rel = None
        readings = {}
        if case.annotation is not None:
            readings = {f"tirads_{name}": points for name, points
                        in tirads_training_points(case.annotation).items()}
        if case.annotation is not None and case.region:
            mask, boxes = training_targets(case.annotation, n_frames=int(shape[0]),
                                           region=case.region, clip_hw=tuple(shape[1:]))
            mask_rel, boxes_rel = f"masks/{case.case_id}.npy", f"boxes/{case.case_id}.npy"
            np.save(out / mask_rel, mask)
            np.save(out / boxes_rel, boxes)
        records.append(CaseRecord(case.case_id, case.patient_code, case.centre_code,
                                  case.split, int(case.label), rel, mask_rel, boxes_rel,
                                  **readings))
    write_manifest(out / "manifest.csv", records)
    info = {"snapshot": snapshot.pk, "name": snapshot.name, "counts": snapshot.counts,
            "centres": snapshot.centres, "external_centres": snapshot.external_centres,
            "seed": snapshot.seed, "fractions": snapshot.fractions,
            "only_accepted": bool(snapshot.only_accepted),
            "annotations": {c.case_id: {"id": c.annotation_id, "version": c.annotation_version}
                            for c in snapshot.cases.exclude(annotation_id=None)},
            "created_at": snapshot.created_at.isoformat()}
    (out / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
    if user is not None:
        audit_record(user=user, action=AuditAction.EXPORT, obj=snapshot,
                     detail={"cases": len(records), "out": str(out)})
    return info


def snapshot_materialise(*, snapshot: DatasetSnapshot) -> Path:
    """The snapshot's dataset directory on this host, exported once and shared by its runs
    (a frozen snapshot never changes, so neither does its export)."""
    root = training_dir() / "datasets"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"snapshot-{snapshot.pk}-{snapshot.created_at:%Y%m%d%H%M%S%f}"
    if (target / "dataset.json").is_file():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".snapshot-{snapshot.pk}-", dir=root))
    try:
        snapshot_export(snapshot=snapshot, out=tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another run exported it meanwhile
            if not (target / "dataset.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
