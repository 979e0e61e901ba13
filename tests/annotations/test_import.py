"""`manage.py import_cases` and `import_pathology`: idempotent by SHA-256, one transaction
per row, a report of imported/skipped/rejected rows, non-zero exit on rejections, dry runs,
centres created on request; and the training-label rule they feed."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from annotations import labels
from annotations.models import (
    Centre,
    Nodule,
    Pathology,
    Patient,
    Video,
    VideoStatus,
)
from tests.annotations.conftest import sweep_frames, write_video
from tests.factories import CentreFactory, NoduleFactory, PathologyFactory

HEADER = "centre,patient,nodule,video,scan_plane,outcome,diagnosis,pathology_source,bethesda\n"


def run(*args) -> tuple[str, CommandError | None]:
    out = StringIO()
    try:
        call_command(*args, "--no-progress", stdout=out)
    except CommandError as exc:
        return out.getvalue(), exc
    return out.getvalue(), None


@pytest.fixture
def folder(db, storage, tmp_path):
    (tmp_path / "cases" / "videos").mkdir(parents=True)
    for i in range(3):
        write_video(tmp_path / "cases" / "videos" / f"v{i}.mp4", sweep_frames(9, seed=i))
    return tmp_path / "cases"


def test_synthetic_manifest_imports_processes_and_is_idempotent(db, storage, tmp_path):
    from ml.synthetic import generate

    generate(tmp_path / "syn", centres=2, nodules=2, seed=3, frames=10, progress=False)
    manifest = str(tmp_path / "syn" / "manifest.csv")
    out, error = run("import_cases", manifest, "--create-centres", "--inline")
    assert error is None, out
    assert "4 imported, 0 skipped, 0 rejected" in out
    assert set(Centre.objects.values_list("code", flat=True)) == {"C1", "C2"}
    assert Video.objects.filter(status=VideoStatus.READY).count() == 4
    assert Pathology.objects.count() == 4
    assert all(v.frame_count == 10 for v in Video.objects.all())

    out, error = run("import_cases", manifest, "--inline")
    assert error is None and "0 imported, 4 skipped, 0 rejected" in out
    assert Video.objects.count() == 4 and Patient.objects.count() <= 4


def test_report_lists_rejected_rows_with_reasons_and_exits_non_zero(folder):
    CentreFactory(code="C1")
    (folder / "manifest.csv").write_text(
        HEADER
        + "C1,P1,N1,videos/v0.mp4,sweep,malignant,papillary_carcinoma,surgery,\n"
        + "C9,P2,N1,videos/v1.mp4,sweep,,,,\n"
        + "C1,P3,N1,videos/missing.mp4,sweep,,,,\n"
        + "C1,P4,N1,videos/v2.mp4,sideways,,,,\n"
        + "C1,P5,N1,videos/v2.mp4,sweep,benign,,surgery,II\n"
        + "C1,P6,N1,videos/v2.mp4,sweep,benign,,fna,VI\n"
    )
    out, error = run("import_cases", str(folder / "manifest.csv"), "--inline")
    assert error is not None and "5 row(s) rejected" in str(error)
    assert "1 imported, 0 skipped, 5 rejected" in out
    assert "line 3: rejected: unknown centre 'C9' (use --create-centres" in out
    assert "line 4: rejected: the video file videos/missing.mp4 does not exist" in out
    assert "line 5: rejected: unknown scan plane 'sideways'" in out
    assert "line 6: rejected: pathology: Surgical histology needs a diagnosis" in out
    assert "line 7: rejected: pathology: Bethesda VI cytology means the outcome is malignant" \
        in out
    # Rejected rows wrote nothing; the good row is whole.
    assert list(Patient.objects.values_list("code", flat=True)) == ["P1"]
    nodule = Nodule.objects.get()
    assert nodule.pathology.diagnosis == "papillary_carcinoma"
    assert labels.training_label(nodule.pathology) == 1


def test_dry_run_checks_without_writing(folder):
    (folder / "manifest.csv").write_text(HEADER + "NEW,P1,N1,videos/v0.mp4,,,,,\n"
                                         + "NEW,P2,N1,videos/../../etc.mp4,,,,,\n")
    out, error = run("import_cases", str(folder / "manifest.csv"), "--dry-run",
                     "--create-centres")
    assert error is not None
    assert "dry run: 1 imported, 0 skipped, 1 rejected" in out
    assert not Centre.objects.exists() and not Video.objects.exists()


def test_surgery_with_a_preoperative_bethesda_keeps_the_histology(folder):
    CentreFactory(code="C1")
    (folder / "manifest.csv").write_text(
        HEADER + "C1,P1,N1,videos/v0.mp4,sweep,malignant,papillary_carcinoma,surgery,V\n")
    out, error = run("import_cases", str(folder / "manifest.csv"))
    assert error is None
    assert "Bethesda V not recorded: the source is surgical histology" in out
    pathology = Pathology.objects.get()
    assert pathology.source == "surgery" and pathology.bethesda == ""
    video = Video.objects.get()
    assert video.status == VideoStatus.UPLOADED  # queued for the workers


def test_missing_columns_are_named(folder):
    (folder / "manifest.csv").write_text("centre,patient\nC1,P1\n")
    with pytest.raises(CommandError, match="lacks the column"):
        call_command("import_cases", str(folder / "manifest.csv"), "--no-progress")


def test_import_pathology(db):
    nodule = NoduleFactory(patient__centre=CentreFactory(code="C1"), patient__code="P1",
                           code="N1")
    path = Path(__file__).parent / "_pathology.csv"
    try:
        path.write_text(
            "centre,patient,nodule,outcome,diagnosis,pathology_source,bethesda,date\n"
            "C1,P1,N1,benign,,fna,II,2023-05-02\n"
            "C1,P1,N9,benign,,fna,II,\n"
            "C1,P1,N1,indeterminate,,surgery,IV,\n"
        )
        out, error = run("import_pathology", str(path))
    finally:
        path.unlink()
    assert error is not None and "2 row(s) rejected" in str(error)
    assert "no nodule C1/P1/N9" in out
    nodule.refresh_from_db()
    assert nodule.pathology.bethesda == "II" and str(nodule.pathology.date) == "2023-05-02"
    assert labels.training_label(nodule.pathology) == 0


# (source, diagnosis, bethesda, outcome) -> label, by the rule in DOMAIN.md
LABEL_RULE = [
    ("surgery", "papillary_carcinoma", "", "malignant", labels.MALIGNANT),
    ("surgery", "follicular_nodular_disease", "", "benign", labels.BENIGN),
    ("surgery", "follicular_carcinoma", "", "malignant", labels.MALIGNANT),
    ("surgery", "ump", "", "indeterminate", labels.EXCLUDED),
    ("surgery", "niftp", "", "benign", "niftp"),
    ("fna", "", "II", "benign", labels.BENIGN),
    ("fna", "", "VI", "malignant", labels.MALIGNANT),
    ("fna", "", "III", "indeterminate", labels.EXCLUDED),
    ("fna", "", "IV", "indeterminate", labels.EXCLUDED),
    ("fna", "", "V", "indeterminate", labels.EXCLUDED),
    ("fna", "", "I", "indeterminate", labels.EXCLUDED),
]


@pytest.mark.parametrize("niftp", ["benign", "malignant", "exclude"])
def test_label_rule_in_python_and_sql_agree(db, settings, niftp):
    settings.THYROCINE = {**settings.THYROCINE, "NIFTP_LABEL": niftp}
    expected = {}
    for source, diagnosis, bethesda, outcome, label in LABEL_RULE:
        p = PathologyFactory(source=source, diagnosis=diagnosis, bethesda=bethesda,
                             outcome=outcome)
        if label == "niftp":
            label = {"benign": labels.BENIGN, "malignant": labels.MALIGNANT}.get(
                niftp, labels.EXCLUDED)
        expected[p.nodule_id] = label
        assert labels.label_of(p) == label
    bare = NoduleFactory()
    expected[bare.pk] = labels.MISSING
    in_sql = dict(Nodule.objects.annotate(label=labels.label_expression())
                  .values_list("pk", "label"))
    assert in_sql == expected
