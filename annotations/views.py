"""Centre pages and protected downloads. Objects come from selectors, so another centre's
objects answer 404."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.files.storage import default_storage
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, HttpResponseForbidden, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from annotations import labels, services
from annotations.conf import human_bytes, setting
from annotations.files import login_or_token_required, protected_file_response
from annotations.forms import CaseForm, MembershipForm, PathologyForm
from annotations.framestore import chunk_name, read_frame
from annotations.models import AuditAction, Pathology, ScanPlane, VideoStatus
from annotations.permissions import Action, can
from annotations.selectors import (
    ANNOTATION_PROGRESS,
    case_counts,
    cases_for_centre,
    centre_summaries,
    centres_visible_to,
    memberships_visible_to,
    nodule_videos,
    nodules_visible_to,
    patients_visible_to,
    users_for_membership,
    video_for_frames,
    videos_visible_to,
)


def client_ip(request) -> str | None:
    return request.META.get("REMOTE_ADDR")


@login_required
def centre_detail(request, code: str):
    centre = get_object_or_404(centre_summaries(user=request.user), code=code)
    can_manage = can(request.user, Action.MANAGE_MEMBERS, centre)
    form = None
    if can_manage:
        form = MembershipForm(users=users_for_membership(centre=centre))
    context = {
        "centre": centre,
        "memberships": memberships_visible_to(user=request.user).filter(centre=centre),
        "reviewer_ids": set(centre.reviewers.values_list("user_id", flat=True)),
        "can_manage": can_manage,
        "form": form,
    }
    return render(request, "annotations/centre_detail.html", context)


@login_required
@require_POST
def membership_add(request, code: str):
    centre = get_object_or_404(centre_summaries(user=request.user), code=code)
    if not can(request.user, Action.MANAGE_MEMBERS, centre):
        return HttpResponseForbidden("You may not change memberships at this centre.")
    form = MembershipForm(request.POST, users=users_for_membership(centre=centre))
    if form.is_valid():
        services.membership_set(
            actor=request.user,
            centre=centre,
            user=form.cleaned_data["user"],
            role=form.cleaned_data["role"],
        )
        messages.success(request, f"{form.cleaned_data['user']} added to {centre.code}.")
    else:
        messages.error(request, "Choose a user and a role.")
    return redirect("centre-detail", code=centre.code)


def _managed_membership(request, code: str, membership_id: int):
    """The membership, 404 when the user cannot see it, 403 when they may not manage it."""
    membership = get_object_or_404(
        memberships_visible_to(user=request.user).filter(centre__code=code), pk=membership_id
    )
    if not can(request.user, Action.MANAGE_MEMBERS, membership.centre):
        raise PermissionDenied("You may not change memberships at this centre.")
    return membership


@login_required
@require_POST
def membership_remove(request, code: str, membership_id: int):
    membership = _managed_membership(request, code, membership_id)
    try:
        services.membership_remove(actor=request.user, membership=membership)
        messages.success(request, f"{membership.user} removed from {code}.")
    except services.ValidationError as exc:
        messages.error(request, str(exc))
    return redirect("centre-detail", code=code)


@login_required
@require_POST
def membership_reviewer(request, code: str, membership_id: int):
    membership = _managed_membership(request, code, membership_id)
    choice = request.POST.get("reviewer")
    if choice not in ("0", "1"):  # a garbled form must not silently take the role away
        messages.error(request, "Choose whether the member reviews annotations.")
        return redirect("centre-detail", code=code)
    reviewer = choice == "1"
    services.reviewer_set(actor=request.user, membership=membership, reviewer=reviewer)
    messages.success(request, f"{membership.user} {'reviews' if reviewer else 'no longer reviews'}"
                              f" annotations at {code}.")
    return redirect("centre-detail", code=code)


@login_required
def video_original(request, video_id: int):
    """The stored (de-identified) upload, for export. Needs the export right."""
    video = get_object_or_404(videos_visible_to(user=request.user), pk=video_id)
    if not can(request.user, Action.EXPORT, video.nodule.patient.centre_id):
        return HttpResponseForbidden("Downloading original videos needs the export right.")
    services.audit_record(
        user=request.user, action=AuditAction.EXPORT, obj=video, ip_address=client_ip(request)
    )
    # The kept source's own format (Matroska or DICOM since burned-in text is blanked in
    # it), which may differ from the container the upload came in.
    suffix = Path(video.file.name).suffix or f".{video.container or 'bin'}"
    return protected_file_response(video.file.name, download_name=f"video-{video.pk}{suffix}")


# --- Cases ----------------------------------------------------------------------------------


def _audit_view(request, obj) -> None:
    services.audit_record(user=request.user, action=AuditAction.VIEW, obj=obj,
                          ip_address=client_ip(request))


@login_required
def case_list(request, code: str):
    centre = get_object_or_404(centres_visible_to(user=request.user), code=code)
    status = request.GET.get("status", "")
    label = request.GET.get("label", "")
    query = request.GET.get("q", "").strip()
    progress = request.GET.get("progress", "")
    cases = cases_for_centre(user=request.user, centre=centre, status=status, label=label,
                             query=query, progress=progress)
    page = Paginator(cases, 25).get_page(request.GET.get("page"))
    counts = case_counts(user=request.user, centre=centre)
    context = {
        "centre": centre,
        "page": page,
        "counts": counts,
        "label_counts": [(name, counts["labels"].get(value, 0))
                         for value, name in labels.LABEL_CHOICES],
        "status_counts": [(name, counts["statuses"].get(value, 0))
                          for value, name in VideoStatus.choices],
        "statuses": [("none", "No video"), *VideoStatus.choices],
        "label_choices": labels.LABEL_CHOICES,
        "progress_choices": ANNOTATION_PROGRESS,
        "selected": {"status": status, "label": label, "q": query, "progress": progress},
        "filter_query": urlencode({k: v for k, v in {"status": status, "label": label,
                                                     "q": query, "progress": progress}.items()
                                   if v}),
        "can_create": can(request.user, Action.CREATE, centre),
    }
    return render(request, "annotations/case_list.html", context)


@login_required
def case_new(request, code: str):
    """Create a patient (when new) and a nodule, then upload its videos: one form. With
    JavaScript the page posts the form, gets the nodule back as JSON and uploads the dropped
    files to it (tus) with a progress bar each; without, it lands on the nodule page."""
    centre = get_object_or_404(centres_visible_to(user=request.user), code=code)
    if not can(request.user, Action.CREATE, centre):
        return HttpResponseForbidden("You may not add cases at this centre.")
    wants_json = request.headers.get("Accept", "").startswith("application/json")
    form = CaseForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            nodule = services.case_create(
                user=request.user, centre=centre, patient_code=data["patient_code"],
                nodule_code=data["nodule_code"], sex=data["sex"] or "U",
                age_at_exam=data["age_at_exam"], location=data["location"] or "unknown",
                max_diameter_mm=data["max_diameter_mm"],
            )
        except services.ValidationError as exc:
            form.add_error(None, str(exc))
        else:
            url = reverse("nodule-page", args=[nodule.pk])
            if wants_json:
                return JsonResponse({"nodule": nodule.pk, "url": url,
                                     "scan_plane": data["scan_plane"]}, status=201)
            messages.success(request, f"Case {nodule} created: add its videos below.")
            return redirect(url)
    if request.method == "POST" and wants_json:
        return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
    return render(request, "annotations/case_new.html", {
        "centre": centre, "form": form, **_upload_context(),
    })


def _upload_context() -> dict:
    return {"max_upload_bytes": setting("MAX_UPLOAD_BYTES"),
            "max_upload_human": human_bytes(setting("MAX_UPLOAD_BYTES"))}


@login_required
def patient_detail(request, patient_id: int):
    patient = get_object_or_404(
        patients_visible_to(user=request.user).select_related("centre"), pk=patient_id
    )
    _audit_view(request, patient)
    nodules = cases_for_centre(user=request.user, centre=patient.centre).filter(patient=patient)
    return render(request, "annotations/patient_detail.html", {
        "patient": patient, "nodules": nodules,
        "can_create": can(request.user, Action.CREATE, patient.centre_id),
    })


@login_required
def nodule_detail(request, nodule_id: int):
    nodule = get_object_or_404(
        nodules_visible_to(user=request.user).select_related("patient__centre"), pk=nodule_id
    )
    _audit_view(request, nodule)
    pathology = Pathology.objects.filter(nodule=nodule).first()
    centre_id = nodule.patient.centre_id
    return render(request, "annotations/nodule_detail.html", {
        "nodule": nodule, "patient": nodule.patient, "centre": nodule.patient.centre,
        "pathology": pathology, "label": labels.label_of(pathology),
        "training_label": labels.training_label(pathology),
        "videos": nodule_videos(user=request.user, nodule=nodule),
        "can_create": can(request.user, Action.CREATE, centre_id),
        "can_change": can(request.user, Action.CHANGE, centre_id),
        "scan_planes": ScanPlane.choices,
        "realtime": settings.REALTIME_CROSS_PROCESS,
        **_upload_context(),
    })


@login_required
def nodule_videos_json(request, nodule_id: int):
    """The nodule's videos and their status, for the page to poll (or after a push)."""
    nodule = get_object_or_404(nodules_visible_to(user=request.user), pk=nodule_id)
    return JsonResponse({"videos": [
        {**services.video_status_data(v), "url": reverse("video-page", args=[v.pk]),
         "filename": v.original_filename}
        for v in nodule_videos(user=request.user, nodule=nodule)
    ]})


