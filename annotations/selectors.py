"""Reads. Every centre-scoped query starts from one of these, which start from
`permissions.centres_where`: the one place where tenancy is decided."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from annotations.models import (
    AuditEvent,
    Centre,
    Membership,
    Nodule,
    Pathology,
    Patient,
    User,
    Video,
    VideoStatus,
)
from annotations.permissions import Action, PlatformAction, can_platform, centres_where


def centres_visible_to(*, user: User, action: Action = Action.VIEW) -> QuerySet[Centre]:
    return centres_where(user, action)


def patients_visible_to(*, user: User, action: Action = Action.VIEW) -> QuerySet[Patient]:
    return Patient.objects.filter(centre__in=centres_where(user, action))


def nodules_visible_to(*, user: User, action: Action = Action.VIEW) -> QuerySet[Nodule]:
    return Nodule.objects.filter(patient__centre__in=centres_where(user, action))


def videos_visible_to(*, user: User, action: Action = Action.VIEW) -> QuerySet[Video]:
    return Video.objects.filter(nodule__patient__centre__in=centres_where(user, action))


def pathology_visible_to(*, user: User, action: Action = Action.VIEW) -> QuerySet[Pathology]:
    return Pathology.objects.filter(nodule__patient__centre__in=centres_where(user, action))


def memberships_visible_to(
    *, user: User, action: Action = Action.VIEW
) -> QuerySet[Membership]:
    return Membership.objects.filter(centre__in=centres_where(user, action)).select_related(
        "user", "centre"
    )


def audit_events_visible_to(*, user: User) -> QuerySet[AuditEvent]:
    if not can_platform(user, PlatformAction.VIEW_AUDIT):
        return AuditEvent.objects.none()
    return AuditEvent.objects.all()


def audit_events_filtered(
    *, user: User, centre_id: int | None = None, user_id: int | None = None,
    action: str = "",
) -> QuerySet[AuditEvent]:
    events = audit_events_visible_to(user=user)
    if centre_id:
        events = events.filter(centre_id=centre_id)
    if user_id:
        events = events.filter(user_id=user_id)
    if action:
        events = events.filter(action=action)
    return events


def centre_summaries(*, user: User) -> QuerySet[Centre]:
    """Visible centres with case counts, in one query."""
    return centres_where(user, Action.VIEW).annotate(
        n_patients=Count("patients", distinct=True),
        n_nodules=Count("patients__nodules", distinct=True),
        n_videos=Count("patients__nodules__videos", distinct=True),
        n_ready=Count(
            "patients__nodules__videos",
            filter=Q(patients__nodules__videos__status=VideoStatus.READY),
            distinct=True,
        ),
    )


def users_for_membership(*, centre: Centre) -> QuerySet[User]:
    """Active users who could be added to `centre` (not yet members)."""
    return User.objects.filter(is_active=True).exclude(memberships__centre=centre)
