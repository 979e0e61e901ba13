"""Reader-study pages. Setup, results and the export are for platform administrators; the
reading pages for the study's readers. Anyone else gets 404 (existence does not leak).
Reading pages carry no pathology, no patient or nodule codes: cases are numbered."""

from __future__ import annotations

import csv

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from annotations.framestore import chunk_name
from annotations.labels import BENIGN, MALIGNANT, label_expression
from annotations.models import User, Video, VideoStatus
from ml.mrmc import to_mrmc_rows
from webapp.dashboards.heatmaps import heatmap_bytes
from webapp.review import selectors, services
from webapp.review.forms import ReadForm, StudyForm
from webapp.review.models import Design, Experience, Modality, Read
from webapp.review.results import CSV_COLUMNS, study_results, study_rows


def _require_manager(request) -> None:
    if not selectors.can_manage_studies(request.user):
        raise Http404("Page not found")


@login_required
def study_list(request):
    studies = selectors.studies_visible_to(user=request.user).select_related("model_version")
    reading = {r.study_id: r for r in request.user.reader_studies.all()}
    rows = []
    for study in studies:
        reader = reading.get(study.pk)
        rows.append({"study": study, "reader": reader,
                     "progress": selectors.reader_progress(reader=reader) if reader else None})
    return render(request, "review/study_list.html", {
        "rows": rows, "can_manage": selectors.can_manage_studies(request.user)})


def _candidate_videos():
    return (Video.objects.filter(status=VideoStatus.READY)
            .annotate(label=label_expression(prefix="nodule__pathology__"))
            .filter(label__in=[BENIGN, MALIGNANT])
            .select_related("nodule__patient__centre").order_by("pk"))


@login_required
def study_new(request):
    _require_manager(request)
    videos = list(_candidate_videos())
    users = list(User.objects.filter(is_active=True).order_by("username"))
    form = StudyForm(
        request.POST or None,
        video_choices=[(str(v.pk), f"Video {v.pk} · {v.nodule.patient.centre.code} "
                                   f"{v.nodule.patient.code}/{v.nodule.code} · {v.label}")
                       for v in videos],
        user_choices=[(str(u.pk), u.username) for u in users])
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        by_id = {str(u.pk): u for u in users}
        readers = ([(by_id[i], Experience.JUNIOR) for i in data["juniors"]]
                   + [(by_id[i], Experience.SENIOR) for i in data["seniors"]])
        chosen = [v for v in videos if str(v.pk) in set(data["videos"])]
        try:
            study = services.study_create(
                user=request.user, name=data["name"], description=data["description"],
                design=data["design"], washout_days=data["washout_days"] or 0,
                seed=data["seed"], videos=chosen, readers=readers)
        except services.ValidationError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Reader study “{study.name}” is open to its readers.")
            return redirect("review-study", study_id=study.pk)
    return render(request, "review/study_new.html", {"form": form})


@login_required
def study_detail(request, study_id: int):
    study = get_object_or_404(selectors.studies_visible_to(user=request.user), pk=study_id)
    reader = selectors.study_reader_for(user=request.user, study=study)
    manager = selectors.can_manage_studies(request.user)
    context = {"study": study, "reader": reader, "can_manage": manager,
               "progress": selectors.reader_progress(reader=reader) if reader else None}
    if manager:
        readers = study.readers.select_related("user")
        context["reader_rows"] = [{"reader": r, "progress": selectors.reader_progress(reader=r)}
                                  for r in readers]
        context["n_cases"] = study.cases.count()
    return render(request, "review/study_detail.html", context)


def _reader_or_404(request, study_id: int):
    study = get_object_or_404(selectors.studies_visible_to(user=request.user), pk=study_id)
    reader = selectors.study_reader_for(user=request.user, study=study)
    if reader is None:
        raise Http404("Page not found")
    return study, reader


@login_required
def read_next(request, study_id: int):
    """The reader's current case: started on first display, so a reload resumes it."""
    study, reader = _reader_or_404(request, study_id)
    try:
        read = services.read_start_next(reader=reader)
    except services.WashoutNotOver as exc:
        return render(request, "review/washout.html",
                      {"study": study, "message": str(exc), "opens_at": exc.opens_at},
                      status=409)
    if read is None:
        return render(request, "review/read_done.html", {"study": study})
    return _render_read(request, study, reader, read, ReadForm())


