"""Cancel resumable uploads unfinished for more than --days (default 7) and delete their
partial, still identified, bytes from the incoming folder. Run it daily (cron)."""

from __future__ import annotations

import datetime

from django.core.management.base import BaseCommand
from django.utils import timezone

from annotations import services


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("--days", type=float, default=7.0)

    def handle(self, days: float, **options):
        cutoff = timezone.now() - datetime.timedelta(days=days)
        count = services.uploads_expire(older_than=cutoff)
        self.stdout.write(f"{count} unfinished upload(s) cancelled and deleted")
