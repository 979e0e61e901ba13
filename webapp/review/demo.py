"""The demo's finished reader study: simulated readers read the demo cases through the same
services as people do (webapp.review.services), with seeded noise, so the results page and
the export have something true to show. Deterministic: same cases, same model, same reads.

A simulated reader's unaided likelihood is centred on 35 (benign) or 65 (malignant) with
reader noise (juniors noisier than seniors). Aided, it moves half-way towards the model's
probability when the model scored the video; otherwise towards the truth, with less noise."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from django.contrib.auth.hashers import make_password
from django.db import transaction

from annotations.labels import training_label
from annotations.models import User, Video
from webapp.review import services
from webapp.review.models import Design, Experience, Modality, ReaderStudy, StudyReader
from webapp.review.selectors import prediction_for_case

DEMO_STUDY_NAME = "Demo reader study (simulated readers)"
DEMO_READERS = [  # username, experience, noise SD of the likelihood (points)
    ("sim-junior-1", Experience.JUNIOR, 26.0),
    ("sim-junior-2", Experience.JUNIOR, 22.0),
    ("sim-senior-1", Experience.SENIOR, 18.0),
    ("sim-senior-2", Experience.SENIOR, 15.0),
]
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # a fixed reading day: reads are reproducible


def _clip(value: float) -> int:
    return int(round(min(100.0, max(0.0, value))))


def _tirads_for(likelihood: int) -> int:
    return 1 + min(4, likelihood // 20)


@transaction.atomic
def demo_reader_study_seed(*, centre_codes: list[str], seed: int = 0,
                           admin: User | None = None) -> ReaderStudy | None:
    """(Re)create the demo study over the centres' labelled videos; None when there are too
    few benign or malignant cases."""
    videos = [v for v in Video.objects.filter(nodule__patient__centre__code__in=centre_codes)
              .select_related("nodule__pathology").order_by("pk")
              if training_label(getattr(v.nodule, "pathology", None)) is not None]
    labels = [training_label(v.nodule.pathology) for v in videos]
    if sum(labels) < 2 or len(labels) - sum(labels) < 2:  # the MRMC analysis needs 2 of each
        return None
    ReaderStudy.objects.filter(name=DEMO_STUDY_NAME).delete()
    readers = []
    for username, experience, _ in DEMO_READERS:
        user, _ = User.objects.get_or_create(
            username=username, defaults={"first_name": "Simulated", "last_name": username,
                                         "password": make_password(None)})
        readers.append((user, experience))
    # The frames need not be processed: nobody watches the simulated reads.
    study = services.study_create(
        user=None, name=DEMO_STUDY_NAME, design=Design.SEQUENTIAL, videos=videos,
        readers=readers, seed=seed, require_ready=False,
        description="Readers simulated from the synthetic ground truth (seeded noise).")
    study.created_by = admin
    study.save(update_fields=["created_by"])

    noise = {name: sd for name, _, sd in DEMO_READERS}
    clock = START
    for reader in StudyReader.objects.filter(study=study).select_related("user", "study"):
        rng = random.Random(f"{seed}:{reader.user.username}")
        sd = noise[reader.user.username]
        unaided: dict[int, int] = {}
        while (read := services.read_start_next(reader=reader, now=clock)) is not None:
            truth = read.case.truth
            if read.modality == Modality.UNAIDED:
                likelihood = _clip(35 + 30 * truth + rng.gauss(0, sd))
                unaided[read.case_id] = likelihood
                seconds = rng.uniform(35, 90)
            else:
                prediction = prediction_for_case(study=study, case=read.case)
                target = (100 * prediction.probability if prediction is not None
                          else 20 + 60 * truth)
                likelihood = _clip(0.5 * unaided[read.case_id] + 0.5 * target
                                   + rng.gauss(0, sd / 2))
                seconds = rng.uniform(15, 45)
            clock += timedelta(seconds=seconds)
            services.read_submit(
                read=read, likelihood=likelihood,
                call="malignant" if likelihood >= 50 else "benign",
                tirads_level=_tirads_for(likelihood), now=clock)
            clock += timedelta(seconds=5)
    study.refresh_from_db()
    return study
