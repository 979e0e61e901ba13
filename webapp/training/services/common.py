"""What every training service shares: permission checks, errors, live updates."""

from __future__ import annotations

from annotations.models import User
from annotations.permissions import PlatformAction, can_platform
from annotations.realtime import group_notify
from annotations.services import PermissionDenied, ValidationError

__all__ = ["PermissionDenied", "ValidationError", "require_promote", "require_train",
           "run_group", "run_notify"]


def require_train(user: User | None) -> None:
    if user is None or not can_platform(user, PlatformAction.TRAIN):
        raise PermissionDenied("Only ML engineers and platform administrators may train models.")


def require_promote(user: User | None) -> None:
    if user is None or not can_platform(user, PlatformAction.PROMOTE):
        raise PermissionDenied("Only ML engineers and platform administrators may promote "
                               "models.")


def run_group(run_id: int) -> str:
    return f"training-run-{run_id}"


def run_notify(run_id: int, data: dict) -> None:
    """Publish a run's progress to its page (relayed by `consumers.RunConsumer`)."""
    group_notify(run_group(run_id), event_type="run.progress", data=data)
