"""Bulk import services behind `manage.py import_cases` and `import_pathology`: one manifest
row at a time, each in its own transaction, each ending imported, skipped or rejected with a
reason. Writes go through the same services as uploads (annotations.services)."""

from __future__ import annotations

import csv
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from django.db import transaction

from annotations import services
from annotations.conf import incoming_dir
from annotations.models import (
    Centre,
    Nodule,
    PathologySource,
    Patient,
    ScanPlane,
    Video,
    VideoStatus,
)
from ml import video as mlvideo
from ml.video import VideoError

CASE_COLUMNS = ("centre", "patient", "nodule", "video", "scan_plane", "outcome", "diagnosis",
                "pathology_source", "bethesda")
PATHOLOGY_COLUMNS = ("centre", "patient", "nodule", "outcome", "diagnosis", "pathology_source",
                     "bethesda")

IMPORTED, SKIPPED, REJECTED = "imported", "skipped", "rejected"


class Rejected(Exception):
    """A row that cannot be imported; the message says why."""


@dataclass
class RowResult:
    line: int
    outcome: str
    reason: str = ""
    video_id: int | None = None
    notes: list[str] = field(default_factory=list)


def read_manifest(path: Path, required: tuple[str, ...]) -> list[dict]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise Rejected(f"{path.name} lacks the column(s) {', '.join(missing)}; expected "
                           f"{', '.join(required)}")
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]


def _centre(code: str, *, create: bool, dry_run: bool) -> Centre | None:
    if not code:
        raise Rejected("the centre column is empty")
    centre = Centre.objects.filter(code=code).first()
    if centre is None:
        if not create:
            raise Rejected(f"unknown centre {code!r} (use --create-centres to create it)")
        if dry_run:
            return None
        centre = Centre.objects.create(code=code, name=code)
    return centre


def _pathology_fields(row: dict, notes: list[str]) -> dict | None:
    outcome = row.get("outcome", "")
    source = row.get("pathology_source", "")
    diagnosis = row.get("diagnosis", "")
    bethesda = row.get("bethesda", "")
    if not (outcome or source or diagnosis or bethesda):
        return None
    if not source:
        source = PathologySource.FNA if bethesda and not diagnosis else PathologySource.SURGERY
    if source == PathologySource.SURGERY and bethesda:
        # Histology supersedes the pre-operative cytology, and one pathology row records one
        # source: keep the histology, say what was left out.
        notes.append(f"Bethesda {bethesda} not recorded: the source is surgical histology")
        bethesda = ""
    fields = {"outcome": outcome, "source": source, "diagnosis": diagnosis,
              "bethesda": bethesda}
    try:
        services.pathology_validate(**fields)
    except services.ValidationError as exc:
        raise Rejected(f"pathology: {exc}") from exc
    return fields


def import_case_row(
    row: dict, *, base: Path, line: int, dry_run: bool = False, create_centres: bool = False,
    inline: bool = False,
) -> RowResult:
    """Import one manifest row. Identified bytes are copied into the private incoming
    folder only; the de-identified copy is stored by the processing that follows."""
    notes: list[str] = []
    try:
        for column in ("patient", "nodule", "video"):
            if not row.get(column):
                raise Rejected(f"the {column} column is empty")
        scan_plane = row.get("scan_plane") or ScanPlane.SWEEP
        if scan_plane not in ScanPlane.values:
            raise Rejected(f"unknown scan plane {scan_plane!r}; use "
                           f"{', '.join(ScanPlane.values)}")
        pathology = _pathology_fields(row, notes)
        source = (base / row["video"]).resolve()
        if not source.is_file():
            raise Rejected(f"the video file {row['video']} does not exist")
        size = source.stat().st_size
        if refusal := services.size_refusal(size):
            raise Rejected(refusal)
        sha = services._sha256(source)
        centre = _centre(row.get("centre", ""), create=create_centres, dry_run=dry_run)
        existing = Video.objects.filter(
            sha256=sha, nodule__code=row["nodule"], nodule__patient__code=row["patient"],
            nodule__patient__centre=centre,
        ).first() if centre is not None else None
        if existing is not None:
            if existing.status == VideoStatus.FAILED:
                raise Rejected(f"imported before as video {existing.pk}, which failed: "
                               f"{existing.failure_reason}")
            return RowResult(line, SKIPPED, f"already imported as video {existing.pk}",
                             existing.pk, notes)
        if dry_run:
            try:
                mlvideo.sniff_format(source)
            except VideoError as exc:
                raise Rejected(exc.reason) from exc
            return RowResult(line, IMPORTED, "would be imported (dry run)", None, notes)
        incoming = incoming_dir() / f"{uuid.uuid4()}.upload"
        try:
            with transaction.atomic():
                patient, _ = Patient.objects.get_or_create(centre=centre, code=row["patient"])
                nodule, _ = Nodule.objects.get_or_create(patient=patient, code=row["nodule"])
                if pathology is not None:
                    services.pathology_save(user=None, nodule=nodule, **pathology)
                shutil.copyfile(source, incoming)
                video = services.video_register(
                    nodule=nodule, incoming=incoming, filename=source.name,
                    scan_plane=scan_plane, sha256=sha, enqueue=not inline,
                )
        except BaseException:
            incoming.unlink(missing_ok=True)
            raise
    except Rejected as exc:
        return RowResult(line, REJECTED, str(exc), None, notes)
    if inline:
        services.video_process(video=video)
        video.refresh_from_db()
        if video.status == VideoStatus.FAILED:
            return RowResult(line, REJECTED, video.failure_reason, video.pk, notes)
        return RowResult(line, IMPORTED, f"video {video.pk}, {video.frame_count} frames",
                         video.pk, notes)
    return RowResult(line, IMPORTED, f"video {video.pk}, queued for processing", video.pk, notes)


def import_pathology_row(row: dict, *, line: int, dry_run: bool = False) -> RowResult:
    notes: list[str] = []
    try:
        nodule = Nodule.objects.filter(
            patient__centre__code=row.get("centre", ""), patient__code=row.get("patient", ""),
            code=row.get("nodule", ""),
        ).first()
        if nodule is None:
            raise Rejected(f"no nodule {row.get('centre')}/{row.get('patient')}/"
                           f"{row.get('nodule')}; import its case first")
        fields = _pathology_fields(row, notes)
        if fields is None:
            raise Rejected("the outcome, diagnosis, source and Bethesda columns are all empty")
        date = row.get("date") or None
        if date:
            import datetime

            try:
                date = datetime.date.fromisoformat(date)
            except ValueError as exc:
                raise Rejected(f"the date {date!r} is not YYYY-MM-DD") from exc
        if dry_run:
            services.pathology_validate(**fields, date=date)
            return RowResult(line, IMPORTED, "would be recorded (dry run)", notes=notes)
        with transaction.atomic():
            services.pathology_save(user=None, nodule=nodule, date=date, **fields)
        return RowResult(line, IMPORTED, f"pathology of {nodule}", notes=notes)
    except (Rejected, services.ValidationError) as exc:
        return RowResult(line, REJECTED, str(exc), notes=notes)
