"""The admin site belongs to platform administrators; it signs in through the normal login
(with its failed-login throttling) rather than a second login form.

Imported while apps load (AdminConfig.default_site), so model-dependent imports are deferred.
"""

from django.contrib.admin import AdminSite
from django.contrib.admin.apps import AdminConfig


class PlatformAdminSite(AdminSite):
    site_header = "ThyroCine administration"
    site_title = "ThyroCine admin"

    def has_permission(self, request):
        from annotations.permissions import PlatformAction, can_platform

        return can_platform(request.user, PlatformAction.ADMINISTER)

    def login(self, request, extra_context=None):
        from django.conf import settings
        from django.contrib.auth.views import redirect_to_login

        return redirect_to_login(request.GET.get("next", "/admin/"), settings.LOGIN_URL)


class PlatformAdminConfig(AdminConfig):
    default_site = "webapp.admin_site.PlatformAdminSite"
