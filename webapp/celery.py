"""The Celery app shared by the web process and the workers.

Workers listen on `cpu` (video processing, exports) and/or `gpu` (training, inference,
heatmaps); routing lives in settings.CELERY_TASK_ROUTES. Tasks are thin: they take ids, fetch
rows, call a service and keep long-job state in the database.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("thyrocine")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

