"""Permission tests generated from a table, as CVAT does: role x relation to the object's
centre x object type x action -> allowed. Another centre's objects answer 404 and never show
in lists or counts."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from annotations.models import CentreRole, PlatformRole
from annotations.permissions import (
    CENTRE_ROLE_ACTIONS,
    Action,
    PlatformAction,
    can,
    can_platform,
)
from tests.conftest import make_user
from tests.factories import UserFactory

ROLES = [
    CentreRole.ANNOTATOR,
    CentreRole.READER,
    CentreRole.CENTRE_ADMIN,
    PlatformRole.ML_ENGINEER,
    PlatformRole.PLATFORM_ADMIN,
]
# "own": the object belongs to a centre where the user has the role (platform roles have no
# centre; they act everywhere). "other": the user's role is at centre B, the object at A.
RELATIONS = ["own", "other"]

# The policy, written out: (role, relation) -> actions allowed on case objects of that centre.
ALLOWED = {
    ("annotator", "own"): {"view", "create", "change"},
    ("annotator", "other"): set(),
    ("reader", "own"): {"view"},
    ("reader", "other"): set(),
    ("centre_admin", "own"): {"view", "create", "change", "delete", "export", "manage_members"},
    ("centre_admin", "other"): set(),
    ("ml_engineer", "own"): {"view", "export"},
    ("ml_engineer", "other"): {"view", "export"},
    ("platform_admin", "own"): {"view", "create", "change", "delete", "export", "manage_members"},
    ("platform_admin", "other"): {
        "view", "create", "change", "delete", "export", "manage_members",
    },
}

OBJECT_TYPES = {
    # object type -> (API list URL, key in the case tree)
    "patient": ("/api/patients/", "patient"),
    "nodule": ("/api/nodules/", "nodule"),
    "pathology": ("/api/pathology/", "pathology"),
    "video": ("/api/videos/", "video"),
}


@pytest.fixture
def scenario(centre_a, centre_b, case_tree):
    tree_a = case_tree(centre_a)
    tree_b = case_tree(centre_b)

    def user_for(role: str, relation: str):
        home = centre_a if relation == "own" else centre_b
        return make_user(role, home)

    return {"a": tree_a, "b": tree_b, "user_for": user_for}


def api_client(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("relation", RELATIONS)
@pytest.mark.parametrize("action", list(Action))
def test_permission_layer_matches_policy_table(scenario, role, relation, action):
    user = scenario["user_for"](role, relation)
    expected = action.value in ALLOWED[(role, relation)]
    assert can(user, action, scenario["a"]["centre"]) is expected


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("relation", RELATIONS)
@pytest.mark.parametrize("object_type", list(OBJECT_TYPES))
def test_api_object_view_and_list_follow_policy(scenario, role, relation, object_type):
    user = scenario["user_for"](role, relation)
    url, key = OBJECT_TYPES[object_type]
    obj = scenario["a"][key]
    can_view = "view" in ALLOWED[(role, relation)]

    detail = api_client(user).get(f"{url}{obj.pk}/")
    assert detail.status_code == (200 if can_view else 404)

    listing = api_client(user).get(url).json()
    ids = {row["id"] for row in listing["results"]}
    assert (obj.pk in ids) is can_view
    # Counts never include invisible rows.
    assert listing["count"] == len(ids)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("relation", RELATIONS)
def test_original_video_download_needs_export_right(scenario, role, relation, client, tmp_path,
                                                     settings):
    from django.core.files.base import ContentFile

    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                    "OPTIONS": {"location": str(tmp_path)}},
    }
    video = scenario["a"]["video"]
    video.file.save("clip.mp4", ContentFile(b"\x00\x00\x00\x18ftypmp42"), save=True)
    user = scenario["user_for"](role, relation)
    client.force_login(user)
    response = client.get(f"/files/videos/{video.pk}/original")
    allowed = ALLOWED[(role, relation)]
    if "view" not in allowed:
        assert response.status_code == 404
    elif "export" in allowed:
        assert response.status_code == 200
        assert b"".join(response.streaming_content).startswith(b"\x00\x00\x00\x18ftyp")
        assert response["Cache-Control"].startswith("private")
    else:
        assert response.status_code == 403


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("relation", RELATIONS)
def test_membership_changes_follow_policy(scenario, role, relation):
    user = scenario["user_for"](role, relation)
    newcomer = UserFactory(username="newcomer")
    centre_a = scenario["a"]["centre"]
    response = api_client(user).post(
        "/api/memberships/",
        {"user": newcomer.pk, "centre": centre_a.pk, "role": CentreRole.READER},
        format="json",
    )
    allowed = ALLOWED[(role, relation)]
    if "manage_members" in allowed:
        assert response.status_code == 201, response.content
        assert newcomer.memberships.filter(centre=centre_a, role="reader").exists()
    else:
        assert response.status_code == (403 if "view" in allowed else 404)
        assert not newcomer.memberships.filter(centre=centre_a).exists()


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("relation", RELATIONS)
def test_centre_page_is_404_for_other_centres(scenario, role, relation, client):
    user = scenario["user_for"](role, relation)
    client.force_login(user)
    response = client.get(f"/centres/{scenario['a']['centre'].code}/")
    assert response.status_code == (200 if "view" in ALLOWED[(role, relation)] else 404)
    if response.status_code == 200:
        # Only centre admins and platform admins see the membership form.
        can_manage = "manage_members" in ALLOWED[(role, relation)]
        assert (b"Add a member" in response.content) is can_manage


PLATFORM_PAGES = ["/audit/", "/system/", "/system/status.json"]
PLATFORM_ALLOWED = {
    "annotator": set(),
    "reader": set(),
    "centre_admin": set(),
    "ml_engineer": {"train", "promote", "view_all_centres"},
    "platform_admin": {a.value for a in PlatformAction},
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", list(PlatformAction))
def test_platform_actions_follow_policy(scenario, role, action):
    user = scenario["user_for"](role, "own")
    assert can_platform(user, action) is (action.value in PLATFORM_ALLOWED[role])


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("url", PLATFORM_PAGES)
def test_platform_pages_answer_404_to_others(scenario, role, url, client):
    client.force_login(scenario["user_for"](role, "own"))
    response = client.get(url)
    assert response.status_code == (200 if role == "platform_admin" else 404)


@pytest.mark.parametrize("role", ROLES)
def test_admin_site_only_for_platform_admins(scenario, role, client):
    client.force_login(scenario["user_for"](role, "own"))
    response = client.get("/admin/annotations/patient/")
    if role == "platform_admin":
        assert response.status_code == 200
        assert scenario["b"]["patient"].code.encode() in response.content
    else:
        # Sent to the login page, never shown the data.
        assert response.status_code == 302
        assert scenario["a"]["patient"].code.encode() not in response.content


def test_policy_table_covers_every_centre_role():
    assert {r.value for r in CentreRole} == {r for r, _ in ALLOWED} - set(PlatformRole.values)
    for role, actions in CENTRE_ROLE_ACTIONS.items():
        assert {a.value for a in actions} == ALLOWED[(role, "own")]


def test_inactive_and_anonymous_users_see_nothing(scenario):
    from django.contrib.auth.models import AnonymousUser

    user = scenario["user_for"]("centre_admin", "own")
    user.is_active = False
    user.save()
    assert not can(user, Action.VIEW, scenario["a"]["centre"])
    assert not can(AnonymousUser(), Action.VIEW, scenario["a"]["centre"])
    assert APIClient().get("/api/patients/").status_code in (401, 403)


# --- Case pages, frame store and ingestion endpoints ----------------------------------------
# object URL -> the action it needs beyond viewing (None: viewing is enough), and the method.
# Other centres' objects answer 404; a visible object without the right answers 403.
CASE_URLS = {
    "patient page": ("/patients/{patient}/", None, "get"),
    "nodule page": ("/nodules/{nodule}/", None, "get"),
    "nodule videos.json": ("/nodules/{nodule}/videos.json", None, "get"),
    "video page": ("/videos/{video}/", None, "get"),
    "frame": ("/files/videos/{video}/v1/frames/1.jpg", None, "get"),
    "chunk": ("/files/videos/{video}/v1/chunks/0", None, "get"),
    "thumbnail": ("/files/videos/{video}/v1/thumbnail.jpg", None, "get"),
    "case list": ("/centres/{centre}/cases/", None, "get"),
    "pathology form": ("/nodules/{nodule}/pathology/", "change", "get"),
    "new case form": ("/centres/{centre}/cases/new/", "create", "get"),
    "training clip": ("/files/videos/{video}/v1/clip.npy", "export", "get"),
    "reprocess (page)": ("/videos/{video}/reprocess/", "change", "post"),
    "reprocess (API)": ("/api/videos/{video}/reprocess/", "change", "post"),
}


@pytest.fixture
def framed_scenario(scenario, storage):
    """Centre A's video with a real (tiny) frame store, thumbnail, clip and upload."""
    import cv2
    import numpy as np
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from annotations.framestore import ChunkWriter

    video = scenario["a"]["video"]
    folder = storage["media"] / "frames" / "CA" / str(video.pk) / "v1"
    folder.mkdir(parents=True)
    writer = ChunkWriter(folder, 32)
    for value in (10, 200):
        writer.add(cv2.imencode(".jpg", np.full((8, 8, 3), value, np.uint8))[1].tobytes())
    writer.flush()
    (folder / "thumbnail.jpg").write_bytes(writer.chunks[0].read_bytes()[-200:])
    np.save(folder / "clip.npy", np.zeros((2, 4, 4), np.uint8))
    video.file.save("x", ContentFile(b"\x00\x00\x00\x18ftypmp42"), save=False)
    prefix = f"frames/CA/{video.pk}/v1"
    video.frames_prefix, video.frames_chunk_size, video.frames_version = prefix, 32, 1
    video.frame_count, video.thumbnail, video.clip = 2, f"{prefix}/thumbnail.jpg", \
        f"{prefix}/clip.npy"
    video.save()
    assert default_storage.exists(video.clip)
    return scenario


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("relation", RELATIONS)
@pytest.mark.parametrize("name", list(CASE_URLS))
def test_case_urls_follow_policy(framed_scenario, role, relation, name, client,
                                 django_capture_on_commit_callbacks):
    tree = framed_scenario["a"]
    template, needs, method = CASE_URLS[name]
    url = template.format(patient=tree["patient"].pk, nodule=tree["nodule"].pk,
                          video=tree["video"].pk, centre=tree["centre"].code)
    user = framed_scenario["user_for"](role, relation)
    client.force_login(user)
    with django_capture_on_commit_callbacks(execute=False):
        response = getattr(client, method)(url)
    allowed = ALLOWED[(role, relation)]
    if "view" not in allowed:
        expected = 404
    elif needs is None or needs in allowed:
        expected = {"post": (302, 202)}.get(method, (200,))
    else:
        expected = (403,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert response.status_code in expected, (name, response.status_code)
    if name == "frame" and response.status_code == 200:
        assert response["Content-Type"] == "image/jpeg"
        assert response["Cache-Control"] == "private, max-age=31536000, immutable"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("relation", RELATIONS)
def test_making_a_member_a_reviewer_follows_policy(scenario, role, relation, client):
    from annotations.models import AuditEvent, ReviewerAssignment
    from annotations.workspace import is_reviewer

    user = scenario["user_for"](role, relation)
    centre_a = scenario["a"]["centre"]
    from tests.factories import MembershipFactory

    member = UserFactory(username="would-be-reviewer")
    membership = MembershipFactory(user=member, centre=centre_a, role=CentreRole.ANNOTATOR)
    client.force_login(user)
    url = f"/centres/{centre_a.code}/members/{membership.pk}/reviewer/"
    response = client.post(url, {"reviewer": "1"})
    allowed = ALLOWED[(role, relation)]
    if "manage_members" in allowed:
        assert response.status_code == 302
        assert is_reviewer(member, scenario["a"]["video"])
        event = AuditEvent.objects.filter(object_id=str(membership.pk)).latest("pk")
        assert event.detail == {"member": member.username, "reviewer": True}
        page = client.get(f"/centres/{centre_a.code}/").content.decode()
        assert "Stop reviewing" in page
        client.post(url, {})  # a garbled form changes nothing
        assert is_reviewer(member, scenario["a"]["video"])
        client.post(url, {"reviewer": "0"})
        assert not is_reviewer(member, scenario["a"]["video"])
    else:
        assert response.status_code == (403 if "view" in allowed else 404)
        assert not ReviewerAssignment.objects.filter(user=member).exists()
