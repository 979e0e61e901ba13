"""The demo's reader study: finished, fully crossed, the same on every run."""

from __future__ import annotations

from django.core.management import call_command

from tests.webapp.review.conftest import labelled_video, predict
from webapp.review.demo import DEMO_READERS, DEMO_STUDY_NAME
from webapp.review.models import Read, ReaderStudy, StudyStatus
from webapp.review.results import study_results, study_rows


def _snapshot():
    return sorted((r["reader"], r["case"], r["modality"], r["rating"], r["seconds"])
                  for r in study_rows(study=ReaderStudy.objects.get(name=DEMO_STUDY_NAME)))


def test_seed_demo_reader_study_is_finished_and_deterministic(world, centre_a):
    videos = world["videos"] + [labelled_video(centre_a, malignant=m) for m in (True, False)]
    for video in videos[4:]:
        predict(video, world["version"], 0.5)
    call_command("seed_demo_reader_study", "--centres", centre_a.code)
    study = ReaderStudy.objects.get(name=DEMO_STUDY_NAME)
    assert study.status == StudyStatus.FINISHED
    assert Read.objects.filter(reader__study=study).count() == len(DEMO_READERS) * 6 * 2
    first = _snapshot()
    call_command("seed_demo_reader_study", "--centres", centre_a.code)
    assert ReaderStudy.objects.filter(name=DEMO_STUDY_NAME).count() == 1
    assert _snapshot() == first
    # Aided reads moved towards the model's probability (0.9, 0.6, 0.3, 0.1, 0.5, 0.5).
    results = study_results(study=ReaderStudy.objects.get(name=DEMO_STUDY_NAME))
    assert results["groups"][-1]["mrmc"]["n_readers"] == len(DEMO_READERS)
    shown = Read.objects.filter(reader__study__name=DEMO_STUDY_NAME, modality="aided")
    assert not shown.filter(model_probability__isnull=True).exists()


def test_seed_without_enough_cases_creates_nothing(db, centre_a):
    call_command("seed_demo_reader_study", "--centres", centre_a.code)
    assert not ReaderStudy.objects.exists()
