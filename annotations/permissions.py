"""The one permission layer: who may do what, at which centre.

Everything centre-scoped (pages, API endpoints, admin, file downloads, websockets) asks
`centres_where(user, action)` through the selectors, so tenancy is decided here and only here.
Objects of a centre the user cannot view are looked up in a queryset that does not contain
them, so they answer 404, never 403: their existence does not leak.

The tables below are the policy; tests are generated from them.
"""

from __future__ import annotations

from enum import StrEnum

from django.db.models import QuerySet

from annotations.models import Centre, CentreRole, PlatformRole, User


class Action(StrEnum):
    VIEW = "view"  # see case objects (patients, nodules, videos, pathology, annotations)
    CREATE = "create"  # add patients, nodules, videos, annotations
    CHANGE = "change"  # edit them
    DELETE = "delete"  # remove them
    EXPORT = "export"  # download originals, export data sets
    MANAGE_MEMBERS = "manage_members"  # add, change and remove a centre's memberships


class PlatformAction(StrEnum):
    TRAIN = "train"  # launch and cancel training runs, build dataset snapshots
    PROMOTE = "promote"  # promote and roll back models in the registry
    VIEW_ALL_CENTRES = "view_all_centres"  # cross-centre dashboards
    VIEW_AUDIT = "view_audit"  # the audit log
    ADMINISTER = "administer"  # centres, users, the admin site, system status


CENTRE_ROLE_ACTIONS: dict[str, frozenset[Action]] = {
    CentreRole.ANNOTATOR: frozenset({Action.VIEW, Action.CREATE, Action.CHANGE}),
    CentreRole.READER: frozenset({Action.VIEW}),
    CentreRole.CENTRE_ADMIN: frozenset(Action),
}

# Platform roles act on every centre. ML engineers read de-identified cases of all centres to
# build data sets, but do not edit clinical data.
PLATFORM_ROLE_CENTRE_ACTIONS: dict[str, frozenset[Action]] = {
    PlatformRole.ML_ENGINEER: frozenset({Action.VIEW, Action.EXPORT}),
    PlatformRole.PLATFORM_ADMIN: frozenset(Action),
}

PLATFORM_ROLE_ACTIONS: dict[str, frozenset[PlatformAction]] = {
    PlatformRole.ML_ENGINEER: frozenset(
        {PlatformAction.TRAIN, PlatformAction.PROMOTE, PlatformAction.VIEW_ALL_CENTRES}
    ),
    PlatformRole.PLATFORM_ADMIN: frozenset(PlatformAction),
}


def _roles_allowing(action: Action) -> list[str]:
    return [role for role, actions in CENTRE_ROLE_ACTIONS.items() if action in actions]


def centres_where(user: User, action: Action = Action.VIEW) -> QuerySet[Centre]:
    """Centres at which `user` may perform `action`: the root of every scoped query."""
    if not user.is_authenticated or not user.is_active:
        return Centre.objects.none()
    if action in PLATFORM_ROLE_CENTRE_ACTIONS.get(user.platform_role, frozenset()):
        return Centre.objects.all()
    return Centre.objects.filter(
        memberships__user=user, memberships__role__in=_roles_allowing(action)
    ).distinct()


def can(user: User, action: Action, centre: Centre | int) -> bool:
    centre_id = centre.pk if isinstance(centre, Centre) else centre
    return centres_where(user, action).filter(pk=centre_id).exists()


def can_platform(user: User, action: PlatformAction) -> bool:
    if not user.is_authenticated or not user.is_active:
        return False
    return action in PLATFORM_ROLE_ACTIONS.get(user.platform_role, frozenset())


def centre_roles(user: User) -> dict[int, str]:
    """The user's role per centre id (for navigation and display)."""
    if not user.is_authenticated:
        return {}
    return dict(user.memberships.values_list("centre_id", "role"))
