"""A configuration that cannot run is refused by the form and the API, with a reason, before
anything is queued."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from tests.conftest import make_user
from tests.webapp.training.conftest import TINY, frozen_snapshot, make_cohort
from webapp.training import hyperparameters as hp
from webapp.training.models import TrainingRun


@pytest.mark.parametrize(
    ("values", "field", "reason"),
    [
        ({"epochs": 0}, "epochs", "at least 1"),
        ({"epochs": "many"}, "epochs", "must be a int"),
        ({"epochs": 2.5}, "epochs", "must be a int"),
        ({"lr": 5}, "lr", "at most 1.0"),
        ({"augment": "yes"}, "augment", "must be a bool"),
        ({"device": "cuda:7"}, "device", "cannot be set here"),
        ({"members": 0}, "members", "at least 1"),
        ({"members": 9}, "members", "at most 8"),
        ({"temporal_views": 0}, "temporal_views", "at least 1"),
        ({"roi_max_side": -1}, "roi_max_side", "at least 0"),
        ({"focus_head": "on"}, "focus_head", "must be a bool"),
        ({"focus_loss_weight": -1}, "focus_loss_weight", "at least 0.0"),
        ({"evidence_loss_weight": 101}, "evidence_loss_weight", "at most 100.0"),
        ({"focus_logit": 1}, "focus_logit", "must be a bool"),
        ({"evidence_lr_scale": 0}, "evidence_lr_scale", "at least 0.01"),
        ({"focus_norm": "yes"}, "focus_norm", "must be a bool"),
        ({"tirads_head": "yes"}, "tirads_head", "must be a bool"),
        ({"tirads_loss_weight": -0.5}, "tirads_loss_weight", "at least 0.0"),
    ],
)
def test_hyperparameters_out_of_shape_are_refused(values, field, reason):
    with pytest.raises(hp.ConfigError) as exc:
        hp.check(arch="irv2_cam", preset="small", hyperparameters=values, gpus=1, max_gpus=8,
                 counts=None)
    assert field in exc.value.errors
    assert reason in " ".join(exc.value.errors[field])


@pytest.mark.parametrize(
    ("arch", "values", "gpus", "field", "reason"),
    [
        ("r3d_18", {"focus_head": True}, 1, "focus_head",
         "r3d_18 has no option focus head: only the InceptionResNetV2 models"),
        ("irv2_cam", {"members": 2}, 2, "members", "side by side on one device"),
        ("irv2_cam", {"focus_count": True}, 1, "focus_count", "turn the focus head on too"),
        ("irv2_cam", {"focus_logit": True}, 1, "focus_logit", "turn the focus head on too"),
        ("irv2_cam", {"focus_detach": True}, 1, "focus_detach", "turn it on too"),
        ("irv2_cam", {"focus_head": True, "focus_norm": True}, 1, "focus_norm",
         "turn the focus logit on too"),
        ("irv2_cam", {"focus_logit": True, "focus_count": True}, 1, "focus_count",
         "turn the focus head on too"),
        ("r3d_18", {"focus_head": True, "focus_count": True}, 1, "focus_count",
         "r3d_18 has no option focus count or focus head"),
        ("x3d_s", {"tirads_head": True}, 1, "tirads_head",
         "x3d_s has no option TI-RADS head: only the InceptionResNetV2 models"),
    ],
)
def test_options_a_run_cannot_take_are_refused(arch, values, gpus, field, reason):
    with pytest.raises(hp.ConfigError) as exc:
        hp.check(arch=arch, preset="small", hyperparameters=values, gpus=gpus, max_gpus=8,
                 counts=None)
    assert reason in " ".join(exc.value.errors[field])


@pytest.mark.parametrize(
    ("arch", "values", "overrides"),
    [
        # the study's headline configuration (benchmarks/ml_headline.sh) from the web
        ("irv2_cam", {"members": 2, "temporal_views": 2, "focus_head": True},
         {"members": 2, "temporal_views": 2, "model_options": {"focus_head": True}}),
        ("irv2_2d", {"focus_head": True}, {"model_options": {"focus_head": True}}),
        ("irv2_cam", {"focus_head": True, "focus_count": True, "focus_loss_weight": 5.0},
         {"focus_loss_weight": 5.0,
          "model_options": {"focus_head": True, "focus_count": True}}),
        ("irv2_cam", {"focus_head": True, "focus_logit": True, "evidence_loss_weight": 2.0},
         {"evidence_loss_weight": 2.0,
          "model_options": {"focus_head": True, "focus_logit": True}}),
        ("irv2_cam", {"focus_head": True, "focus_detach": True},
         {"model_options": {"focus_head": True, "focus_detach": True}}),
        ("irv2_cam", {"focus_head": True, "focus_logit": True, "focus_norm": True},
         {"model_options": {"focus_head": True, "focus_logit": True, "focus_norm": True}}),
        ("irv2_cam", {"focus_head": True, "focus_logit": True, "focus_norm": True,
                      "evidence_lr_scale": 20.0},
         {"evidence_lr_scale": 20.0,
          "model_options": {"focus_head": True, "focus_logit": True, "focus_norm": True}}),
        ("irv2_cam", {"roi_max_side": 112}, {"roi_max_side": 112}),
        ("irv2_cam", {"roi_max_side": 112, "context_channel": True},
         {"roi_max_side": 112, "context_channel": True}),
        ("irv2_cam", {"tirads_head": True, "tirads_loss_weight": 2.0},
         {"tirads_loss_weight": 2.0, "model_options": {"tirads_head": True}}),
        # "off" for an option the preset does not set changes nothing, on any architecture
        ("r3d_18", {"focus_head": False, "flip_average": True}, {"flip_average": True}),
    ],
)
def test_options_become_the_training_configuration(arch, values, overrides):
    from ml.cli import build_parser
    from webapp.training import runner

    clean = hp.check(arch=arch, preset="small", hyperparameters=values, gpus=1, max_gpus=8,
                     counts=None)
    assert clean == values
    assert hp.train_overrides("small", clean) == overrides
    effective = hp.effective("small", arch, clean)
    for name, value in overrides.items():
        assert effective[name] == value
    command = runner.train_command(data_dir="d", run_dir="r", arch=arch, preset="small",
                                   hyperparameters=hp.train_overrides("small", clean))
    args = build_parser().parse_args(command[3:])
    for name, value in overrides.items():
        assert getattr(args, name) == value


def test_an_input_the_architecture_cannot_take_is_refused_with_the_reason():
    with pytest.raises(hp.ConfigError) as exc:
        hp.check(arch="irv2_cam", preset="small", hyperparameters={"frames": 2, "size": 16},
                 gpus=1, max_gpus=8, counts=None)
    message = exc.value.errors["size"][0]
    assert "irv2_cam (small) cannot take 2 frames of 16 x 16 pixels" in message
    assert "smaller than kernel size" in message
    assert hp.check(arch="irv2_cam", preset="small", hyperparameters=TINY, gpus=1,
                    max_gpus=8, counts=None) == TINY


def test_unknown_architecture_preset_and_gpu_count():
    with pytest.raises(hp.ConfigError) as exc:
        hp.check(arch="resnet1000", preset="huge", hyperparameters={}, gpus=9, max_gpus=8,
                 counts=None)
    assert set(exc.value.errors) == {"arch", "preset", "gpus"}


def test_too_few_cases_of_a_class_is_refused_by_mls_own_rule():
    counts = {"train": {"n": 20, "benign": 10, "malignant": 10},
              "val": {"n": 3, "benign": 2, "malignant": 1}}
    with pytest.raises(hp.ConfigError) as exc:
        hp.check(arch="irv2_cam", preset="small", hyperparameters=TINY, gpus=1, max_gpus=8,
                 counts=counts)
    assert "split 'val' has 1 malignant case(s)" in exc.value.errors["snapshot"][0]


@pytest.fixture
def small_snapshot(training_env, centre_a, centre_b):
    """A snapshot whose validation split lacks malignant cases: 8 benign, 3 malignant."""
    engineer = make_user("ml_engineer", centre_a)
    make_cohort(centre_a, benign=8, malignant=3)
    make_cohort(centre_b, benign=2, malignant=2)
    snapshot = frozen_snapshot(engineer, {"development": centre_a, "external": centre_b})
    return engineer, snapshot


def test_form_shows_the_reason_and_queues_nothing(small_snapshot):
    engineer, snapshot = small_snapshot
    client = Client()
    client.force_login(engineer)
    page = client.post("/training/runs/new/", {
        "snapshot": snapshot.pk, "arch": "irv2_cam", "preset": "small", "gpus": 1,
        "hp_frames": 8, "hp_size": 16,
    })
    assert page.status_code == 200
    assert "cannot take 8 frames of 16 x 16 pixels" in page.content.decode()
    page = client.post("/training/runs/new/", {
        "snapshot": snapshot.pk, "arch": "irv2_cam", "preset": "small", "gpus": 1,
        "hp_frames": 8, "hp_size": 32, "hp_epochs": 0,
    })
    assert "Ensure this value is greater than or equal to 1" in page.content.decode()
    page = client.post("/training/runs/new/", {
        "snapshot": snapshot.pk, "arch": "irv2_cam", "preset": "small", "gpus": 1,
        "hp_frames": 8, "hp_size": 32,
    })
    assert "training needs at least 2 of each class" in page.content.decode()
    assert not TrainingRun.objects.exists()


def test_api_answers_400_with_reasons(small_snapshot):
    engineer, snapshot = small_snapshot
    api = APIClient()
    api.force_authenticate(engineer)
    response = api.post("/api/training/runs/", {
        "snapshot": snapshot.pk, "arch": "irv2_cam", "preset": "small",
        "hyperparameters": {"frames": 8, "size": 16, "epochs": -1}, "gpus": 1,
    }, format="json")
    assert response.status_code == 400
    assert "epochs must be at least 1" in response.json()["epochs"][0]
    response = api.post("/api/training/runs/", {
        "snapshot": snapshot.pk, "arch": "irv2_cam", "hyperparameters": TINY, "gpus": 1,
    }, format="json")
    assert response.status_code == 400
    assert "training needs at least 2 of each class" in response.json()["snapshot"][0]
    assert not TrainingRun.objects.exists()
