"""Results of a small hand-built study against ml.stats and ml.mrmc called directly, and the
export's format."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse

from ml.mrmc import or_analysis
from ml.stats import delong_roc_test, roc_auc_ci
from tests.factories import UserFactory
from tests.webapp.review.conftest import labelled_video, predict
from webapp.review import services
from webapp.review.models import Design, StudyStatus
from webapp.review.results import study_results

TRUTH = [1, 1, 1, 0, 0, 0]
MODEL = [0.8, 0.7, 0.4, 0.5, 0.2, 0.1]
# reader -> (experience, unaided likelihoods, aided likelihoods), per case in TRUTH order
READS = {
    "ann": ("junior", [60, 40, 55, 50, 30, 70], [75, 60, 55, 45, 20, 40]),
    "bob": ("junior", [80, 45, 30, 60, 20, 10], [85, 65, 40, 40, 20, 10]),
    "cyd": ("senior", [90, 70, 65, 40, 20, 30], [90, 75, 60, 35, 15, 20]),
}


@pytest.fixture
def finished(world, centre_a):
    videos = [labelled_video(centre_a, malignant=bool(t)) for t in TRUTH]
    for video, p in zip(videos, MODEL, strict=True):
        predict(video, world["version"], p)
    users = {name: UserFactory(username=name) for name in READS}
    study = services.study_create(
        user=world["admin"], name="Hand-built", design=Design.SEQUENTIAL, videos=videos,
        readers=[(users[n], exp) for n, (exp, _, _) in READS.items()])
    index = {v.pk: i for i, v in enumerate(videos)}
    for reader in study.readers.select_related("user"):
        _, unaided, aided = READS[reader.user.username]
        while (read := services.read_start_next(reader=reader)) is not None:
            i = index[read.case.video_id]
            value = (unaided if read.modality == "unaided" else aided)[i]
            services.read_submit(read=read, likelihood=value,
                                 call="malignant" if value >= 50 else "benign",
                                 tirads_level=3)
    study.refresh_from_db()
    return study


def _accuracy(ratings):
    return np.mean((np.array(ratings) >= 50) == np.array(TRUTH))


def test_results_match_ml_stats_and_mrmc(finished):
    assert finished.status == StudyStatus.FINISHED
    results = study_results(study=finished)
    truth = np.array(TRUTH)
    by_reader = {r["reader"]: r for r in results["readers"]}
    for name, (_, unaided, aided) in READS.items():
        r = by_reader[name]
        for modality, ratings in (("unaided", unaided), ("aided", aided)):
            assert r[modality]["auroc"] == pytest.approx(roc_auc_ci(truth, ratings).auc)
            calls = np.array(ratings) >= 50
            assert r[modality]["sensitivity"] == pytest.approx(calls[truth == 1].mean())
            assert r[modality]["specificity"] == pytest.approx((~calls[truth == 0]).mean())
            assert r[modality]["accuracy"] == pytest.approx(_accuracy(ratings))
            test = delong_roc_test(truth, MODEL, ratings)
            assert r[modality]["vs_model"]["difference"] == pytest.approx(test.difference)
            assert r[modality]["vs_model"]["p_value"] == pytest.approx(test.p_value)
        change = _accuracy(aided) - _accuracy(unaided)
        assert r["accuracy_change"]["points"] == pytest.approx(100 * change)
        assert r["accuracy_change"]["percent"] == pytest.approx(
            100 * change / _accuracy(unaided))

    rows = [{"reader": n, "case": c, "modality": m, "truth": TRUTH[c], "rating": v}
            for n, (_, unaided, aided) in READS.items()
            for m, ratings in (("unaided", unaided), ("aided", aided))
            for c, v in enumerate(ratings)]
    expected = or_analysis(rows)
    groups = {g["key"]: g for g in results["groups"]}
    mrmc = groups["all"]["mrmc"]
    diff = expected.differences[0]
    assert (diff.modality_a, diff.modality_b) == ("aided", "unaided")
    assert mrmc["difference"] == pytest.approx(diff.estimate)
    assert mrmc["ci"] == pytest.approx((diff.ci_low, diff.ci_high))
    assert mrmc["df"] == pytest.approx(diff.df)
    assert mrmc["p_value"] == pytest.approx(diff.p_value)
    juniors = groups["junior"]
    assert juniors["n_readers"] == 2
    assert juniors["aided"]["auroc"] == pytest.approx(np.mean(
        [roc_auc_ci(truth, READS[n][2]).auc for n in ("ann", "bob")]))
    assert juniors["mrmc"]["difference"] == pytest.approx(
        or_analysis([r for r in rows if r["reader"] != "cyd"]).differences[0].estimate)
    assert "error" in groups["senior"]["mrmc"]  # one senior: no random-reader analysis


def test_results_page_shows_the_analysis(finished, world):
    client = Client()
    client.force_login(world["admin"])
    page = client.get(reverse("review-results", args=[finished.pk])).content.decode()
    mrmc = study_results(study=finished)["groups"][-1]["mrmc"]
    assert f"{mrmc['difference']:.4f}" in page and 'data-reader="cyd"' in page


def test_export_has_one_row_per_reader_case_and_modality(finished, world):
    client = Client()
    client.force_login(world["admin"])
    response = client.get(reverse("review-export", args=[finished.pk]))
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert list(rows[0]) == ["reader", "case", "modality", "truth", "rating"]
    assert len(rows) == 3 * 6 * 2
    assert len({(r["reader"], r["case"], r["modality"]) for r in rows}) == len(rows)
    # Read back by ml.mrmc, the export reproduces the analysis.
    assert or_analysis(rows).differences[0].estimate == pytest.approx(
        study_results(study=finished)["groups"][-1]["mrmc"]["difference"])
    imrmc = list(csv.DictReader(io.StringIO(client.get(
        reverse("review-export", args=[finished.pk]) + "?layout=imrmc").content.decode())))
    assert list(imrmc[0]) == ["readerID", "caseID", "modalityID", "score"]
    assert len(imrmc) == 6 + 3 * 6 * 2  # one truth row per case


def test_results_wait_for_the_study_to_finish(world):
    study = services.study_create(user=world["admin"], name="Open", design=Design.SEQUENTIAL,
                                  videos=world["videos"], readers=world["readers"])
    client = Client()
    client.force_login(world["admin"])
    page = client.get(reverse("review-results", args=[study.pk])).content.decode()
    assert "still open" in page


def test_a_two_case_pilot_reports_what_it_cannot_test(world, centre_a):
    videos = world["videos"][1:3]  # one malignant, one benign
    study = services.study_create(user=world["admin"], name="Pilot", design=Design.SEQUENTIAL,
                                  videos=videos, readers=world["readers"])
    for reader in study.readers.all():
        while (read := services.read_start_next(reader=reader)) is not None:
            services.read_submit(read=read, likelihood=60 if read.case.truth else 40,
                                 call="malignant" if read.case.truth else "benign",
                                 tirads_level=3)
    results = study_results(study=study)
    assert results["readers"][0]["aided"]["auroc"] == 1.0
    assert "at least 2 positive and 2 negative" in results["readers"][0]["aided"]["vs_model"][
        "error"]
    assert "at least 2 diseased" in results["groups"][-1]["mrmc"]["error"]
    client = Client()
    client.force_login(world["admin"])
    assert "at least 2 diseased" in client.get(
        reverse("review-results", args=[study.pk])).content.decode()


def test_mrmc_without_variability_says_so_instead_of_p_zero(world):
    study = services.study_create(user=world["admin"], name="Perfect", design=Design.SEQUENTIAL,
                                  videos=world["videos"], readers=world["readers"])
    for reader in study.readers.all():
        while (read := services.read_start_next(reader=reader)) is not None:
            services.read_submit(read=read, likelihood=90 if read.case.truth else 10,
                                 call="malignant" if read.case.truth else "benign",
                                 tirads_level=3)
    mrmc = study_results(study=study)["groups"][-1]["mrmc"]
    assert "No variability" in mrmc["error"]
