"""Navigation entries for the signed-in user, derived from the permission tables."""

from django.conf import settings

from annotations.permissions import PlatformAction, can_platform


def navigation(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav": {}}
    return {
        # Websockets only help when workers can reach them (a Redis channel layer).
        "realtime_websockets": settings.REALTIME_CROSS_PROCESS,
        "nav": {
            "audit": can_platform(user, PlatformAction.VIEW_AUDIT),
            "system": can_platform(user, PlatformAction.ADMINISTER),
            "admin_site": can_platform(user, PlatformAction.ADMINISTER),
            "training": can_platform(user, PlatformAction.TRAIN)
            or can_platform(user, PlatformAction.PROMOTE),
            "review": can_platform(user, PlatformAction.ADMINISTER)
            or user.reader_studies.exists(),
            # Every signed-in user: the dashboards show only the centres one may view.
            "dashboards": True,
        }
    }
