"""Annotation workspace: the document format, saving with versions (409 on stale writes), the
review workflow and its lock, tenancy of every page and endpoint (table-driven), exports and
imports, training targets aligned to the clip, and the agreement report."""

from __future__ import annotations

import math

import numpy as np
import pytest
from django.http import Http404
from rest_framework.test import APIClient

from annotations import annotation_format as fmt
from annotations import workspace
from annotations.models import Annotation, AnnotationState, AuditEvent, ReviewerAssignment
from tests.annotations.test_permissions import ALLOWED, RELATIONS, ROLES
from tests.conftest import make_user
from tests.factories import UserFactory


def doc(*, keys=(), marks=(), tirads=None) -> dict:
    return {"format": fmt.FORMAT,
            "tracks": [{"id": "t1", "label": "nodule", "shape": "box", "keyframes": list(keys)}]
            if keys else [],
            "marks": list(marks), "tirads": tirads or {}}


def point(frame, x, y, kind="punctate", end=None, mid="m1"):
    return {"id": mid, "type": kind, "shape": "point", "frame_start": frame,
            "frame_end": frame if end is None else end, "points": [[x, y]]}


@pytest.fixture
def tree(centre_a, case_tree):
    t = case_tree(centre_a)
    video = t["video"]
    video.width, video.height, video.frame_count = 320, 240, 48
    video.region_x, video.region_y, video.region_w, video.region_h = 20, 10, 200, 100
    video.clip_shape = [48, 50, 100]
    video.save()
    t["annotator"] = make_user("annotator", centre_a)
    t["admin"] = make_user("centre_admin", centre_a)
    return t


def member(username: str, role: str, centre):
    from tests.factories import MembershipFactory

    user = UserFactory(username=username)
    MembershipFactory(user=user, centre=centre, role=role)
    return user


def client_for(user) -> APIClient:
    c = APIClient()
    c.force_authenticate(user)
    return c


# --- Format ----------------------------------------------------------------------------------

BAD_DOCUMENTS = {
    "not an object": ([], "JSON object"),
    "wrong format": ({"format": "other/2"}, "unsupported format"),
    "mark type": ({"marks": [point(1, 5, 5, kind="psammoma")]}, "type is one of"),
    "mark frame outside": ({"marks": [point(48, 5, 5)]}, "outside the video"),
    "range reversed": ({"marks": [{**point(9, 5, 5), "frame_end": 3}]}, "before frame_start"),
    "box with 1 point": ({"marks": [{**point(1, 5, 5), "shape": "box"}]}, "a box has 2"),
    "polygon of 2": ({"marks": [{**point(1, 5, 5), "shape": "polygon",
                                 "points": [[1, 1], [2, 2]]}]}, "polygon has 3+"),
    "NaN coordinate": ({"marks": [point(1, math.nan, 5)]}, "finite number"),
    "keyframe without box": ({"tracks": [{"keyframes": [{"frame": 0}]}]}, "box is"),
    "two keyframes one frame": ({"tracks": [{"keyframes": [
        {"frame": 2, "box": [0, 0, 5, 5]}, {"frame": 2, "outside": True}]}]}, "same frame"),
    "tirads option": ({"tirads": {"composition": "gooey"}}, "unknown option"),
    "none plus punctate": ({"tirads": {"echogenic_foci": ["none", "punctate"]}}, "cannot be"),
}


@pytest.mark.parametrize("name", list(BAD_DOCUMENTS))
def test_bad_documents_are_refused_with_a_reason(name):
    data, message = BAD_DOCUMENTS[name]
    with pytest.raises(fmt.FormatError, match=message):
        fmt.validate_document(data, n_frames=48)


def test_valid_document_is_normalised():
    clean = fmt.validate_document(doc(
        keys=[{"frame": 20, "box": [50, 40, 10, 20]}, {"frame": 0, "box": [1, 2, 3, 4]}],
        marks=[{**point(3, 5, 5), "shape": "box", "points": [[9, 9], [4, 2]], "id": None}],
        tirads={"composition": "solid", "echogenic_foci": ["punctate", "macro", "macro"]}),
        n_frames=48)
    keys = clean["tracks"][0]["keyframes"]
    assert [k["frame"] for k in keys] == [0, 20]
    assert keys[1]["box"] == [10, 20, 50, 40]  # corners in order
    assert clean["marks"][0]["points"] == [[4, 2], [9, 9]]
    assert clean["marks"][0]["id"].startswith("m-")
    assert clean["tirads"]["echogenic_foci"] == ["macro", "punctate"]


