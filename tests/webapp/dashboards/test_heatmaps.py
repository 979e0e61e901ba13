"""The heatmap download: the stored npz, converted to the small binary the page reads,
gzip-encoded, cached by ETag; 404 for a prediction without heatmaps."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.urls import reverse

from tests.conftest import make_user
from tests.webapp.dashboards.conftest import make_world
from webapp.dashboards import heatmaps

pytestmark = pytest.mark.django_db


def test_heatmap_binary_holds_the_stored_maps(client, media, centre_a, centre_b):
    world = make_world(centre_a, centre_b, n=4, heatmaps=True)
    prediction = world.predictions[("irv2", world.videos["CA"][1].pk)]
    client.force_login(make_user("reader", centre_a))
    response = client.get(reverse("dashboards-heatmaps", args=[prediction.pk]))
    assert response.status_code == 200
    assert response["Content-Encoding"] == "gzip"
    gradcam, attention = heatmaps.decode(response.content)
    with default_storage.open(prediction.heatmaps, "rb") as f, \
            np.load(io.BytesIO(f.read())) as stored:
        np.testing.assert_array_equal(gradcam, stored["gradcam"])
        np.testing.assert_array_equal(attention, stored["attention"])
    # Smaller than the raw maps: the page downloads it whole.
    assert len(response.content) < gradcam.nbytes + attention.nbytes + 20
    again = client.get(reverse("dashboards-heatmaps", args=[prediction.pk]),
                       HTTP_IF_NONE_MATCH=response["ETag"])
    assert again.status_code == 304


def test_prediction_without_heatmaps_is_404(client, media, centre_a, centre_b):
    world = make_world(centre_a, centre_b, n=2, heatmaps=False)
    prediction = world.predictions[("irv2_cam", world.videos["CA"][0].pk)]
    client.force_login(make_user("ml_engineer", centre_a))
    assert client.get(reverse("dashboards-heatmaps", args=[prediction.pk])).status_code == 404
