"""The whole platform in real Chromium, as issue 7 asks: a centre annotator uploads a video,
a real Celery worker processes it, the annotator records its pathology, annotates it and
submits the annotation; an ML engineer freezes a snapshot, launches a tiny training run,
watches its progress arrive live and promotes the model; the worker scores every ready video;
the case review page shows the uploaded case's prediction and plays its heatmap over the
video; the dashboard shows the annotator's centre's ROC curve; a platform administrator sets
up a reader study and a reader completes its unaided and aided reads.

The training needs more cases than one upload: a cohort of ready cases is seeded beside it
(tests/webapp/training/conftest.py), with clips of the size the tiny run reads."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from tests.annotations.conftest import write_video
from tests.conftest import make_user, wait_for
from tests.e2e.test_annotation_workspace import drag_box, open_workspace, signed_in, wait_saved
from tests.e2e.test_dashboards import diff, show_frame, snap
from tests.e2e.test_reader_study import read_case
from tests.e2e.test_reader_study_pages import shown as floatformat
from tests.webapp.training.conftest import (  # noqa: F401 - fixtures used below
    TINY,
    cohort,
    training_env,
    workers,
)

pytestmark = pytest.mark.e2e
FRAMES, W, H = 12, 160, 120


def sweep(path):
    """A 12-frame 160 x 120 video whose picture changes in every frame."""
    frames = np.zeros((FRAMES, H, W, 3), np.uint8)
    rng = np.random.default_rng(7)
    for t in range(FRAMES):
        frames[t, 10:110, 10:150] = rng.integers(30, 220, (100, 140, 1), dtype=np.uint8)
        frames[t, 40:70, 20 + 8 * t:40 + 8 * t] = 240  # a bright patch that moves
    return write_video(path, frames)


def with_player_frames(video, media):
    """A frame store for a seeded case (the cohort has training clips only), so that the
    reader's player can show it."""
    from annotations.framestore import ChunkWriter

    prefix = f"frames/{video.nodule.patient.centre.code}/{video.pk}/player"
    folder = media / prefix
    folder.mkdir(parents=True)
    writer = ChunkWriter(folder, 8)
    for i in range(video.frame_count):
        image = np.full((H, W, 3), 40 + 10 * i, np.uint8)
        writer.add(cv2.imencode(".jpg", image)[1].tobytes())
    writer.flush()
    video.frames_prefix, video.frames_chunk_size = prefix, 8
    video.width, video.height, video.fps = W, H, 25.0
    video.save()


