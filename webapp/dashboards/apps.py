from django.apps import AppConfig


class DashboardsConfig(AppConfig):
    """Per-hospital performance of the registered models, and case review with heatmaps."""

    name = "webapp.dashboards"
    label = "dashboards"
    verbose_name = "Dashboards"
