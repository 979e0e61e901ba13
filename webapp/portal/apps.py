from django.apps import AppConfig


class PortalConfig(AppConfig):
    """Home pages per role, the audit log page, and the workers' system status."""

    name = "webapp.portal"
    label = "portal"
    verbose_name = "Portal"
