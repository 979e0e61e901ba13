"""Write a frozen snapshot as the dataset directory the ml package reads:

    python manage.py export_dataset --snapshot 3 --out /data/snapshot-3
    python -m ml train --data /data/snapshot-3 --arch irv2_cam --config small --out runs/a
"""

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from webapp.training.models import DatasetSnapshot
from webapp.training.services import SnapshotError, snapshot_export


class Command(BaseCommand):
    help = "Export a dataset snapshot (manifest.csv, clips) for `python -m ml train`."

    def add_arguments(self, parser):
        parser.add_argument("--snapshot", type=int, required=True, help="snapshot id")
        parser.add_argument("--out", type=Path, required=True,
                            help="a new (or empty) folder")

    def handle(self, *args, snapshot: int, out: Path, **options):
        found = DatasetSnapshot.objects.filter(pk=snapshot).first()
        if found is None:
            raise CommandError(f"No snapshot {snapshot}.")
        try:
            info = snapshot_export(snapshot=found, out=out)
        except SnapshotError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(json.dumps({"out": str(out), **info}, indent=2))
