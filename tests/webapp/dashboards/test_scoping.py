"""Centre scoping of every dashboard URL, table-driven: role x relation to centre A ->
status, and which centres' rows appear. Centre A holds internal test cases, centre B external
ones; the split "test" shows both."""

from __future__ import annotations

import csv
import io
import re

import pytest
from django.urls import reverse

from tests.conftest import make_user
from tests.webapp.dashboards.conftest import make_world

pytestmark = pytest.mark.django_db

BOTH = {"CA", "CB"}

# (role, where the role is held) -> centres whose rows the user sees
VISIBILITY = [
    ("annotator", "A", {"CA"}),
    ("reader", "A", {"CA"}),
    ("centre_admin", "A", {"CA"}),
    ("reader", "B", {"CB"}),
    ("ml_engineer", "platform", BOTH),
    ("platform_admin", "platform", BOTH),
    ("none", "no membership", set()),
]


@pytest.fixture
def world(db, media, centre_a, centre_b):
    return make_world(centre_a, centre_b, n=6, heatmaps=True)


def user_for(role, where, centre_a, centre_b):
    if role == "none":
        return make_user("nobody", centre_a)
    return make_user(role, centre_b if where == "B" else centre_a)


def query(world):
    return f"?model={world.versions['irv2_cam'].pk}&split=test"


def rows_of(html: str, attribute: str, testid: str) -> set[str]:
    table = re.search(rf'data-testid="{testid}".*?</table>', html, re.S).group(0)
    return set(re.findall(rf'{attribute}="([^"]+)"', table)) - {"all"}


def csv_centres(response, column: str = "centre") -> set[str]:
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return {r[column] for r in csv.DictReader(io.StringIO(body.decode()))} - {"all"}


@pytest.mark.parametrize("role,where,visible", VISIBILITY)
def test_dashboard_and_exports_show_only_visible_centres(client, world, centre_a, centre_b,
                                                         role, where, visible):
    client.force_login(user_for(role, where, centre_a, centre_b))
    response = client.get(reverse("dashboards") + query(world))
    assert response.status_code == 200
    html = response.content.decode()
    assert rows_of(html, "data-centre", "centre-metrics") == visible
    assert rows_of(html, "data-centre", "inventory") == visible
    for kind in ("metrics", "inventory"):
        export = client.get(reverse("dashboards-export", args=[kind]) + query(world))
        assert export.status_code == 200
        assert csv_centres(export) == visible
    # The comparison's shared cases count only visible cases.
    export = client.get(reverse("dashboards-export", args=["comparison"]) + query(world))
    shared = {r["model"]: int(r["shared_cases"])
              for r in csv.DictReader(io.StringIO(export.content.decode()))}
    assert shared["v1"] == 6 * len(visible)


@pytest.mark.parametrize("role,where,visible", VISIBILITY)
def test_worklists_case_review_and_heatmaps_are_scoped(client, world, centre_a, centre_b,
                                                       role, where, visible):
    client.force_login(user_for(role, where, centre_a, centre_b))
    response = client.get(reverse("dashboards-cases") + query(world))
    assert response.status_code == 200
    shown = {int(p) for p in re.findall(r'data-prediction="(\d+)"', response.content.decode())}
    expected = {world.predictions[("irv2_cam", v.pk)].pk
                for code in visible for v in world.videos[code]}
    assert shown == expected
    for code in ("CA", "CB"):
        prediction = world.predictions[("irv2_cam", world.videos[code][0].pk)]
        status = 200 if code in visible else 404
        page = client.get(reverse("dashboards-case", args=[prediction.pk]) + query(world))
        assert page.status_code == status
        data = client.get(reverse("dashboards-heatmaps", args=[prediction.pk]))
        assert data.status_code == status


@pytest.mark.parametrize("name,args", [
    ("dashboards", []), ("dashboards-export", ["metrics"]), ("dashboards-cases", []),
    ("dashboards-case", [1]), ("dashboards-heatmaps", [1]),
])
def test_anonymous_users_are_sent_to_sign_in(client, world, name, args):
    response = client.get(reverse(name, args=args))
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


def test_unknown_export_and_model_are_404(client, world, centre_a):
    client.force_login(make_user("ml_engineer", centre_a))
    assert client.get(reverse("dashboards-export", args=["secrets"])).status_code == 404
    assert client.get(reverse("dashboards") + "?model=999999").status_code == 404
