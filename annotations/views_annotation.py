"""Pages of the annotation workspace: the editor of one annotation, the review queue and the
agreement page of a centre. Objects come from selectors, so another centre's answer 404."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from annotations import annotation_format as fmt
from annotations import services, tirads, workspace
from annotations.agreement_report import centre_agreement
from annotations.models import AuditAction
from annotations.selectors import (
    annotations_visible_to,
    centres_visible_to,
    review_centres,
    review_queue,
    videos_visible_to,
)


@login_required
def video_annotate(request, video_id: int):
    """The user's own annotation of the video (started on first visit); people who do not
    annotate here see the consensus, when there is one."""
    video = get_object_or_404(videos_visible_to(user=request.user).select_related(
        "nodule__patient__centre"), pk=video_id)
    try:
        annotation, _ = workspace.annotation_start(video=video, user=request.user)
    except services.PermissionDenied:
        visible = annotations_visible_to(user=request.user).filter(video=video)
        annotation = visible.filter(is_consensus=True).first() or visible.first()
        if annotation is None:
            return HttpResponseForbidden("You do not annotate at this centre, and the video "
                                         "has no annotation to show yet.")
    except services.ValidationError as exc:
        return HttpResponseForbidden(str(exc))
    return redirect("annotation-workspace", annotation_id=annotation.pk)


def _choices(choices) -> list[list[str]]:
    return [[value, label] for value, label in choices]


@login_required
def annotation_workspace(request, annotation_id: int):
    annotation = get_object_or_404(
        annotations_visible_to(user=request.user).select_related("video__nodule__patient"),
        pk=annotation_id)
    video = annotation.video
    services.audit_record(user=request.user, action=AuditAction.VIEW, obj=annotation,
                          ip_address=request.META.get("REMOTE_ADDR"))
    reviewer = workspace.is_reviewer(request.user, video)
    siblings = annotations_visible_to(user=request.user).filter(video=video).exclude(
        pk=annotation.pk)
    chunk0 = reverse("video-chunk", kwargs={"video_id": video.pk,
                                            "version": video.frames_version or 0, "chunk": 0})
    config = {
        "annotationId": annotation.pk,
        "apiUrl": reverse("api-annotation-detail", args=[annotation.pk]),
        "transitionUrl": reverse("api-annotation-transition", args=[annotation.pk]),
        "chunkBase": chunk0[:-1],
        "frameCount": video.frame_count or 0,
        "fps": video.fps or 25,
        "chunkSize": video.frames_chunk_size or 32,
        "user": request.user.get_username(),
        "markTypes": [[k, v] for k, v in fmt.MARK_TYPE_LABELS.items()],
        "tirads": {
            "composition": _choices(tirads.Composition.choices),
            "echogenicity": _choices(tirads.Echogenicity.choices),
            "shape": _choices(tirads.Shape.choices),
            "margin": _choices(tirads.Margin.choices),
            "echogenic_foci": _choices(tirads.EchogenicFoci.choices),
        },
    }
    return render(request, "annotations/annotation_workspace.html", {
        "annotation": annotation, "video": video, "nodule": video.nodule,
        "patient": video.nodule.patient, "config": config, "reviewer": reviewer,
        "siblings": siblings,
        "consensus_exists": siblings.filter(is_consensus=True).exists()
        or annotation.is_consensus,
    })


@login_required
def review_queue_page(request, code: str):
    centre = get_object_or_404(centres_visible_to(user=request.user), code=code)
    if not review_centres(user=request.user).filter(pk=centre.pk).exists():
        return HttpResponseForbidden("Only reviewers of this centre see its review queue.")
    return render(request, "annotations/review_queue.html", {
        "centre": centre, "rows": review_queue(user=request.user, centre=centre)})


@login_required
def agreement_page(request, code: str):
    centre = get_object_or_404(centres_visible_to(user=request.user), code=code)
    if not review_centres(user=request.user).filter(pk=centre.pk).exists():
        return HttpResponseForbidden("Only reviewers of this centre see its agreement.")
    return render(request, "annotations/agreement.html", {
        "centre": centre, "report": centre_agreement(user=request.user, centre=centre)})
