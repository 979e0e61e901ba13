"""The ThyroCine Django project: settings, URLs, ASGI, the Celery app and the apps that join
clinical data (`annotations`) with models (`ml`)."""

from webapp.celery import app as celery_app

__all__ = ["celery_app"]