@login_required
def video_detail(request, video_id: int):
    video = get_object_or_404(
        videos_visible_to(user=request.user).select_related("nodule__patient__centre",
                                                            "duplicate_of"),
        pk=video_id,
    )
    _audit_view(request, video)
    centre_id = video.nodule.patient.centre_id
    first_chunk = reverse("video-chunk", kwargs={
        "video_id": video.pk, "version": video.frames_version or 0, "chunk": 0})
    return render(request, "annotations/video_detail.html", {
        "video": video, "nodule": video.nodule, "patient": video.nodule.patient,
        "can_change": can(request.user, Action.CHANGE, centre_id),
        "can_export": can(request.user, Action.EXPORT, centre_id),
        "chunk_base": first_chunk[: -len("0")],
    })


@login_required
@require_POST
def video_reprocess(request, video_id: int):
    video = get_object_or_404(videos_visible_to(user=request.user), pk=video_id)
    try:
        services.video_reprocess(video=video, user=request.user)
        messages.success(request, f"Video {video.pk} will be processed again.")
    except services.PermissionDenied as exc:
        return HttpResponseForbidden(str(exc))
    except services.ValidationError as exc:
        messages.error(request, str(exc))
    return redirect("video-page", video_id=video.pk)


@login_required
def pathology_edit(request, nodule_id: int):
    nodule = get_object_or_404(
        nodules_visible_to(user=request.user).select_related("patient__centre"), pk=nodule_id
    )
    if not can(request.user, Action.CHANGE, nodule.patient.centre_id):
        return HttpResponseForbidden("You may not change pathology at this centre.")
    current = Pathology.objects.filter(nodule=nodule).first()
    initial = {}
    if current is not None:
        initial = {f: getattr(current, f) for f in
                   ("outcome", "source", "diagnosis", "bethesda", "date")}
    form = PathologyForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            services.pathology_save(user=request.user, nodule=nodule, **form.cleaned_data)
        except services.ValidationError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Pathology of {nodule} saved.")
            return redirect("nodule-page", nodule_id=nodule.pk)
    return render(request, "annotations/pathology_form.html",
                  {"nodule": nodule, "patient": nodule.patient, "form": form})