# --- Saving and versions ---------------------------------------------------------------------


def test_stale_save_gets_409_with_the_current_version_and_nothing_is_overwritten(tree):
    user = tree["annotator"]
    api = client_for(user)
    created = api.post(f"/api/videos/{tree['video'].pk}/annotations/", {}, format="json")
    assert created.status_code == 201
    url = f"/api/annotations/{created.json()['id']}/"
    first = api.put(url, {"version": 1, "data": doc(marks=[point(7, 30, 40)])}, format="json")
    assert first.status_code == 200 and first.json()["version"] == 2
    stale = api.put(url, {"version": 1, "data": doc(marks=[point(9, 1, 1, mid="m2")])},
                    format="json")
    assert stale.status_code == 409
    assert stale.json()["current_version"] == 2
    assert stale.json()["data"]["marks"][0]["frame_start"] == 7
    stored = Annotation.objects.get(pk=created.json()["id"])
    assert stored.version == 2 and [m["id"] for m in stored.data["marks"]] == ["m1"]
    api.get(url)
    events = AuditEvent.objects.filter(object_type="annotations.Annotation",
                                       object_id=str(stored.pk))
    assert list(events.order_by("id").values_list("action", flat=True)) == [
        "create", "change", "view"]  # the refused write left no trace of a change
    # A second start returns the same annotation (one per annotator and video).
    again = api.post(f"/api/videos/{tree['video'].pk}/annotations/", {}, format="json")
    assert again.status_code == 200 and again.json()["id"] == created.json()["id"]


def test_invalid_document_answers_400_and_keeps_the_version(tree):
    annotation, _ = workspace.annotation_start(video=tree["video"], user=tree["annotator"])
    response = client_for(tree["annotator"]).put(
        f"/api/annotations/{annotation.pk}/",
        {"version": 1, "data": {"marks": [point(99, 1, 1)]}}, format="json")
    assert response.status_code == 400 and "outside the video" in response.json()["detail"]
    annotation.refresh_from_db()
    assert annotation.version == 1


def test_tirads_result_comes_from_the_server(tree):
    annotation, _ = workspace.annotation_start(video=tree["video"], user=tree["annotator"])
    form = {"composition": "solid", "echogenicity": "hypo", "shape": "wider",
            "margin": "smooth", "echogenic_foci": ["punctate"]}
    response = client_for(tree["annotator"]).put(
        f"/api/annotations/{annotation.pk}/", {"version": 1, "data": doc(tirads=form)},
        format="json")
    result = response.json()["tirads_result"]
    # 2 + 2 + 0 + 0 + 3 = 7 points: TR5; 12 mm >= 10 mm: FNA (ACR 2017).
    assert (result["points"], result["level"], result["recommendation"]) == (7, 5, "fna")


# --- Workflow --------------------------------------------------------------------------------


def test_review_workflow_locks_the_accepted_annotation_until_reopened(tree):
    annotator, admin = tree["annotator"], tree["admin"]
    annotation, _ = workspace.annotation_start(video=tree["video"], user=annotator)
    a_api, r_api = client_for(annotator), client_for(admin)
    url = f"/api/annotations/{annotation.pk}/"

    def act(api, action, **extra):
        return api.post(url + "transition/", {"action": action, **extra}, format="json")

    assert act(a_api, "accept").status_code == 403  # annotators do not review
    assert act(a_api, "submit").json()["state"] == "submitted"
    waiting = a_api.put(url, {"version": 2, "data": doc()}, format="json")
    assert waiting.status_code == 403 and waiting.json()["locked"]
    assert act(r_api, "request_changes", comment="").status_code == 400
    asked = act(r_api, "request_changes", comment="Box misses the rim", frame=12).json()
    assert asked["state"] == "changes_requested"
    seen = a_api.get(url).json()
    assert [(c["frame"], c["text"]) for c in seen["comments"]] == [(12, "Box misses the rim")]
    assert seen["permissions"]["edit"]
    fixed = a_api.put(url, {"version": seen["version"], "data": doc(marks=[point(12, 5, 5)])},
                      format="json")
    assert fixed.status_code == 200
    act(a_api, "submit")
    accepted = act(r_api, "accept").json()
    assert accepted["state"] == "accepted" and not accepted["permissions"]["edit"]
    locked = a_api.put(url, {"version": accepted["version"], "data": doc()}, format="json")
    assert locked.status_code == 403 and locked.json()["locked"]
    assert act(a_api, "reopen").status_code == 403
    reopened = act(r_api, "reopen", reason="new pathology").json()
    assert reopened["state"] == "draft"
    reasons = [e.detail.get("reason") for e in AuditEvent.objects.filter(
        object_type="annotations.Annotation", object_id=str(annotation.pk))]
    assert "new pathology" in reasons


