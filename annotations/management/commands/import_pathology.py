"""Record pathology results for nodules already imported:

    python manage.py import_pathology PATHOLOGY.csv [--dry-run]

Columns: centre, patient, nodule, outcome, diagnosis, pathology_source, bethesda and an
optional date (YYYY-MM-DD). A row replaces the nodule's pathology; each row in its own
transaction; exit status 1 when any row was rejected."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from annotations import imports
from annotations.management.commands.import_cases import report


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("manifest", type=Path)
        parser.add_argument("--dry-run", action="store_true")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, manifest: Path, dry_run: bool, no_progress: bool, **options):
        if not manifest.is_file():
            raise CommandError(f"{manifest} does not exist")
        try:
            rows = imports.read_manifest(manifest, imports.PATHOLOGY_COLUMNS[:4])
        except imports.Rejected as exc:
            raise CommandError(str(exc)) from exc
        results = [
            imports.import_pathology_row(row, line=line, dry_run=dry_run)
            for line, row in enumerate(tqdm(rows, desc="import_pathology", unit="row",
                                            disable=no_progress), start=2)
        ]
        report(self, results, what="dry run" if dry_run else manifest.name)
