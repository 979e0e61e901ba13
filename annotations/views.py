"""Centre pages and protected downloads. Objects come from selectors, so another centre's
objects answer 404."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from annotations import services
from annotations.files import protected_file_response
from annotations.forms import MembershipForm
from annotations.models import AuditAction
from annotations.permissions import Action, can
from annotations.selectors import (
    centre_summaries,
    memberships_visible_to,
    users_for_membership,
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


@login_required
@require_POST
def membership_remove(request, code: str, membership_id: int):
    membership = get_object_or_404(
        memberships_visible_to(user=request.user).filter(centre__code=code), pk=membership_id
    )
    if not can(request.user, Action.MANAGE_MEMBERS, membership.centre):
        return HttpResponseForbidden("You may not change memberships at this centre.")
    try:
        services.membership_remove(actor=request.user, membership=membership)
        messages.success(request, f"{membership.user} removed from {code}.")
    except services.ValidationError as exc:
        messages.error(request, str(exc))
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
    return protected_file_response(
        video.file.name, download_name=f"video-{video.pk}.{video.container or 'bin'}"
    )