def test_upload_annotate_train_promote_review_and_read(live_server, chromium_browser, workers,  # noqa: F811
                                                       cohort, training_env, centre_a,  # noqa: F811
                                                       centre_b, tmp_path):
    from annotations.models import Annotation, Video, VideoStatus
    from webapp.review.models import Read
    from webapp.training.models import ModelVersion, Prediction

    annotator = make_user("annotator", centre_a)
    engineer = make_user("ml_engineer", centre_a)
    admin = make_user("platform_admin", centre_a)
    reader = make_user("reader", centre_a)
    senior = make_user("reader", centre_b)
    # The cohort's clips are 32 x 32; the upload's clip is standardised to the same size.
    workers.env["CLIP_SIZE"] = "32,32"
    workers.start()

    # --- The annotator uploads a video; the worker processes it -------------------------------
    ctx_a, a = signed_in(chromium_browser, live_server, annotator)
    a.goto(f"{live_server.url}/centres/{centre_a.code}/cases/new/")
    a.get_by_label("Patient pseudonym").fill("JOURNEY-1")
    a.get_by_label("Nodule").fill("N1")
    a.get_by_test_id("file-input").set_input_files([str(sweep(tmp_path / "sweep.mp4"))])
    a.get_by_role("button", name="Create case and upload").click()
    a.locator('li.upload[data-filename="sweep.mp4"][data-status="ready"]').wait_for(
        timeout=120000)
    video = Video.objects.get(nodule__patient__code="JOURNEY-1")
    assert video.status == VideoStatus.READY and video.frame_count == FRAMES

    # Its pathology: surgical histology, papillary carcinoma.
    a.get_by_test_id("nodule-link").click()
    a.get_by_role("link", name="Record pathology").click()
    a.get_by_label("Outcome").select_option("malignant")
    a.get_by_label("Source").select_option("surgery")
    a.get_by_label("Diagnosis (WHO 2022)").select_option("papillary_carcinoma")
    a.get_by_role("button", name="Save pathology").click()
    assert a.get_by_test_id("training-label").inner_text() == "malignant"

    # Annotated and submitted for review.
    a.get_by_role("link", name=f"Video {video.pk}").click()
    a.get_by_test_id("annotate").click()
    open_workspace(a, a.url)
    drag_box(a, (40, 30, 120, 90))
    wait_saved(a)
    a.get_by_role("button", name="Submit for review").click()
    a.get_by_test_id("state").filter(has_text="Submitted").wait_for()
    assert Annotation.objects.get(video=video, annotator=annotator).state == "submitted"

    # --- The ML engineer trains a tiny model, watching it live, and promotes it ---------------
    ctx_e, e = signed_in(chromium_browser, live_server, engineer)
    e.goto(f"{live_server.url}/training/snapshots/")
    form = e.get_by_test_id("snapshot-form")
    form.get_by_label("Name").fill("Journey snapshot")
    form.locator("#id_centres_0").check()  # CA: development
    form.locator("#id_external_centres_1").check()  # CB: external test
    form.get_by_role("button", name="Freeze snapshot").click()
    e.get_by_role("heading", name=re.compile("Journey snapshot")).wait_for()
    e.get_by_role("link", name="Train on this snapshot").click()
    form = e.get_by_test_id("run-form")
    for name, value in TINY.items():
        form.locator(f"#id_hp_{name}").fill(str(value))
    form.get_by_role("button", name="Queue the run").click()
    e.wait_for_url(re.compile(r"/training/runs/\d+/$"))
    # Progress arrives without a reload (polling: the test server has no websockets).
    e.wait_for_function(
        "() => /step [1-9]\\d*\\//.test("
        "document.querySelector('[data-testid=step-label]').textContent)", timeout=300000)
    e.locator("#loss-chart .scatterlayer .trace").first.wait_for(timeout=60000)
    e.wait_for_function(
        "() => document.querySelector('[data-testid=run-status]').textContent === 'Succeeded'",
        timeout=300000)
    e.get_by_test_id("model-link").get_by_role("link", name="model v1").click()
    e.once("dialog", lambda dialog: dialog.accept())  # "Put model v1 in production?"
    e.get_by_role("button", name="Promote to production").click()
    e.get_by_test_id("model-state").filter(has_text="Production").wait_for()
    version = ModelVersion.objects.get(number=1)

    # The worker scores every ready video with the production model.
    ready = Video.objects.filter(status=VideoStatus.READY).count()
    wait_for(lambda: Prediction.objects.filter(model_version=version).count() == ready,
             timeout=300)
    prediction = Prediction.objects.get(video=video, model_version=version)
    assert prediction.heatmaps

    # --- Case review: the annotator's case, its prediction and the heatmap over the video ----
    a.goto(f"{live_server.url}/dashboards/cases/?split=all&centre={centre_a.code}")
    a.locator(f'tr[data-prediction="{prediction.pk}"]').get_by_role("link",
                                                                    name="Review").click()
    assert a.get_by_test_id("probability").inner_text() == f"{prediction.probability:.3f}"
    a.wait_for_function("document.querySelector('#player').dataset.heatmaps === 'loaded'")
    # The overlay played is the calcification attention map: a two-epoch model's Grad-CAM
    # can be zero everywhere (no channel argues for malignancy); its attention, a sigmoid, is not.
    a.uncheck("#show-marks")
    a.uncheck("#show-gradcam")
    a.check("#show-attention")
    show_frame(a, 2)
    snap(a, "on2")
    a.uncheck("#show-attention")
    snap(a, "off2")
    assert diff(a, "on2", "off2") > 1000  # the heatmap is drawn over the video
    a.check("#show-attention")
    snap(a, "on2again")
    assert diff(a, "on2", "on2again") == 0
    show_frame(a, 9)
    snap(a, "on9")
    assert diff(a, "on2", "on9") > 1000  # another frame, another picture
    a.uncheck("#show-attention")
    snap(a, "off9")
    assert diff(a, "on9", "off9") > 1000
    assert diff(a, "on9", "off9", "on2", "off2") > 1000  # and the overlay itself moved
    # Playing moves through the frames with the overlay on.
    a.check("#show-attention")
    show_frame(a, 0)
    a.get_by_title("Play / pause (Space)").click()
    a.wait_for_function("+document.querySelector('#player canvas').dataset.frame >= 3")

    # --- The dashboard: the annotator's centre's ROC curve, and no other centre's -------------
    a.goto(f"{live_server.url}/dashboards/?split=test")
    a.wait_for_selector("#roc-chart svg.main-svg")
    legend = a.eval_on_selector_all("#roc-chart .legendtext",
                                    "els => els.map(e => e.textContent)")
    assert any(t.startswith(f"{centre_a.code} (n=") for t in legend), legend
    assert not any(t.startswith(centre_b.code) for t in legend), legend
    assert a.locator("#roc-chart .scatterlayer .trace").count() >= 2

    # --- A reader study with the uploaded case and a benign one -------------------------------
    benign = Video.objects.filter(nodule__patient__centre=centre_a,
                                  nodule__pathology__outcome="benign").order_by("pk").first()
    with_player_frames(benign, training_env["media"])
    ctx_p, p = signed_in(chromium_browser, live_server, admin)
    p.goto(f"{live_server.url}/review/studies/new/")
    form = p.get_by_test_id("study-form")
    form.get_by_label("Name").fill("Journey study")
    form.get_by_label("Design").select_option("sequential")
    for v in (video, benign):
        form.get_by_label(re.compile(rf"Video {v.pk} \u00b7")).check()
    form.locator("#id_juniors").get_by_label(reader.username, exact=True).check()
    form.locator("#id_seniors").get_by_label(senior.username, exact=True).check()
    form.get_by_role("button", name="Open the study").click()
    p.get_by_role("heading", name=re.compile("Journey study")).wait_for()

    ctx_r, r = signed_in(chromium_browser, live_server, reader)
    r.goto(f"{live_server.url}/review/studies/")
    r.get_by_role("link", name="Journey study").click()
    r.get_by_test_id("start-reading").click()
    probability = {v.pk: Prediction.objects.get(video=v, model_version=version).probability
                   for v in (video, benign)}
    for case_number in (1, 2):
        assert r.get_by_test_id("read-heading").inner_text().startswith(f"Case {case_number} of 2")
        assert r.get_by_test_id("modality").inner_text() == "Unaided read"
        r.wait_for_function("document.querySelector('#player canvas').dataset.frame === '0'")
        assert r.get_by_test_id("model-panel").count() == 0
        read_case(r, "60", "Malignant", "TR4")
        assert r.get_by_test_id("modality").inner_text() == "Aided read"
        read = Read.objects.get(reader__user=reader, modality="aided", started_at__isnull=False,
                                submitted_at__isnull=True)
        shown = r.get_by_test_id("model-probability").inner_text()
        assert shown == floatformat(probability[read.case.video_id], 2)
        read_case(r, "70", "Malignant", "TR4")
    assert r.get_by_test_id("reading-done").is_visible()
    reads = Read.objects.filter(reader__user=reader).order_by("order")
    assert [x.modality for x in reads] == ["unaided", "aided"] * 2
    assert all(x.submitted_at and x.seconds is not None for x in reads)
    for context in (ctx_a, ctx_e, ctx_p, ctx_r):
        context.close()