def _render_read(request, study, reader, read: Read, form: ReadForm, status: int = 200):
    video = read.case.video
    progress = selectors.reader_progress(reader=reader)
    n_cases = study.cases.count()
    session_reads = reader.reads.filter(modality=read.modality) if (
        study.design == Design.WASHOUT) else reader.reads.all()
    chunk0 = reverse("review-case-chunk", kwargs={"study_id": study.pk, "read_id": read.pk,
                                                  "chunk": 0})
    player = {"frameCount": video.frame_count or 0, "fps": video.fps or 25,
              "chunkSize": video.frames_chunk_size or 32, "chunkBase": chunk0[:-1]}
    prediction = (selectors.prediction_for_case(study=study, case=read.case)
                  if read.modality == Modality.AIDED else None)
    if prediction is not None and prediction.heatmaps and len(prediction.region) == 4:
        player["heatmapUrl"] = reverse("review-case-heatmaps",
                                       kwargs={"study_id": study.pk, "read_id": read.pk})
        player["region"] = prediction.region
    return render(request, "review/read.html", {
        "study": study, "read": read, "form": form, "progress": progress,
        "case_number": read.order // 2 + 1 if study.design == Design.SEQUENTIAL
        else session_reads.filter(order__lte=read.order).count(),
        "n_cases": n_cases, "aided": read.modality == Modality.AIDED,
        "has_frames": video.status == VideoStatus.READY and bool(video.frames_prefix),
        "player": player, "heatmap": "heatmapUrl" in player}, status=status)


@login_required
@require_POST
def read_submit(request, study_id: int, read_id: int):
    study, reader = _reader_or_404(request, study_id)
    read = get_object_or_404(Read.objects.select_related("case__video"), pk=read_id,
                             reader=reader)
    if read.submitted_at is not None:  # a resubmitted form (back button, double click)
        messages.info(request, "That case was already read; here is your next one.")
        return redirect("review-read", study_id=study.pk)
    form = ReadForm(request.POST)
    if form.is_valid():
        try:
            services.read_submit(
                read=read, likelihood=form.cleaned_data["likelihood"],
                call=form.cleaned_data["call"], tirads_level=form.cleaned_data["tirads_level"],
                tirads_features=form.features())
        except services.ValidationError as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("review-read", study_id=study.pk)
    return _render_read(request, study, reader, read, form, status=400)


@login_required
def case_chunk(request, study_id: int, read_id: int, chunk: int):
    """Frames of the case being read, for the study's reader (who need not belong to the
    video's centre); the same frame store as annotations' video_chunk."""
    study, reader = _reader_or_404(request, study_id)
    read = get_object_or_404(Read.objects.select_related("case__video"), pk=read_id,
                             reader=reader)
    video = read.case.video
    size = video.frames_chunk_size or 0
    if not video.frames_prefix or not size or chunk * size >= (video.frame_count or 0):
        raise Http404("No such chunk")
    with default_storage.open(f"{video.frames_prefix}/{chunk_name(chunk)}", "rb") as f:
        response = HttpResponse(f.read(), content_type="application/octet-stream")
    response["X-Frame-Start"] = str(chunk * size)
    response["Cache-Control"] = "private, no-store"
    return response


@login_required
def case_heatmaps(request, study_id: int, read_id: int):
    """The model's Grad-CAM of the case, for its reader's aided read only (the unaided read
    must stay unaided); the browser binary of webapp/dashboards/heatmaps.py."""
    study, reader = _reader_or_404(request, study_id)
    read = get_object_or_404(Read.objects.select_related("case"), pk=read_id, reader=reader,
                             modality=Modality.AIDED, started_at__isnull=False)
    prediction = selectors.prediction_for_case(study=study, case=read.case)
    if prediction is None or not prediction.heatmaps:
        raise Http404("No heatmaps")
    response = HttpResponse(heatmap_bytes(prediction.heatmaps),
                            content_type="application/octet-stream")
    response["Content-Encoding"] = "gzip"
    response["Cache-Control"] = "private, max-age=86400"
    return response


@login_required
def study_results_page(request, study_id: int):
    _require_manager(request)
    study = get_object_or_404(selectors.studies_visible_to(user=request.user), pk=study_id)
    results = study_results(study=study) if study.status == "finished" else None
    return render(request, "review/results.html", {"study": study, "results": results})


@login_required
def study_export(request, study_id: int):
    """The reads in the iMRMC/MRMCaov long format (reader, case, modality, truth, rating);
    `?layout=imrmc` gives iMRMC's own layout (readerID, caseID, modalityID, score)."""
    _require_manager(request)
    study = get_object_or_404(selectors.studies_visible_to(user=request.user), pk=study_id)
    rows = study_rows(study=study)
    layout = request.GET.get("layout", "")
    response = HttpResponse(content_type="text/csv")
    if layout == "imrmc":
        rows = to_mrmc_rows(rows, layout="imrmc")
        columns = ["readerID", "caseID", "modalityID", "score"]
    else:
        columns = CSV_COLUMNS
    response["Content-Disposition"] = (
        f'attachment; filename="reader-study-{study.pk}{"-imrmc" if layout else ""}.csv"')
    writer = csv.DictWriter(response, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return response

