"""Bulk import of cases from a manifest (the format `python -m ml synth` writes):

    python manage.py import_cases MANIFEST.csv [--dry-run] [--create-centres] [--inline]

Columns: centre, patient, nodule, video (a path relative to the CSV), scan_plane, outcome,
diagnosis, pathology_source, bethesda (the last five may be empty). Each row is imported in
its own transaction; a file already imported (same SHA-256 for the same nodule) is skipped,
so a second run imports nothing twice. Videos are processed by the cpu workers, or here with
--inline. Exit status 1 when any row was rejected."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from annotations import imports


def report(command: BaseCommand, results: list[imports.RowResult], *, what: str) -> None:
    counts = {k: sum(r.outcome == k for r in results)
              for k in (imports.IMPORTED, imports.SKIPPED, imports.REJECTED)}
    for r in results:
        if r.outcome != imports.IMPORTED or r.notes:
            style = command.style.ERROR if r.outcome == imports.REJECTED else command.style.WARNING
            text = f"line {r.line}: {r.outcome}: {r.reason}"
            if r.notes:
                text += f" (note: {'; '.join(r.notes)})"
            command.stdout.write(style(text))
    command.stdout.write(
        f"{what}: {counts['imported']} imported, {counts['skipped']} skipped, "
        f"{counts['rejected']} rejected"
    )
    if counts["rejected"]:
        raise CommandError(f"{counts['rejected']} row(s) rejected; see the reasons above")


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("manifest", type=Path)
        parser.add_argument("--dry-run", action="store_true",
                            help="check every row and report, without importing anything")
        parser.add_argument("--create-centres", action="store_true",
                            help="create centres the manifest names that do not exist yet")
        parser.add_argument("--inline", action="store_true",
                            help="process each video in this process instead of the workers")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, manifest: Path, dry_run: bool, create_centres: bool, inline: bool,
               no_progress: bool, **options):
        if not manifest.is_file():
            raise CommandError(f"{manifest} does not exist")
        try:
            rows = imports.read_manifest(manifest, imports.CASE_COLUMNS[:4])
        except imports.Rejected as exc:
            raise CommandError(str(exc)) from exc
        base = manifest.resolve().parent
        results = []
        for line, row in enumerate(tqdm(rows, desc="import_cases", unit="row",
                                        disable=no_progress), start=2):
            results.append(imports.import_case_row(
                row, base=base, line=line, dry_run=dry_run, create_centres=create_centres,
                inline=inline,
            ))
        report(self, results, what="dry run" if dry_run else manifest.name)
