"""The dashboard's computed numbers are cached: a second request skips the case and score
queries, yet every change to a prediction, a pathology result or the labelling rule shows on
the next request, and a user never reads numbers cached for another set of centres. The
reference in each test is the same page computed with an empty cache."""

from __future__ import annotations

import csv
import io

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from annotations.models import Diagnosis, Pathology
from tests.conftest import make_user
from tests.webapp.dashboards.conftest import make_world

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def empty_cache(media):
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def world(centre_a, centre_b):
    return make_world(centre_a, centre_b, n=6)


def numbers(client, world, split: str) -> dict:
    """The metrics and comparison CSVs of the study model: what a user reads and exports."""
    q = {"model": world.versions["irv2_cam"].pk, "split": split}
    out = {}
    for kind in ("metrics", "comparison"):
        response = client.get(reverse("dashboards-export", args=[kind]), q)
        assert response.status_code == 200
        out[kind] = list(csv.DictReader(io.StringIO(response.content.decode())))
    return out


def uncached(client, world, split: str) -> dict:
    cache.clear()
    return numbers(client, world, split)


def rewrite_probability(world):
    # As re-scoring does: the same row, a new probability (update_or_create).
    prediction = world.predictions[("irv2_cam", world.videos["CA"][1].pk)]
    prediction.probability = 1.0 - prediction.probability
    prediction.save()


def delete_prediction(world):
    world.predictions[("irv2_cam", world.videos["CB"][0].pk)].delete()


def add_prediction(world):
    from webapp.training.models import PredictedLabel, Prediction

    video = world.videos["CA"][2]
    Prediction.objects.filter(video=video, model_version=world.versions["irv2"]).delete()
    Prediction.objects.create(
        video=video, model_version=world.versions["irv2"], probability=0.0, threshold=0.45,
        predicted_label=PredictedLabel.BENIGN, heatmaps="", frames_version=1)


def flip_pathology(world):
    pathology = Pathology.objects.get(nodule=world.videos["CA"][0].nodule)
    pathology.outcome = "benign" if pathology.outcome == "malignant" else "malignant"
    pathology.save()


def delete_pathology(world):
    Pathology.objects.get(nodule=world.videos["CB"][1].nodule).delete()


CHANGES = [
    # (change, split whose numbers it moves)
    (rewrite_probability, "test"),
    (delete_prediction, "test"),
    (add_prediction, "test"),
    (flip_pathology, "all"),
    (delete_pathology, "all"),
]


@pytest.mark.parametrize("change,split", CHANGES, ids=[c.__name__ for c, _ in CHANGES])
def test_a_change_shows_on_the_next_request(client, world, centre_a, change, split):
    client.force_login(make_user("ml_engineer", centre_a))
    before = numbers(client, world, split)
    with CaptureQueriesContext(connection) as cached:
        numbers(client, world, split)
    cache.clear()
    with CaptureQueriesContext(connection) as computed:
        numbers(client, world, split)
    assert len(cached) < len(computed)  # the first request filled the cache, the second read it
    change(world)
    after = numbers(client, world, split)
    assert after != before
    assert after == uncached(client, world, split)


def test_the_niftp_rule_is_part_of_the_key(client, world, centre_a, settings):
    pathology = Pathology.objects.get(nodule=world.videos["CA"][0].nodule)
    pathology.diagnosis = Diagnosis.NIFTP
    pathology.save()
    client.force_login(make_user("ml_engineer", centre_a))
    settings.THYROCINE = {**settings.THYROCINE, "NIFTP_LABEL": "benign"}
    as_benign = numbers(client, world, "all")
    settings.THYROCINE = {**settings.THYROCINE, "NIFTP_LABEL": "exclude"}
    excluded = numbers(client, world, "all")
    assert int(excluded["metrics"][0]["n"]) == int(as_benign["metrics"][0]["n"]) - 1
    assert excluded == uncached(client, world, "all")


# Who asks first fills the cache; whoever asks next must still see only their own centres.
ORDERS = [
    ("reader-A", "reader-B"),
    ("reader-B", "reader-A"),
    ("engineer", "reader-A"),
    ("reader-A", "engineer"),
    ("annotator-A", "reader-A"),
]
VISIBLE = {"reader-A": {"CA"}, "reader-B": {"CB"}, "annotator-A": {"CA"},
           "engineer": {"CA", "CB"}}


@pytest.mark.parametrize("first,second", ORDERS)
def test_users_never_read_numbers_cached_for_other_centres(client, world, centre_a, centre_b,
                                                           first, second):
    users = {"reader-A": make_user("reader", centre_a), "reader-B": make_user("reader", centre_b),
             "annotator-A": make_user("annotator", centre_a),
             "engineer": make_user("ml_engineer", centre_a)}
    client.force_login(users[first])
    numbers(client, world, "test")
    client.force_login(users[second])
    seen = numbers(client, world, "test")
    assert {r["centre"] for r in seen["metrics"]} - {"all"} == VISIBLE[second]
    shared = {r["model"]: int(r["shared_cases"]) for r in seen["comparison"]}
    assert shared["v1"] == 6 * len(VISIBLE[second])
    assert seen == uncached(client, world, "test")