def commented(tree):
    """An annotation the reviewer sent back with one comment: (annotation, comment)."""
    annotation, _ = workspace.annotation_start(video=tree["video"], user=tree["annotator"])
    workspace.annotation_submit(annotation=annotation, user=tree["annotator"])
    workspace.annotation_request_changes(annotation=annotation, user=tree["admin"],
                                         text="Box misses the rim", frame=12)
    return annotation, annotation.comments.get()


@pytest.mark.parametrize("who, status", [
    ("annotator", 200),  # the owner says the comment is dealt with
    ("admin", 200),  # a reviewer agrees, or opens it again
    ("colleague", 404),  # a fellow annotator of the centre does not see another's annotation
    ("outsider", 404),  # another centre: the annotation does not exist
])
def test_who_may_mark_a_review_comment_addressed(tree, centre_a, centre_b, who, status):
    users = {"annotator": tree["annotator"], "admin": tree["admin"],
             "colleague": member("colleague", "annotator", centre_a),
             "outsider": member("outsider", "centre_admin", centre_b)}
    annotation, comment = commented(tree)
    url = f"/api/annotations/{annotation.pk}/comments/{comment.pk}/"
    response = client_for(users[who]).post(url, {"resolved": True}, format="json")
    assert response.status_code == status
    comment.refresh_from_db()
    assert comment.resolved is (status == 200)
    if status == 200:
        assert response.json()["comments"][0]["resolved"] is True
        event = AuditEvent.objects.filter(object_id=str(annotation.pk)).latest("pk")
        assert event.detail == {"comment": comment.pk, "resolved": True}
        assert event.user == users[who]
        again = client_for(tree["admin"]).post(url, {"resolved": False}, format="json")
        assert again.json()["comments"][0]["resolved"] is False


def test_a_read_only_viewer_cannot_mark_comments_and_bad_bodies_are_refused(tree, centre_a):
    annotation, comment = commented(tree)
    url = f"/api/annotations/{annotation.pk}/comments/{comment.pk}/"
    assert client_for(tree["annotator"]).post(url, {}, format="json").status_code == 400
    assert client_for(tree["annotator"]).post(
        f"/api/annotations/{annotation.pk}/comments/{comment.pk + 99}/", {"resolved": True},
        format="json").status_code == 404
    engineer = make_user("ml_engineer", centre_a)  # reads every annotation (data sets)...
    seen = client_for(engineer).get(f"/api/annotations/{annotation.pk}/")
    assert seen.status_code == 200 and not seen.json()["permissions"]["resolve_comments"]
    refused = client_for(engineer).post(url, {"resolved": True}, format="json")
    assert refused.status_code == 403  # ...but takes no part in the review
    comment.refresh_from_db()
    assert not comment.resolved


def test_assigned_reviewer_reviews_and_consensus_is_what_training_uses(tree, centre_a):
    from annotations.selectors import consensus_annotations_for

    reviewer = member("assigned", "annotator", centre_a)  # an annotator by role...
    annotation, _ = workspace.annotation_start(video=tree["video"], user=tree["annotator"])
    workspace.annotation_save(annotation=annotation, data=doc(marks=[point(3, 40, 30)]),
                              version=1, user=tree["annotator"])
    workspace.annotation_submit(annotation=annotation, user=tree["annotator"])
    with pytest.raises(Http404):  # not even visible to a fellow annotator
        workspace.annotation_accept(annotation=annotation, user=reviewer)
    ReviewerAssignment.objects.create(centre=centre_a, user=reviewer)  # ...assigned to review
    workspace.annotation_accept(annotation=annotation, user=reviewer)
    assert not consensus_annotations_for(centre=centre_a).exists()
    consensus = workspace.annotation_consensus_start(video=tree["video"], user=reviewer,
                                                     source=annotation)
    assert consensus.data["marks"][0]["frame_start"] == 3
    workspace.annotation_accept(annotation=consensus, user=reviewer)
    assert list(consensus_annotations_for(centre=centre_a)) == [consensus]
    # The other annotator's own work stays private to them and reviewers.
    other = member("other-annotator", "annotator", centre_a)
    rows = client_for(other).get(f"/api/videos/{tree['video'].pk}/annotations/").json()
    assert [r["is_consensus"] for r in rows["results"]] == [True]


