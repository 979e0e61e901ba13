"""Browser: a platform administrator sets up a reader study through its page (only ready
cases with a benign or malignant reference standard are offered; the page says why a choice
cannot open a study), sees its readers and cases, and reads the results of a finished study:
the Obuchowski-Rockette table with Hillis degrees of freedom, the groups and the readers, with
the numbers ml.mrmc and ml.stats give for the same reads."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest

from annotations.models import VideoStatus
from ml.mrmc import or_analysis
from ml.stats import roc_auc_ci
from tests.e2e.test_reader_study import signed_in
from tests.factories import NoduleFactory, PatientFactory, VideoFactory
from tests.webapp.review.conftest import labelled_video, world  # noqa: F401 - fixture
from tests.webapp.review.test_results import READS, TRUTH, finished  # noqa: F401 - fixture

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def shown(x: float, digits: int) -> str:
    """What Django's floatformat prints (half up on the decimal representation)."""
    return str(Decimal(repr(x)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def test_admin_sets_up_a_study_on_its_page(live_server, chromium_browser, world, centre_a):  # noqa: F811
    not_ready = labelled_video(centre_a, malignant=True, status=VideoStatus.PROCESSING)
    no_pathology = VideoFactory(nodule=NoduleFactory(patient=PatientFactory(centre=centre_a)))
    malignant = [v.pk for v in world["videos"][:2]]
    benign = [v.pk for v in world["videos"][2:]]

    context, page = signed_in(chromium_browser, live_server, world["admin"])
    page.goto(f"{live_server.url}/review/studies/")
    page.get_by_role("link", name="Set up a reader study").click()
    form = page.get_by_test_id("study-form")
    offered = form.locator("#id_videos label").all_inner_texts()
    # Every ready, labelled case with its label; the unprocessed and unlabelled ones are not.
    assert sorted(int(re.search(r"Video (\d+)", t).group(1)) for t in offered) == sorted(
        malignant + benign)
    assert all(t.strip().endswith("malignant") for t in offered
               if int(re.search(r"Video (\d+)", t).group(1)) in malignant)
    assert not any(f"Video {v.pk} " in t for t in offered for v in (not_ready, no_pathology))

    form.get_by_label("Name").fill("Pilot study")
    form.get_by_label("Design").select_option("sequential")
    for pk in malignant:
        form.get_by_label(re.compile(rf"Video {pk} \u00b7")).check()
    form.locator("#id_juniors").get_by_label("junior", exact=True).check()
    form.locator("#id_seniors").get_by_label("senior", exact=True).check()
    form.get_by_role("button", name="Open the study").click()
    error = page.locator(".errorlist")
    assert error.count() == 1  # said once, above the form
    assert "Choose at least 1 malignant and 1 benign case(s) (chosen: 2 malignant, 0 benign)" \
        in error.inner_text()

    form = page.get_by_test_id("study-form")  # the same choices, kept; one benign case more
    assert form.get_by_label(re.compile(rf"Video {malignant[0]} \u00b7")).is_checked()
    form.get_by_label(re.compile(rf"Video {benign[0]} \u00b7")).check()
    form.get_by_role("button", name="Open the study").click()
    page.get_by_role("heading", name=re.compile("Pilot study")).wait_for()
    assert page.get_by_test_id("study-status").inner_text() == "Open"
    main = page.locator("main").inner_text()
    assert "3 cases." in main and "Aided reads show" in main
    rows = page.locator("table tbody tr").all_inner_texts()
    assert [r.split("\t") for r in rows] == [["junior", "Junior", "0 / 6"],
                                             ["senior", "Senior", "0 / 6"]]
    page.get_by_role("link", name="Results").click()
    assert "results appear once every reader has read every case" in page.get_by_test_id(
        "results-pending").inner_text()

    # A reader sees the study in their list and may start it; the setup page is not theirs.
    reader_context, reader_page = signed_in(chromium_browser, live_server, world["junior"])
    reader_page.goto(f"{live_server.url}/review/studies/")
    row = reader_page.get_by_test_id("study-table").locator("tr", has_text="Pilot study")
    assert "0 of 6 reads" in row.inner_text()
    assert reader_page.get_by_role("link", name="Set up a reader study").count() == 0
    assert reader_page.goto(f"{live_server.url}/review/studies/new/").status == 404
    reader_context.close()
    context.close()


def test_admin_reads_the_results_of_a_finished_study(live_server, chromium_browser, world,  # noqa: F811
                                                     finished):  # noqa: F811
    truth = np.array(TRUTH)
    rows = [{"reader": n, "case": c, "modality": m, "truth": TRUTH[c], "rating": v}
            for n, (_, unaided, aided) in READS.items()
            for m, ratings in (("unaided", unaided), ("aided", aided))
            for c, v in enumerate(ratings)]

    context, page = signed_in(chromium_browser, live_server, world["admin"])
    page.goto(f"{live_server.url}/review/studies/{finished.pk}/")
    assert page.get_by_test_id("study-status").inner_text() == "Finished"
    readers = [r.split("\t") for r in page.locator("table tbody tr").all_inner_texts()]
    assert readers == [[name, experience.capitalize(), "12 / 12"]
                       for name, (experience, _, _) in sorted(READS.items())]
    page.get_by_role("link", name="Results").click()
    page.get_by_role("heading", name="Results").wait_for()
    assert "6 cases (3 malignant)" in page.locator("main").inner_text()

    # The OR-Hillis table: aided minus unaided AUROC for all readers and for the juniors; one
    # senior is too few for a random-reader analysis and the row says so.
    table = page.get_by_test_id("mrmc-table")
    groups = {"all": ("All readers (3)", list(READS)), "junior": ("Junior (2)", ["ann", "bob"])}
    for key, (label, names) in groups.items():
        expected = or_analysis([r for r in rows if r["reader"] in names]).differences[0]
        cells = table.locator(f'tr[data-group="{key}"] td').all_inner_texts()
        assert cells[0] == label
        assert cells[3] == shown(expected.estimate, 4)
        assert cells[4] == f"{shown(expected.ci_low, 4)} to {shown(expected.ci_high, 4)}"
        assert cells[5] == shown(expected.df, 2)
        assert cells[6] == shown(expected.p_value, 4)
    senior = table.locator('tr[data-group="senior"]')
    assert senior.locator("td").first.inner_text() == "Senior (1)"
    assert senior.get_by_test_id("mrmc-difference").count() == 0
    assert senior.locator("td.muted").inner_text() != ""

    # Each reader's AUROC, unaided and aided, as ml.stats computes it.
    for name, (experience, unaided, aided) in READS.items():
        row = page.get_by_test_id("reader-table").locator(f'tr[data-reader="{name}"]')
        assert f"({experience})" in row.inner_text()
        auroc_unaided = row.locator("td").nth(2).inner_text()
        assert auroc_unaided.startswith(shown(roc_auc_ci(truth, unaided).auc, 3))
        aided_row = row.locator("xpath=following-sibling::tr[1]")
        assert aided_row.locator("td").nth(1).inner_text().startswith(
            shown(roc_auc_ci(truth, aided).auc, 3))
    context.close()