# --- Frame store: the player's hot path -----------------------------------------------------

IMMUTABLE = 365 * 24 * 3600


def _cached(request, etag: str, produce, content_type: str) -> HttpResponse:
    """Answer 304 when the browser holds this exact version, else the bytes. URLs carry the
    processing version, so their content never changes: cache privately, for good."""
    if etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        response = HttpResponse(status=304)
    else:
        response = HttpResponse(produce(), content_type=content_type)
    response["ETag"] = etag
    response["Cache-Control"] = f"private, max-age={IMMUTABLE}, immutable"
    return response


def _frames_of(request, video_id: int, version: int, *, audit: bool = True) -> dict:
    video = video_for_frames(user=request.user, video_id=video_id)
    if video is None or video["frames_version"] != version:
        raise Http404("No such frames")
    if audit:
        services.video_frames_viewed(user=request.user, video_id=video_id,
                                     ip_address=client_ip(request))
    return video


@login_or_token_required
def video_frame(request, video_id: int, version: int, index: int):
    video = _frames_of(request, video_id, version)
    if index >= (video["frame_count"] or 0):
        raise Http404("No such frame")
    chunk, position = divmod(index, video["frames_chunk_size"])

    def read() -> bytes:
        with default_storage.open(f"{video['frames_prefix']}/{chunk_name(chunk)}", "rb") as f:
            return read_frame(f, position)

    return _cached(request, f'"{video_id}-{version}-{index}"', read, "image/jpeg")


@login_or_token_required
def video_chunk(request, video_id: int, version: int, chunk: int):
    """`chunk_size` consecutive frames in one response (format: annotations/framestore.py)."""
    video = _frames_of(request, video_id, version)
    size = video["frames_chunk_size"]
    if chunk * size >= (video["frame_count"] or 0):
        raise Http404("No such chunk")
    name = f"{video['frames_prefix']}/{chunk_name(chunk)}"

    def read() -> bytes:
        with default_storage.open(name, "rb") as f:
            return f.read()

    response = _cached(request, f'"{video_id}-{version}-c{chunk}"', read,
                       "application/octet-stream")
    response["X-Frame-Start"] = str(chunk * size)
    return response


@login_or_token_required
def video_thumbnail(request, video_id: int, version: int):
    # A preview on case lists and pages (themselves audited), not a viewing of the video.
    video = _frames_of(request, video_id, version, audit=False)

    def read() -> bytes:
        with default_storage.open(video["thumbnail"], "rb") as f:
            return f.read()

    return _cached(request, f'"{video_id}-{version}-thumb"', read, "image/jpeg")


@login_or_token_required
def video_clip(request, video_id: int, version: int):
    """The training clip (.npy, (T, H, W) uint8): data-set material, so the export right."""
    video = get_object_or_404(videos_visible_to(user=request.user).select_related(
        "nodule__patient__centre"), pk=video_id, frames_version=version, status="ready")
    if not can(request.user, Action.EXPORT, video.nodule.patient.centre_id):
        return HttpResponseForbidden("Downloading training clips needs the export right.")
    services.audit_record(user=request.user, action=AuditAction.EXPORT, obj=video,
                          ip_address=client_ip(request), detail={"what": "clip"})
    return protected_file_response(video.clip, download_name=f"video-{video.pk}-clip.npy",
                                   content_type="application/octet-stream", max_age=IMMUTABLE)
