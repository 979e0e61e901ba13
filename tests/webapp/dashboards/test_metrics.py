"""The dashboard's numbers against `ml.stats` on a small hand-built set of predictions, the
comparison's paired DeLong test on shared cases, worklists as cells of the 2x2 table, and the
CSV export carrying the same numbers."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from django.urls import reverse

from ml import stats
from tests.conftest import make_user
from tests.webapp.dashboards.conftest import World, add_cases, make_version
from webapp.dashboards.views import dashboard_data

pytestmark = pytest.mark.django_db

# Centre A, internal test: labels and two models' probabilities. The baseline has no
# prediction for the last case, so the comparison uses the 9 shared cases.
A_LABELS = [1, 1, 1, 1, 0, 0, 0, 0, 0, 1]
A_STUDY = [0.91, 0.72, 0.40, 0.66, 0.30, 0.55, 0.12, 0.08, 0.45, 0.81]
A_BASE = [0.60, 0.52, 0.58, 0.41, 0.49, 0.61, 0.33, 0.20, 0.47, None]
# Centre B, external test.
B_LABELS = [1, 0, 1, 0, 0, 1, 0, 1]
B_STUDY = [0.77, 0.62, 0.35, 0.21, 0.44, 0.58, 0.05, 0.93]
B_BASE = [0.55, 0.50, 0.45, 0.30, 0.52, 0.51, 0.25, 0.70]
THRESHOLD = 0.5


@pytest.fixture
def hand_built(db, media, centre_a, centre_b):
    from webapp.training.models import DatasetSnapshot

    snapshot = DatasetSnapshot.objects.create(name="hand-built")
    world = World(snapshot=snapshot)
    world.versions["irv2_cam"] = make_version(snapshot, number=7, arch="irv2_cam",
                                              threshold=THRESHOLD, state="production")
    world.versions["r3d_18"] = make_version(snapshot, number=8, arch="r3d_18", threshold=0.45)
    add_cases(world, centre_a, "internal_test", A_LABELS,
              {"irv2_cam": A_STUDY, "r3d_18": A_BASE})
    add_cases(world, centre_b, "external_test", B_LABELS,
              {"irv2_cam": B_STUDY, "r3d_18": B_BASE})
    return world


def assert_proportion(shown, expected):
    assert shown["k"] == expected.k and shown["n"] == expected.n
    assert shown["ci_low"] == pytest.approx(expected.ci_low)
    assert shown["ci_high"] == pytest.approx(expected.ci_high)


def check_block(block, y, p):
    ci = stats.roc_auc_ci(y, p)
    assert block["auroc"] == pytest.approx(ci.auc)
    assert block["auroc_ci"] == pytest.approx([ci.ci_low, ci.ci_high])
    bm = stats.binary_metrics(y, p, THRESHOLD)
    assert (block["tp"], block["fp"], block["tn"], block["fn"]) == (bm.tp, bm.fp, bm.tn, bm.fn)
    for name in ("sensitivity", "specificity", "ppv", "npv"):
        assert_proportion(block[name], getattr(bm, name))
    assert block["brier"] == pytest.approx(stats.brier_score(y, p))
    cal = stats.calibration_curve(y, p, n_bins=10)
    assert block["calibration"]["observed"] == pytest.approx(cal.observed_frequency.tolist())
    curve = stats.roc_curve_points(y, p)
    assert block["roc"]["tpr"] == pytest.approx(np.asarray(curve.tpr).tolist())


def test_metrics_per_centre_and_overall_match_ml_stats(hand_built, centre_a):
    user = make_user("ml_engineer", centre_a)
    versions = list(hand_built.versions.values())
    study = hand_built.versions["irv2_cam"]
    for split, blocks in (
        ("internal_test", {"CA": (A_LABELS, A_STUDY)}),
        ("external_test", {"CB": (B_LABELS, B_STUDY)}),
        ("test", {"CA": (A_LABELS, A_STUDY), "CB": (B_LABELS, B_STUDY)}),
    ):
        perf = dashboard_data(user=user, versions=versions, version=study,
                              split=split)["performance"]
        assert set(perf["centres"]) == set(blocks)
        for code, (y, p) in blocks.items():
            check_block(perf["centres"][code], y, p)
        y_all = sum((b[0] for b in blocks.values()), [])
        p_all = sum((b[1] for b in blocks.values()), [])
        check_block(perf["overall"], y_all, p_all)


def test_comparison_is_a_paired_delong_test_on_shared_cases(hand_built, centre_a):
    user = make_user("ml_engineer", centre_a)
    versions = list(hand_built.versions.values())
    study = hand_built.versions["irv2_cam"]
    rows = {r["arch"]: r for r in dashboard_data(user=user, versions=versions, version=study,
                                                 split="internal_test")["comparison"]}
    shared = [i for i, b in enumerate(A_BASE) if b is not None]
    y = [A_LABELS[i] for i in shared]
    a = [A_STUDY[i] for i in shared]
    b = [A_BASE[i] for i in shared]
    test = stats.delong_roc_test(y, a, b)
    base = rows["r3d_18"]
    assert base["n_shared"] == 9
    assert base["p_value"] == pytest.approx(test.p_value)
    assert base["difference"] == pytest.approx(test.difference)
    assert base["auroc"] == pytest.approx(stats.roc_auc_ci(y, b).auc)
    assert base["group"] == "3D baseline"
    assert rows["irv2_cam"]["selected"] and rows["irv2_cam"]["p_value"] is None
    assert rows["irv2_cam"]["n_shared"] == 10


@pytest.mark.parametrize("kind", ["tp", "fp", "tn", "fn"])
def test_worklists_are_the_cells_of_the_two_by_two_table(client, hand_built, centre_a, kind):
    client.force_login(make_user("ml_engineer", centre_a))
    study = hand_built.versions["irv2_cam"]
    response = client.get(reverse("dashboards-cases"),
                          {"model": study.pk, "split": "external_test", "worklist": kind})
    expected = getattr(stats.binary_metrics(B_LABELS, B_STUDY, THRESHOLD), kind)
    assert response.status_code == 200
    assert response.context["page"].paginator.count == expected
    for prediction in response.context["page"]:
        truth = hand_built.labels[prediction.video_id]
        called = prediction.probability >= THRESHOLD
        assert (truth, called) == {"tp": (1, True), "fp": (0, True), "tn": (0, False),
                                   "fn": (1, False)}[kind]


def test_false_negative_review_walks_the_worklist(client, hand_built, centre_a):
    client.force_login(make_user("ml_engineer", centre_a))
    study = hand_built.versions["irv2_cam"]
    query = {"model": study.pk, "split": "test", "worklist": "fn"}
    cases = client.get(reverse("dashboards-cases"), query).context["page"].object_list
    ids = [p.pk for p in cases]
    assert len(ids) == 2  # A: 0.40 malignant; B: 0.35 malignant
    first = client.get(reverse("dashboards-case", args=[ids[0]]), query)
    assert first.context["previous"] is None and first.context["next"] == ids[1]
    assert first.context["truth"] == "malignant"
    last = client.get(reverse("dashboards-case", args=[ids[1]]), query)
    assert last.context["previous"] == ids[0] and last.context["next"] is None


def test_csv_export_carries_the_shown_numbers(client, hand_built, centre_a):
    client.force_login(make_user("ml_engineer", centre_a))
    study = hand_built.versions["irv2_cam"]
    response = client.get(reverse("dashboards-export", args=["metrics"]),
                          {"model": study.pk, "split": "external_test"})
    assert response["Content-Type"].startswith("text/csv")
    rows = {r["centre"]: r for r in csv.DictReader(io.StringIO(response.content.decode()))}
    ci = stats.roc_auc_ci(B_LABELS, B_STUDY)
    bm = stats.binary_metrics(B_LABELS, B_STUDY, THRESHOLD)
    assert float(rows["CB"]["auroc"]) == pytest.approx(ci.auc, abs=1e-4)
    assert float(rows["CB"]["auroc_ci_low"]) == pytest.approx(ci.ci_low, abs=1e-4)
    assert int(rows["CB"]["fn"]) == bm.fn
    assert float(rows["CB"]["sens_ci_high"]) == pytest.approx(bm.sensitivity.ci_high, abs=1e-4)
    assert float(rows["CB"]["npv"]) == pytest.approx(bm.npv.estimate, abs=1e-4)


def test_inventory_counts_cases_labels_and_annotation_progress(client, hand_built, centre_a):
    from annotations.models import Annotation, AnnotationState, Video, VideoStatus
    from tests.factories import PatientFactory

    user = make_user("centre_admin", centre_a)
    a_videos = hand_built.videos["CA"]
    # Two annotators on one video, an accepted consensus on another, a failed video, and a
    # patient without nodules: counted once each, never multiplied by the joins.
    Annotation.objects.create(video=a_videos[0], annotator=user)
    Annotation.objects.create(video=a_videos[0], annotator=make_user("annotator", centre_a))
    Annotation.objects.create(video=a_videos[1], is_consensus=True,
                              state=AnnotationState.ACCEPTED)
    Video.objects.filter(pk=a_videos[2].pk).update(status=VideoStatus.FAILED)
    PatientFactory(centre=centre_a)
    client.force_login(user)
    response = client.get(reverse("dashboards-export", args=["inventory"]),
                          {"model": hand_built.versions["irv2_cam"].pk})
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert rows == [{
        "centre": "CA", "patients": "2", "nodules": "10", "videos": "10", "ready": "9",
        "annotated": "2", "accepted": "1", "labelled": "10", "malignant": "5",
        "share_malignant": "0.5000"}]
