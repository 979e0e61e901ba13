"""The readers' JSON API: the same flow and refusals as the pages, and no pathology."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from tests.conftest import make_user
from webapp.review import services
from webapp.review.models import Design


@pytest.fixture
def study(world):
    return services.study_create(user=world["admin"], name="API study",
                                 design=Design.WASHOUT, washout_days=28,
                                 videos=world["videos"], readers=world["readers"])


def client_for(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_reader_flow_through_the_api_is_blinded(world, study):
    client = client_for(world["junior"])
    assert [s["name"] for s in client.get(reverse("api-review-studies")).json()] == ["API study"]
    url = reverse("api-review-reading", args=[study.pk])
    seen = []
    for _ in range(4):
        state = client.get(url).json()
        assert state["modality"] == "unaided" and "model" not in state
        assert client.get(url).json()["read_id"] == state["read_id"]  # resumes
        seen.append(json.dumps(state))
        response = client.post(
            reverse("api-review-read-submit", args=[study.pk, state["read_id"]]),
            {"likelihood": 40, "call": "benign", "tirads_level": 3}, format="json")
        assert response.status_code == 200
    refused = client.get(url)
    assert refused.status_code == 409 and "washout of 28 days" in refused.json()["detail"]
    for body in seen:
        for secret in ("truth", "pathology", "diagnosis", "malignant", "Papillary"):
            assert secret not in body
        for video in world["videos"]:
            assert video.nodule.patient.code not in body


@pytest.mark.parametrize("payload", [
    {"likelihood": 140, "call": "benign", "tirads_level": 3},
    {"likelihood": 40, "call": "unsure", "tirads_level": 3},
    {"likelihood": 40, "call": "benign"},
])
def test_invalid_reads_are_refused(world, study, payload):
    client = client_for(world["junior"])
    state = client.get(reverse("api-review-reading", args=[study.pk])).json()
    response = client.post(reverse("api-review-read-submit", args=[study.pk, state["read_id"]]),
                           payload, format="json")
    assert response.status_code == 400
    assert client.get(reverse("api-review-reading", args=[study.pk])).json()["progress"][
        "done"] == 0


def test_non_readers_get_404(world, study, centre_a):
    for user in (world["admin"], make_user("reader", centre_a)):
        response = client_for(user).get(reverse("api-review-reading", args=[study.pk]))
        assert response.status_code == 404
    assert APIClient().get(reverse("api-review-reading", args=[study.pk])).status_code == 401
