"""Who may see and do what in the training app, generated from tables as
tests/annotations/test_permissions.py is: role x endpoint -> answer. Only ML engineers and
platform administrators see snapshots, runs and the registry, and launch, cancel, resume
and promote; everyone else gets 404 (existence does not leak) and changes nothing."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from annotations.models import CentreRole, PlatformRole
from annotations.permissions import PLATFORM_ROLE_ACTIONS, PlatformAction
from tests.conftest import make_user, run_coroutine, websocket_for
from tests.webapp.training.conftest import TINY, frozen_snapshot, make_version
from webapp.training.models import (
    DatasetSnapshot,
    ModelState,
    ModelVersion,
    RunStatus,
    TrainingRun,
)

ROLES = [CentreRole.ANNOTATOR, CentreRole.READER, CentreRole.CENTRE_ADMIN,
         PlatformRole.ML_ENGINEER, PlatformRole.PLATFORM_ADMIN]

# The policy, written out.
MAY_TRAIN = {"ml_engineer", "platform_admin"}
MAY_PROMOTE = {"ml_engineer", "platform_admin"}


def test_policy_table_matches_the_permission_layer():
    for role in ROLES:
        actions = PLATFORM_ROLE_ACTIONS.get(role, frozenset())
        assert (PlatformAction.TRAIN in actions) is (role in MAY_TRAIN)
        assert (PlatformAction.PROMOTE in actions) is (role in MAY_PROMOTE)


@pytest.fixture
def world(cohort, centre_a, django_capture_on_commit_callbacks):
    engineer = make_user("ml_engineer", centre_a)
    snapshot = frozen_snapshot(engineer, cohort)
    queued = TrainingRun.objects.create(snapshot=snapshot, created_by=engineer,
                                        arch="irv2_cam", preset="small",
                                        hyperparameters=TINY, run_dir="runs/q")
    failed = TrainingRun.objects.create(snapshot=snapshot, arch="irv2_cam", preset="small",
                                        status=RunStatus.FAILED, run_dir="runs/f")
    done = TrainingRun.objects.create(snapshot=snapshot, arch="irv2_cam", preset="small",
                                      status=RunStatus.SUCCEEDED, run_dir="runs/d")
    version = make_version(done, number=1)
    return {"snapshot": snapshot, "queued": queued, "failed": failed, "version": version}


PAGES = [
    "/training/",
    "/training/runs/new/",
    "/training/runs/{queued}/",
    "/training/runs/{queued}/state.json",
    "/training/snapshots/",
    "/training/snapshots/{snapshot}/",
    "/training/models/",
    "/training/models/{version}/",
    "/api/training/runs/",
    "/api/training/runs/{queued}/",
    "/api/training/runs/{queued}/state/",
    "/api/training/snapshots/",
    "/api/training/snapshots/{snapshot}/",
    "/api/training/models/",
    "/api/training/models/{version}/",
]


def _url(template: str, world: dict) -> str:
    return template.format(**{k: v.pk for k, v in world.items()})


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("page", PAGES)
def test_pages_and_api_reads(world, centre_a, role, page):
    user = make_user(role, centre_a)
    response = client_for(user).get(_url(page, world))
    assert response.status_code == (200 if role in MAY_TRAIN else 404)


def _launch(client, world):
    return client.post("/api/training/runs/", {
        "snapshot": world["snapshot"].pk, "arch": "irv2_cam", "preset": "small",
        "hyperparameters": TINY}, format="json")


# action -> (request, answer when allowed, what changed when allowed)
ACTIONS = {
    "launch (API)": (_launch, 201, lambda w: TrainingRun.objects.count() == 4),
    "launch (form)": (
        lambda c, w: c.post("/training/runs/new/", {
            "snapshot": w["snapshot"].pk, "arch": "irv2_cam", "preset": "small", "gpus": 1,
            **{f"hp_{k}": v for k, v in TINY.items()}}),
        302, lambda w: TrainingRun.objects.count() == 4),
    "freeze snapshot (API)": (
        lambda c, w: c.post("/api/training/snapshots/", {
            "name": "again", "centres": ["CA"], "external_centres": ["CB"]}, format="json"),
        201, lambda w: DatasetSnapshot.objects.count() == 2),
    "cancel (page)": (
        lambda c, w: c.post(f"/training/runs/{w['queued'].pk}/cancel/"),
        302, lambda w: TrainingRun.objects.get(pk=w["queued"].pk).status == "cancelled"),
    "cancel (API)": (
        lambda c, w: c.post(f"/api/training/runs/{w['queued'].pk}/cancel/"),
        200, lambda w: TrainingRun.objects.get(pk=w["queued"].pk).status == "cancelled"),
    "resume (API)": (
        lambda c, w: c.post(f"/api/training/runs/{w['failed'].pk}/resume/"),
        200, lambda w: TrainingRun.objects.get(pk=w["failed"].pk).status == "queued"),
    "promote (page)": (
        lambda c, w: c.post(f"/training/models/{w['version'].pk}/promote/"),
        302, lambda w: ModelVersion.objects.get().state == ModelState.PRODUCTION),
    "promote (API)": (
        lambda c, w: c.post(f"/api/training/models/{w['version'].pk}/promote/"),
        200, lambda w: ModelVersion.objects.get().state == ModelState.PRODUCTION),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", list(ACTIONS))
def test_actions(world, centre_a, role, action, django_capture_on_commit_callbacks):
    request, allowed_answer, changed = ACTIONS[action]
    user = make_user(role, centre_a)
    allowed = role in (MAY_PROMOTE if action.startswith("promote") else MAY_TRAIN)
    with django_capture_on_commit_callbacks(execute=False):  # nothing reaches a broker
        response = request(client_for(user), world)
    assert response.status_code == (allowed_answer if allowed else 404), response.content
    assert changed(world) is allowed


@pytest.mark.parametrize("role", ROLES)
def test_run_websocket(transactional_db, world, centre_a, role):
    # transactional: the consumer reads the database from another thread (connection).
    communicator = websocket_for(make_user(role, centre_a),
                                 f"/ws/training/runs/{world['queued'].pk}/")

    async def connect():
        connected, _ = await communicator.connect()
        await communicator.disconnect()
        return connected

    assert run_coroutine(connect()) is (role in MAY_TRAIN)


@pytest.mark.parametrize("role", ROLES)
def test_navigation_shows_training_to_whom_it_concerns(world, centre_a, role):
    page = client_for(make_user(role, centre_a)).get("/").content.decode()
    assert ('href="/training/"' in page) is (role in MAY_TRAIN)
