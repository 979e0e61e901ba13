"""Predictions: probability, class at the frozen threshold, heatmaps aligned to the frame
store, the model version recorded; idempotent; visible by the tenancy of the video."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.files.storage import default_storage
from rest_framework.test import APIClient

from annotations.models import AuditEvent, Video
from ml.inference import gradcam_layer_of, predict_with_heatmaps, spec_of
from tests.conftest import make_user
from tests.webapp.training.conftest import accept_consensus, make_case, make_version
from webapp.training import services
from webapp.training.models import (
    DatasetSnapshot,
    ModelState,
    Prediction,
    RunStatus,
    TrainingRun,
)
from webapp.training.services.predictions import load_heatmaps, videos_to_score


@pytest.fixture
def version(training_env, db):
    snapshot = DatasetSnapshot.objects.create(name="s")
    run = TrainingRun.objects.create(snapshot=snapshot, arch="irv2_cam", preset="small",
                                     status=RunStatus.SUCCEEDED, run_dir="runs/p")
    return make_version(run, number=1, state=ModelState.PRODUCTION)


def test_a_prediction_has_heatmaps_aligned_to_every_frame(version, centre_a):
    _, video = make_case(centre_a, label=1, frames=20)
    prediction = services.prediction_compute(video=video, version=version)
    assert 0.0 <= prediction.probability <= 1.0
    assert prediction.threshold == version.threshold == 0.5
    assert prediction.predicted_label == ("malignant" if prediction.probability >= 0.5
                                          else "benign")
    assert prediction.model_version == version and prediction.frames_version == 1
    maps = load_heatmaps(prediction)
    # One map per stored frame (clip frame f = frame-store frame f), uint8 in [0, 255]: the
    # model's own heatmaps, quantised.
    model, config = services.model_load(version=version)
    with default_storage.open(video.clip) as f:
        clip = np.load(f)
    expected = predict_with_heatmaps(model, clip, spec_of(config),
                                     layer=gradcam_layer_of(model, config))
    assert maps["gradcam"].shape == (20, 32, 32) and maps["gradcam"].dtype == np.uint8
    error = np.abs(maps["gradcam"] / 255.0 - expected.gradcam.astype(np.float32))
    assert error.max() <= 0.5 / 255 + 1e-3
    assert prediction.probability == pytest.approx(expected.probability, abs=1e-5)
    assert maps["attention"].shape == (2, 20, 32, 32)  # irv2_cam: attention after B and C
    assert prediction.attention_maps == 2
    assert list(maps["frame_indices"]) == prediction.frame_indices
    assert len(prediction.frame_indices) == 8 and max(prediction.frame_indices) == 19
    assert prediction.clip_shape == [20, 32, 32]
    assert prediction.region == [10, 20, 320, 240]  # the clip's place in frame pixels
    assert prediction.heatmaps_bytes == default_storage.size(prediction.heatmaps)
    assert prediction.heatmaps_bytes < 20 * 32 * 32 * 3  # compressed below raw uint8


def test_scoring_is_idempotent_and_follows_reprocessing(version, centre_a):
    _, video = make_case(centre_a, label=0)
    first = services.prediction_compute(video=video, version=version)
    again = services.prediction_compute(video=video, version=version)
    assert again.pk == first.pk and again.heatmaps == first.heatmaps
    assert Prediction.objects.count() == 1
    assert list(videos_to_score(version)) == []
    # Processing the video again (a new frame store) makes its prediction out of date.
    Video.objects.filter(pk=video.pk).update(frames_version=2)
    assert list(videos_to_score(version)) == [video]
    redone = services.prediction_compute(video=video, version=version)
    assert redone.pk == first.pk and redone.frames_version == 2
    assert not default_storage.exists(first.heatmaps)
    assert default_storage.exists(redone.heatmaps)


def test_only_ready_videos_are_scored(version, centre_a):
    _, video = make_case(centre_a, label=1, ready=False)
    assert services.prediction_compute(video=video, version=version) is None
    assert services.prediction_for_ready_video(video_id=video.pk) is None
    assert not Prediction.objects.exists()


def test_a_ready_video_is_scored_by_the_production_model(version, centre_a):
    _, video = make_case(centre_a, label=1)
    prediction = services.prediction_for_ready_video(video_id=video.pk)
    assert prediction.model_version == version


@pytest.mark.parametrize(("role", "relation", "visible"), [
    ("reader", "own", True),
    ("annotator", "own", True),
    ("centre_admin", "own", True),
    ("reader", "other", False),
    ("centre_admin", "other", False),
    ("ml_engineer", "own", True),
    ("platform_admin", "own", True),
])
def test_predictions_follow_the_tenancy_of_their_video(version, centre_a, centre_b, role,
                                                       relation, visible):
    _, video = make_case(centre_a, label=1)
    prediction = services.prediction_compute(video=video, version=version)
    user = make_user(role, centre_a if relation == "own" else centre_b)
    api = APIClient()
    api.force_login(user)
    listing = api.get(f"/api/training/predictions/?video={video.pk}").json()
    assert [p["id"] for p in listing["results"]] == ([prediction.pk] if visible else [])
    download = api.get(f"/files/predictions/{prediction.pk}/heatmaps.npz")
    assert download.status_code == (200 if visible else 404)
    # A download is a view of the case: audited, like the case pages.
    assert AuditEvent.objects.filter(user=user, action="view", object_type="annotations.Video",
                                     object_id=str(video.pk)).exists() is visible


def test_a_model_trained_on_nodule_crops_reads_the_accepted_annotations_boxes(version,
                                                                              centre_a):
    assert version.config["spec"]["roi"] is True
    _, plain = make_case(centre_a, label=1, seed=1)
    _, annotated = make_case(centre_a, label=1, seed=2)
    annotation = accept_consensus(annotated)
    whole = services.prediction_compute(video=plain, version=version)
    cropped = services.prediction_compute(video=annotated, version=version)
    assert whole.crop_box == [0, 0, 32, 32] and whole.boxes_annotation_id is None
    assert (cropped.boxes_annotation_id, cropped.boxes_annotation_version) == (
        annotation.pk, 3)
    x0, y0, x1, y1 = cropped.crop_box
    assert (x1 - x0, y1 - y0) != (32, 32) or (x0, y0) != (0, 0)
    maps = load_heatmaps(cropped)
    outside = np.ones((32, 32), bool)
    outside[y0:y1, x0:x1] = False
    assert not maps["gradcam"][:, outside].any()  # nothing outside the crop the model saw
