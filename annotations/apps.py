from django.apps import AppConfig


class AnnotationsConfig(AppConfig):
    """Clinical data: centres and memberships, patients, nodules, videos, pathology,
    annotations, ingestion, and the audit log of access to them."""

    name = "annotations"
    verbose_name = "Clinical data"
