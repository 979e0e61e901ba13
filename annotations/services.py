"""Writes. Keyword-only, typed, one transaction each; every change to case objects and
memberships leaves an audit event."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, models, transaction
from django.http import Http404

from annotations.models import AuditAction, AuditEvent, Centre, Membership, User
from annotations.permissions import Action, can


class PermissionDenied(Exception):
    """The user can see the object but may not perform this action on it."""


class ValidationError(Exception):
    """Input that breaks a business rule; the message is shown to the user as is."""


def _centre_of(obj: models.Model) -> Centre | None:
    """The centre that owns a case object, following the ownership chain."""
    chains = ("centre", "patient.centre", "nodule.patient.centre", "video.nodule.patient.centre")
    for path in chains:
        current: Any = obj
        try:
            for attr in path.split("."):
                current = getattr(current, attr)
        except AttributeError:
            continue
        if isinstance(current, Centre):
            return current
    return obj if isinstance(obj, Centre) else None


def audit_record(
    *,
    user: User | None,
    action: AuditAction | str,
    obj: models.Model | None = None,
    object_type: str = "",
    centre: Centre | None = None,
    ip_address: str | None = None,
    detail: dict | None = None,
) -> AuditEvent:
    """Append one audit event. `obj` gives the type, id, name and centre; explicit arguments
    override them (for events about things that are not rows, such as an export)."""
    if obj is not None:
        centre = centre or _centre_of(obj)
        object_type = object_type or obj._meta.label
    user = user if user is not None and user.is_authenticated else None
    return AuditEvent.objects.create(
        user=user,
        username=user.get_username() if user else "",
        centre=centre,
        centre_code=centre.code if centre else "",
        action=action,
        object_type=object_type,
        object_id=str(obj.pk) if obj is not None and obj.pk is not None else "",
        object_repr=str(obj)[:200] if obj is not None else "",
        ip_address=ip_address,
        detail=detail or {},
    )


def _require(user: User, action: Action, centre: Centre) -> None:
    if not can(user, Action.VIEW, centre):
        raise Http404("No such centre")
    if not can(user, action, centre):
        raise PermissionDenied(f"You may not {action.value.replace('_', ' ')} at {centre.code}")


@transaction.atomic
def membership_set(*, actor: User, centre: Centre, user: User, role: str) -> Membership:
    """Add `user` to `centre` with `role`, or change their role there."""
    _require(actor, Action.MANAGE_MEMBERS, centre)
    try:
        membership, created = Membership.objects.update_or_create(
            user=user, centre=centre, defaults={"role": role}
        )
    except IntegrityError as exc:  # pragma: no cover - update_or_create handles uniqueness
        raise ValidationError(str(exc)) from exc
    audit_record(
        user=actor,
        action=AuditAction.CREATE if created else AuditAction.CHANGE,
        obj=membership,
        centre=centre,
        detail={"member": user.get_username(), "role": role},
    )
    return membership


@transaction.atomic
def membership_remove(*, actor: User, membership: Membership) -> None:
    _require(actor, Action.MANAGE_MEMBERS, membership.centre)
    if membership.user_id == actor.pk and not actor.platform_role:
        # A centre admin removing themselves would lock the centre out of its own admin.
        raise ValidationError("You cannot remove your own membership; ask another administrator.")
    audit_record(
        user=actor,
        action=AuditAction.DELETE,
        obj=membership,
        centre=membership.centre,
        detail={"member": membership.user.get_username(), "role": membership.role},
    )
    membership.delete()
