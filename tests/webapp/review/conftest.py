"""A small reader-study world: ready videos of known label at centre A, a production model
that scored some of them, a platform administrator and readers."""

from __future__ import annotations

import pytest

from annotations.models import Diagnosis, PathologyOutcome, PathologySource
from tests.conftest import make_user
from tests.factories import (
    NoduleFactory,
    PathologyFactory,
    PatientFactory,
    UserFactory,
    VideoFactory,
)
from webapp.review.models import Experience


def labelled_video(centre, malignant: bool, **video_kw):
    nodule = NoduleFactory(patient=PatientFactory(centre=centre))
    if malignant:
        PathologyFactory(nodule=nodule)
    else:
        PathologyFactory(nodule=nodule, outcome=PathologyOutcome.BENIGN,
                         diagnosis=Diagnosis.FOLLICULAR_NODULAR_DISEASE,
                         source=PathologySource.SURGERY)
    return VideoFactory(nodule=nodule, **video_kw)


def production_version(number: int = 1):
    from webapp.training.models import (
        DatasetSnapshot,
        ModelState,
        ModelVersion,
        RunStatus,
        TrainingRun,
    )

    snapshot = DatasetSnapshot.objects.create(name=f"s{number}")
    run = TrainingRun.objects.create(snapshot=snapshot, arch="irv2_cam", preset="small",
                                     status=RunStatus.SUCCEEDED, run_dir=f"runs/review{number}")
    return ModelVersion.objects.create(
        number=number, run=run, snapshot=snapshot, arch="irv2_cam", preset="small",
        threshold=0.5, weights="models/x.safetensors", checksum="0" * 64,
        state=ModelState.PRODUCTION)


def predict(video, version, probability: float):
    from webapp.training.models import Prediction

    return Prediction.objects.create(
        video=video, model_version=version, probability=probability,
        predicted_label="malignant" if probability >= version.threshold else "benign",
        threshold=version.threshold, heatmaps="")


@pytest.fixture
def world(centre_a, centre_b):
    admin = make_user("platform_admin", centre_a)
    videos = [labelled_video(centre_a, malignant=m) for m in (True, True, False, False)]
    version = production_version()
    probabilities = [0.9, 0.6, 0.3, 0.1]
    for video, p in zip(videos, probabilities, strict=True):
        predict(video, version, p)
    junior = UserFactory(username="junior")
    senior = UserFactory(username="senior")
    return {"admin": admin, "videos": videos, "version": version, "junior": junior,
            "senior": senior, "probabilities": probabilities,
            "readers": [(junior, Experience.JUNIOR), (senior, Experience.SENIOR)]}
