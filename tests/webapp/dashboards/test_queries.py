"""The dashboards read a fixed number of queries whatever the number of cases: the same
count with 10 and with 50 cases per centre, for every page and export."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tests.conftest import make_user
from tests.webapp.dashboards.conftest import ARCHS, add_cases, make_world

pytestmark = pytest.mark.django_db


def counts(client, world) -> dict[str, int]:
    study = world.versions["irv2_cam"]
    q = {"model": study.pk, "split": "test"}
    prediction = world.predictions[("irv2_cam", world.videos["CB"][3].pk)]
    urls = {
        "dashboard": (reverse("dashboards"), q),
        "export": (reverse("dashboards-export", args=["comparison"]), q),
        "cases": (reverse("dashboards-cases"), q | {"worklist": "all"}),
        "review": (reverse("dashboards-case", args=[prediction.pk]), q),
        "heatmaps": (reverse("dashboards-heatmaps", args=[prediction.pk]), {}),
    }
    out = {}
    for name, (url, params) in urls.items():
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url, params)
        assert response.status_code == 200, name
        out[name] = len(queries)
    return out


@pytest.mark.parametrize("role", ["reader", "ml_engineer"])
def test_query_count_does_not_grow_with_cases(client, media, centre_a, centre_b, role):
    client.force_login(make_user(role, centre_b))
    world = make_world(centre_a, centre_b, n=10, heatmaps=True)
    small = counts(client, world)
    # 40 more cases per centre, scored by every model: 50 per centre.
    labels = [i % 2 for i in range(40)]
    for centre, split in ((centre_a, "internal_test"), (centre_b, "external_test")):
        add_cases(world, centre, split, labels,
                  {arch: [0.3 + 0.4 * y for y in labels] for arch in ARCHS})
    assert sum(len(v) for v in world.videos.values()) == 100
    large = counts(client, world)
    assert large == small
    assert max(large.values()) <= 25
