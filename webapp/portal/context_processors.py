"""Navigation entries for the signed-in user, derived from the permission tables."""

from annotations.permissions import PlatformAction, can_platform


def navigation(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav": {}}
    return {
        "nav": {
            "audit": can_platform(user, PlatformAction.VIEW_AUDIT),
            "system": can_platform(user, PlatformAction.ADMINISTER),
            "admin_site": can_platform(user, PlatformAction.ADMINISTER),
        }
    }