# --- Tenancy: role x relation x endpoint ----------------------------------------------------
# endpoint -> (method, URL, what it needs: "view" (read the consensus), "create" (annotate),
# "review"); the object is the consensus annotation of centre A's video.
ENDPOINTS = {
    "workspace page": ("get", "/annotations/{a}/", "view"),
    "annotate page": ("get", "/videos/{v}/annotate/", "view"),
    "annotation API": ("get", "/api/annotations/{a}/", "view"),
    "video annotations API": ("get", "/api/videos/{v}/annotations/", "view"),
    "export JSON": ("get", "/api/annotations/{a}/export.json", "view"),
    "export CVAT": ("get", "/api/annotations/{a}/export.xml", "view"),
    "start own annotation": ("post", "/api/videos/{v}/annotations/", "create"),
    "save consensus": ("put", "/api/annotations/{a}/", "review"),
    "review queue": ("get", "/centres/{c}/review/", "review"),
    "agreement": ("get", "/centres/{c}/agreement/", "review"),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("relation", RELATIONS)
@pytest.mark.parametrize("name", list(ENDPOINTS))
def test_workspace_urls_follow_policy(tree, centre_b, role, relation, name, client):
    video = tree["video"]
    consensus = workspace.annotation_consensus_start(video=video, user=tree["admin"])
    home = tree["centre"] if relation == "own" else centre_b
    if role in ("annotator", "reader", "centre_admin"):
        user = member(f"probe-{role}", role, home)
    else:
        user = make_user(role, home)
    method, template, needs = ENDPOINTS[name]
    url = template.format(a=consensus.pk, v=video.pk, c=tree["centre"].code)
    client.force_login(user)
    body = {"version": consensus.version, "data": doc()} if method == "put" else {}
    response = getattr(client, method)(url, body, content_type="application/json")
    allowed = ALLOWED[(role, relation)]
    reviewer = "manage_members" in allowed
    if "view" not in allowed:
        assert response.status_code == 404, (name, response.status_code)
        return
    ok = {"view": True, "create": "create" in allowed, "review": reviewer}[needs]
    if ok:
        assert response.status_code in (200, 201, 302), (name, response.status_code)
    else:
        assert response.status_code == 403, (name, response.status_code)


def test_annotators_cannot_read_each_others_annotation(tree, centre_a):
    annotation, _ = workspace.annotation_start(video=tree["video"], user=tree["annotator"])
    other = member("second", "annotator", centre_a)
    assert client_for(other).get(f"/api/annotations/{annotation.pk}/").status_code == 404
    assert client_for(tree["admin"]).get(f"/api/annotations/{annotation.pk}/").status_code == 200


# --- Export and import -----------------------------------------------------------------------


def test_json_and_cvat_exports_round_trip_through_import(tree):
    user = tree["annotator"]
    annotation, _ = workspace.annotation_start(video=tree["video"], user=user)
    keys = [{"frame": 0, "box": [10, 10, 50, 50]}, {"frame": 20, "box": [30, 10, 70, 50]},
            {"frame": 30, "outside": True}]
    data = doc(keys=keys, marks=[point(7, 44.5, 33.25, end=9)],
               tirads={"composition": "solid"})
    workspace.annotation_save(annotation=annotation, data=data, version=1, user=user)
    api = client_for(user)
    exported = api.get(f"/api/annotations/{annotation.pk}/export.json")
    assert exported.status_code == 200 and exported.json()["marks"][0]["points"] == [[44.5, 33.25]]
    xml = api.get(f"/api/annotations/{annotation.pk}/export.xml").content.decode()
    assert '<track id="0" label="nodule"' in xml and 'label="punctate"' in xml
    assert AuditEvent.objects.filter(action="export", object_id=str(annotation.pk)).count() == 2

    # Wipe, then import the CVAT file: the same boxes on every frame, the point on 7..9.
    workspace.annotation_save(annotation=annotation, data=doc(tirads={"composition": "solid"}),
                              version=2, user=user)
    imported = api.post(f"/api/annotations/{annotation.pk}/import/?version=3", xml,
                        content_type="application/xml")
    assert imported.status_code == 200, imported.content
    back = imported.json()["data"]
    n = tree["video"].frame_count
    assert fmt.nodule_boxes(back, n) == fmt.nodule_boxes(fmt.validate_document(data), n)
    assert [(m["frame_start"], m["frame_end"], m["points"]) for m in back["marks"]] == [
        (7, 9, [[44.5, 33.25]])]
    assert back["tirads"]["composition"] == "solid"  # not part of CVAT: kept
    stale = api.post(f"/api/annotations/{annotation.pk}/import/?version=3",
                     exported.json(), format="json")
    assert stale.status_code == 409


# --- Training targets ------------------------------------------------------------------------


def test_training_targets_map_frame_pixels_into_the_clip(tree):
    # Region x=20, y=10, 200 x 100 -> clip 100 wide, 50 high: a factor 0.5 both ways.
    user = tree["annotator"]
    annotation, _ = workspace.annotation_start(video=tree["video"], user=user)
    keys = [{"frame": 0, "box": [20, 10, 60, 30]}, {"frame": 10, "box": [40, 30, 80, 50]},
            {"frame": 12, "outside": True}]
    marks = [point(7, 61, 41),  # -> clip (20.5, 15.5)
             {"id": "m2", "type": "macro", "shape": "box", "frame_start": 3, "frame_end": 4,
              "points": [[100, 50], [110, 60]]},  # -> clip x 40..45, y 20..25
             {"id": "m3", "type": "comet", "shape": "point", "frame_start": 3, "frame_end": 3,
              "points": [[104, 54]]}]  # under the macro box: the box's more specific type wins
    workspace.annotation_save(annotation=annotation, data=doc(keys=keys, marks=marks),
                              version=1, user=user)
    mask, boxes = workspace.annotation_training_targets(annotation=annotation)
    assert mask.shape == (48, 50, 100) and mask.dtype == np.uint8
    assert boxes.shape == (48, 4) and boxes.dtype == np.float32
    ys, xs = np.nonzero(mask[7])
    assert set(mask[7][ys, xs]) == {1}
    assert abs(xs.mean() - 20.0) <= 1 and abs(ys.mean() - 15.0) <= 1
    assert mask[6].sum() == 0 and mask[8].sum() == 0  # on frame 7 only
    assert (mask[3, 20:25, 40:45] == 2).all() and (mask[4, 20:25, 40:45] == 2).all()
    assert mask[5].sum() == 0
    np.testing.assert_allclose(boxes[0], [0, 0, 20, 10])
    np.testing.assert_allclose(boxes[5], [5, 5, 25, 15])  # interpolated halfway
    assert np.isnan(boxes[12:]).all() and not np.isnan(boxes[:12]).any()
    # By video: only an accepted consensus is a training target.
    assert workspace.annotation_training_targets(video=tree["video"]) is None


def test_ground_truth_becomes_a_document_with_sparse_keyframes():
    n = 30
    boxes = np.full((n, 4), np.nan, np.float32)
    for t in range(3, 25):
        boxes[t] = (10 + t, 20, 50 + t, 60)
    mask = np.zeros((n, 80, 100), np.uint8)
    mask[5, 30, 40] = 1
    mask[9, 10:20, 10:20] = 2
    data = fmt.document_from_truth(mask, boxes, key_every=8)
    frames = [k["frame"] for k in data["tracks"][0]["keyframes"]]
    assert frames == [3, 8, 16, 24, 25]
    again = fmt.nodule_boxes(data, n)
    for t in range(n):
        if np.isnan(boxes[t]).any():
            assert again[t] is None
        else:
            np.testing.assert_allclose(again[t], boxes[t], atol=0.11)
    kinds = sorted((m["type"], m["shape"], m["frame_start"]) for m in data["marks"])
    assert kinds == [("macro", "polygon", 9), ("punctate", "point", 5)]


# --- Agreement -------------------------------------------------------------------------------


def test_agreement_report_with_two_annotators(tree, centre_a, case_tree):
    from annotations.agreement_report import centre_agreement
    from tests.factories import VideoFactory

    second = member("second", "annotator", centre_a)
    videos = [tree["video"]] + [VideoFactory(nodule=tree["nodule"]) for _ in range(3)]
    comps = {tree["annotator"]: ["solid", "solid", "mixed", "mixed"],
             second: ["solid", "solid", "mixed", "solid"]}
    for user, calls in comps.items():
        for video, comp in zip(videos, calls, strict=True):
            a, _ = workspace.annotation_start(video=video, user=user)
            shift = 0 if user == second else 10
            data = doc(keys=[{"frame": 0, "box": [0 + shift, 0, 20 + shift, 20]}],
                       tirads={"composition": comp})
            workspace.annotation_save(annotation=a, data=data, version=1, user=user)
            workspace.annotation_submit(annotation=a, user=user)
    report = centre_agreement(user=tree["admin"], centre=centre_a)
    assert report["method"] == "cohen" and report["n_videos"] == 4
    by_key = {f["key"]: f for f in report["features"]}
    # 3 of 4 agree; chance agreement 0.5 -> kappa 0.5.
    assert by_key["composition"]["kappa"] == pytest.approx(0.5)
    assert by_key["echogenicity"]["n"] == 0
    # Boxes 20 wide shifted by 10: IoU 10*20 / (2*400 - 200) = 1/3 on every frame.
    assert report["iou_mean"] == pytest.approx(1 / 3)


def test_workspace_of_a_video_in_processing_shows_no_player(tree, client):
    annotation = workspace.annotation_consensus_start(video=tree["video"], user=tree["admin"])
    tree["video"].status = "processing"
    tree["video"].save()
    client.force_login(tree["admin"])
    page = client.get(f"/annotations/{annotation.pk}/").content.decode()
    assert "the workspace opens once its frames are ready" in page
    assert "workspace.js" not in page


def test_pages_render_for_a_reviewer(tree, client):
    annotation, _ = workspace.annotation_start(video=tree["video"], user=tree["annotator"])
    workspace.annotation_submit(annotation=annotation, user=tree["annotator"])
    client.force_login(tree["admin"])
    queue = client.get(f"/centres/{tree['centre'].code}/review/").content.decode()
    assert "1 to review" in queue and f"/annotations/{annotation.pk}/" in queue
    page = client.get(f"/annotations/{annotation.pk}/").content.decode()
    assert "workspace-config" in page and "Annotation by" in page
    assert AnnotationState.SUBMITTED.label in page
    agreement = client.get(f"/centres/{tree['centre'].code}/agreement/").content.decode()
    assert "Inter-annotator agreement" in agreement and "0 videos read by two" in agreement


# --- Demo content ----------------------------------------------------------------------------


def test_seed_demo_annotations_from_ground_truth(tmp_path, centre_a, case_tree):
    import csv
    import json

    from django.core.management import call_command

    from annotations.selectors import consensus_annotations_for, review_queue
    from tests.factories import NoduleFactory, PatientFactory, VideoFactory

    admin = member("c1admin", "centre_admin", centre_a)
    member("c1annotator", "annotator", centre_a)
    (tmp_path / "truth").mkdir()
    rows = []
    for i in range(4):
        patient = PatientFactory(centre=centre_a, code=f"CA-P{i}")
        VideoFactory(nodule=NoduleFactory(patient=patient, code="N1"), frame_count=32)
        boxes = np.full((32, 4), np.nan, np.float32)
        boxes[2:30] = (40 + i, 30, 90 + i, 80)
        mask = np.zeros((32, 120, 160), np.uint8)
        mask[10 + i, 50, 60] = 1
        meta = {"echo": 0.4, "margin": "lobulated", "taller_than_wide": True, "cystic": False,
                "n_micro": 1, "n_macro": 0, "rim": False}
        np.savez(tmp_path / "truth" / f"CA-P{i}_N1.npz", mask=mask, boxes=boxes,
                 meta=np.array(json.dumps(meta)))
        rows.append({"centre": "CA", "patient": f"CA-P{i}", "nodule": "N1",
                     "video": f"videos/CA/CA-P{i}_N1.mp4"})
    with (tmp_path / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    from annotations.management.commands import seed_demo_annotations

    seed_demo_annotations.DEMO_PEOPLE["CA"] = ("c1annotator", "c1admin")
    try:
        call_command("seed_demo_annotations", str(tmp_path))
        call_command("seed_demo_annotations", str(tmp_path))  # idempotent
    finally:
        del seed_demo_annotations.DEMO_PEOPLE["CA"]
    own = Annotation.objects.filter(is_consensus=False, annotator__username="c1annotator")
    assert sorted(own.values_list("state", flat=True)) == sorted(
        ["accepted", "submitted", "changes_requested", "submitted"])
    [consensus] = consensus_annotations_for(centre=centre_a)
    keys = [k["frame"] for k in consensus.data["tracks"][0]["keyframes"]]
    assert keys == [2, 8, 16, 24, 29, 30]
    assert consensus.data["marks"][0]["type"] == "punctate"
    assert consensus.data["tirads"]["echogenic_foci"] == ["punctate"]
    queue = review_queue(user=admin, centre=centre_a)
    assert sum(row["waiting"] for row in queue) == 6  # 2 submitted + 4 second reads
