"""Dataset snapshots: eligibility, patient-level stratified seeded splits, external centres,
immutability, and the export that `python -m ml train` reads."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.db import DatabaseError, transaction

from tests.conftest import make_user
from tests.webapp.training.conftest import accept_consensus, frozen_snapshot, make_case
from webapp.training import services
from webapp.training.models import DatasetSnapshot, SnapshotCase


@pytest.fixture
def engineer(centre_a):
    return make_user("ml_engineer", centre_a)


def test_freeze_splits_by_patient_stratified_with_external_centre(cohort, engineer):
    snapshot = frozen_snapshot(engineer, cohort)
    cases = list(snapshot.cases.all())
    assert len(cases) == 48
    # The external centre is external test, whole; nothing else is.
    assert {c.split for c in cases if c.centre_code == "CB"} == {"external_test"}
    assert "external_test" not in {c.split for c in cases if c.centre_code == "CA"}
    # A patient's nodules never straddle splits.
    splits_of = defaultdict(set)
    for c in cases:
        splits_of[(c.centre_code, c.patient_code)].add(c.split)
    assert all(len(s) == 1 for s in splits_of.values())
    # Every split holds both classes, and the counts stored are the cases'.
    for split in ("train", "val", "internal_test", "external_test"):
        labels = [c.label for c in cases if c.split == split]
        assert snapshot.counts[split] == {"n": len(labels), "benign": labels.count(0),
                                          "malignant": labels.count(1), "annotated": 0}
        assert 0 < sum(labels) < len(labels), split
    assert snapshot.counts["train"]["n"] > 3 * snapshot.counts["val"]["n"]
    assert snapshot.external_centres == ["CB"] and snapshot.centres == ["CA"]
    # The case points at the exact clip that was frozen.
    case = cases[0]
    assert case.clip == case.video.clip and case.frames_version == case.video.frames_version


def test_split_is_seeded(cohort, engineer):
    def split_of(snapshot):
        return {c.video_id: c.split for c in snapshot.cases.all()}

    first = split_of(frozen_snapshot(engineer, cohort, seed=3))
    assert split_of(frozen_snapshot(engineer, cohort, seed=3)) == first
    assert split_of(frozen_snapshot(engineer, cohort, seed=4)) != first


def test_only_labelled_cases_with_a_ready_video_are_eligible(training_env, centre_a, engineer):
    for i in range(4):
        make_case(centre_a, label=i % 2, seed=i)
    make_case(centre_a, label=None, bethesda="III")  # indeterminate: excluded by the rule
    make_case(centre_a, label=1, ready=False)  # video still processing
    make_case(centre_a, label=None)  # no pathology
    snapshot = services.snapshot_freeze(user=engineer, name="s", centres=[centre_a])
    assert snapshot.n_cases == 4
    assert snapshot.excluded == {
        "label indeterminate (excluded by the label rule)": 1,
        "no ready video": 1,
        "no pathology recorded": 1,
    }


def test_freeze_refuses_what_cannot_make_a_snapshot(training_env, centre_a, centre_b, engineer):
    with pytest.raises(services.ValidationError, match="both a development and an external"):
        services.snapshot_freeze(user=engineer, name="s", centres=[centre_a],
                                 external_centres=[centre_a])
    with pytest.raises(services.ValidationError, match="No eligible case"):
        services.snapshot_freeze(user=engineer, name="s", centres=[centre_b])
    reader = make_user("reader", centre_a)
    with pytest.raises(services.PermissionDenied):
        services.snapshot_freeze(user=reader, name="s", centres=[centre_a])
    assert not DatasetSnapshot.objects.exists()


def test_a_frozen_snapshot_cannot_be_changed(cohort, engineer):
    snapshot = frozen_snapshot(engineer, cohort)
    with pytest.raises(DatabaseError), transaction.atomic():
        DatasetSnapshot.objects.filter(pk=snapshot.pk).update(name="edited")
    with pytest.raises(DatabaseError), transaction.atomic():
        SnapshotCase.objects.filter(snapshot=snapshot).update(split="train")
    snapshot.refresh_from_db()
    assert snapshot.name == "tiny"


def test_export_dataset_writes_what_ml_reads(cohort, engineer, tmp_path):
    from ml.data import ClipDataset, ClipSpec, read_manifest

    snapshot = frozen_snapshot(engineer, cohort)
    out = tmp_path / "export"
    call_command("export_dataset", "--snapshot", str(snapshot.pk), "--out", str(out))
    records = read_manifest(out)
    frozen = {c.case_id: c for c in snapshot.cases.all()}
    assert {r.case_id for r in records} == set(frozen)
    for r in records:
        case = frozen[r.case_id]
        assert (r.split, r.label, r.centre, r.patient) == (
            case.split, case.label, case.centre_code, case.patient_code)
        assert r.mask is None and r.boxes is None  # no annotations recorded yet
        with default_storage.open(case.clip) as f:
            assert np.array_equal(np.load(out / r.clip), np.load(f))
    item = ClipDataset(out, "train", ClipSpec(frames=8, size=(32, 32)))[0]
    assert tuple(item["clip"].shape) == (1, 8, 32, 32)
    # A second export into the same folder is refused rather than mixed.
    with pytest.raises(CommandError, match="not empty"):
        call_command("export_dataset", "--snapshot", str(snapshot.pk), "--out", str(out))


def test_export_names_the_case_whose_clip_is_gone(cohort, engineer, tmp_path):
    snapshot = frozen_snapshot(engineer, cohort)
    case = snapshot.cases.order_by("case_id").last()
    default_storage.delete(case.clip)  # as reprocessing does with the old frame store
    with pytest.raises(CommandError, match=f"case {case.case_id} .*processed again"):
        call_command("export_dataset", "--snapshot", str(snapshot.pk),
                     "--out", str(tmp_path / "out"))


def test_accepted_annotations_are_frozen_and_exported_as_masks_and_boxes(cohort, engineer,
                                                                         tmp_path):
    from annotations.annotation_format import training_targets
    from annotations.models import Annotation, Video
    from ml.data import ClipDataset, ClipSpec, read_manifest

    videos = list(Video.objects.filter(nodule__patient__centre=cohort["development"])
                  .order_by("pk")[:6])
    annotations = [accept_consensus(v) for v in videos]
    snapshot = frozen_snapshot(engineer, cohort)
    annotated = {c.video_id: c for c in snapshot.cases.exclude(annotation_id=None)}
    assert set(annotated) == {v.pk for v in videos}
    case = annotated[videos[0].pk]
    assert (case.annotation_id, case.annotation_version) == (annotations[0].pk, 3)
    assert case.region == [10, 20, 320, 240]
    assert sum(c.get("annotated", 0) for c in snapshot.counts.values()) == 6
    frozen = dict(case.annotation)
    # Reopened and edited later: the snapshot keeps the version it used.
    Annotation.objects.filter(pk=annotations[0].pk).update(
        version=4, data={**frozen, "marks": []})

    out = tmp_path / "export"
    call_command("export_dataset", "--snapshot", str(snapshot.pk), "--out", str(out))
    records = {r.case_id: r for r in read_manifest(out)}
    assert sum(1 for r in records.values() if r.mask) == 6
    record = records[case.case_id]
    mask, boxes = training_targets(frozen, n_frames=12, region=[10, 20, 320, 240],
                                   clip_hw=(32, 32))
    assert np.array_equal(np.load(out / record.mask), mask)
    assert np.array_equal(np.load(out / record.boxes), boxes, equal_nan=True)
    assert (mask == 1).any()  # the punctate focus survives, in the frames it was marked
    assert not mask[:3].any() and mask[3:9].any()
    assert np.isfinite(boxes).all()
    ds = ClipDataset(out, None, ClipSpec(frames=8, size=(32, 32)))
    item = ds[[r.case_id for r in ds.records].index(case.case_id)]
    assert bool(item["has_mask"]) and int(item["mask"].max()) == 1
    assert json.loads((out / "dataset.json").read_text())["annotations"][case.case_id] == {
        "id": annotations[0].pk, "version": 3}


def test_the_annotations_tirads_reading_is_exported_as_points(cohort, engineer, tmp_path):
    from annotations.models import Video
    from ml.data import ClipDataset, ClipSpec, read_manifest
    from tests.webapp.training.conftest import ANNOTATION

    read, unread = Video.objects.filter(
        nodule__patient__centre=cohort["development"]).order_by("pk")[:2]
    accept_consensus(read, doc={**ANNOTATION, "tirads": {
        "composition": "solid", "echogenicity": "very_hypo", "shape": "wider",
        "margin": "lobulated", "echogenic_foci": ["punctate"]}})
    accept_consensus(unread)  # marks only, no TI-RADS
    snapshot = frozen_snapshot(engineer, cohort)
    out = tmp_path / "export"
    call_command("export_dataset", "--snapshot", str(snapshot.pk), "--out", str(out))
    by_video = {c.video_id: c.case_id for c in snapshot.cases.all()}
    records = {r.case_id: r for r in read_manifest(out)}
    assert records[by_video[read.pk]].tirads_points == {
        "composition": 2, "echogenicity": 3, "shape": 0, "margin": 2}
    for video_id, case_id in by_video.items():
        if video_id != read.pk:
            assert set(records[case_id].tirads_points.values()) == {None}
    ds = ClipDataset(out, None, ClipSpec(frames=8, size=(32, 32)))
    item = ds[[r.case_id for r in ds.records].index(by_video[read.pk])]
    assert np.allclose(item["tirads"].numpy(), [1.0, 1.0, 0.0, 2 / 3])


def test_only_accepted_annotations(cohort, engineer):
    from annotations.models import Video

    for video in Video.objects.order_by("pk")[:30]:
        accept_consensus(video)
    snapshot = services.snapshot_freeze(user=engineer, name="annotated",
                                        centres=[cohort["development"]], only_accepted=True)
    assert snapshot.only_accepted and snapshot.n_cases == 30
    assert not snapshot.cases.filter(annotation_id=None).exists()
    assert snapshot.excluded == {"no accepted consensus annotation": 10}
