"""Writes. Keyword-only, typed, one transaction each; every change to case objects and
memberships leaves an audit event."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.core.cache import cache
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import DatabaseError, IntegrityError, models, transaction
from django.http import Http404
from django.utils import timezone

from annotations import processing
from annotations.conf import human_bytes, incoming_dir, setting
from annotations.deid import deidentify
from annotations.models import (
    AuditAction,
    AuditEvent,
    Bethesda,
    Centre,
    Diagnosis,
    Membership,
    Nodule,
    NoduleLocation,
    Pathology,
    PathologyOutcome,
    PathologySource,
    Patient,
    ScanPlane,
    Sex,
    UploadSession,
    UploadStatus,
    User,
    Video,
    VideoStatus,
    video_upload_path,
)
from annotations.permissions import Action, can
from annotations.realtime import group_notify
from ml import video as mlvideo
from ml.video import VideoError

logger = logging.getLogger(__name__)


class PermissionDenied(Exception):
    """The user can see the object but may not perform this action on it."""


class ValidationError(Exception):
    """Input that breaks a business rule; the message is shown to the user as is."""


def _centre_of(obj: models.Model) -> Centre | None:
    """The centre that owns a case object, following the ownership chain."""
    chains = ("centre", "patient.centre", "nodule.patient.centre", "video.nodule.patient.centre")
    for path in chains:
        current: Any = obj
        try:
            for attr in path.split("."):
                current = getattr(current, attr)
        except AttributeError:
            continue
        if isinstance(current, Centre):
            return current
    return obj if isinstance(obj, Centre) else None


def audit_record(
    *,
    user: User | None,
    action: AuditAction | str,
    obj: models.Model | None = None,
    object_type: str = "",
    centre: Centre | None = None,
    ip_address: str | None = None,
    detail: dict | None = None,
) -> AuditEvent:
    """Append one audit event. `obj` gives the type, id, name and centre; explicit arguments
    override them (for events about things that are not rows, such as an export)."""
    if obj is not None:
        centre = centre or _centre_of(obj)
        object_type = object_type or obj._meta.label
    user = user if user is not None and user.is_authenticated else None
    return AuditEvent.objects.create(
        user=user,
        username=user.get_username() if user else "",
        centre=centre,
        centre_code=centre.code if centre else "",
        action=action,
        object_type=object_type,
        object_id=str(obj.pk) if obj is not None and obj.pk is not None else "",
        object_repr=str(obj)[:200] if obj is not None else "",
        ip_address=ip_address,
        detail=detail or {},
    )


def frames_view_cache_key(user_id: int, video_id: int) -> str:
    return f"audit:frames:{user_id}:{video_id}"


def video_frames_viewed(*, user: User, video_id: int, ip_address: str | None = None) -> None:
    """Audit that `user` looks at a video's frames (the player, the workspace, an API client),
    once per user and video within `FRAME_AUDIT_WINDOW_SECONDS`: one row per viewing rather
    than one per frame or chunk request, which would bury every other event. The cache key
    is set first (`add` is atomic), so concurrent requests record one row; a failed write
    clears it so the next request tries again."""
    key = frames_view_cache_key(user.pk, video_id)
    if not cache.add(key, True, timeout=setting("FRAME_AUDIT_WINDOW_SECONDS")):
        return
    try:
        video = Video.objects.select_related("nodule__patient__centre").get(pk=video_id)
        audit_record(user=user, action=AuditAction.VIEW, obj=video, ip_address=ip_address,
                     detail={"what": "frames"})
    except BaseException:
        cache.delete(key)
        raise


def _require(user: User | None, action: Action, centre: Centre) -> None:
    """Raise unless `user` may perform `action` at `centre`. `None` is the trusted command
    line (manage.py import_cases, reprocess), never a web request."""
    if user is None:
        return
    if not can(user, Action.VIEW, centre):
        raise Http404("No such centre")
    if not can(user, action, centre):
        raise PermissionDenied(f"You may not {action.value.replace('_', ' ')} at {centre.code}")


@transaction.atomic
def membership_set(*, actor: User, centre: Centre, user: User, role: str) -> Membership:
    """Add `user` to `centre` with `role`, or change their role there."""
    _require(actor, Action.MANAGE_MEMBERS, centre)
    try:
        membership, created = Membership.objects.update_or_create(
            user=user, centre=centre, defaults={"role": role}
        )
    except IntegrityError as exc:  # pragma: no cover - update_or_create handles uniqueness
        raise ValidationError(str(exc)) from exc
    audit_record(
        user=actor,
        action=AuditAction.CREATE if created else AuditAction.CHANGE,
        obj=membership,
        centre=centre,
        detail={"member": user.get_username(), "role": role},
    )
    return membership


@transaction.atomic
def reviewer_set(*, actor: User, membership: Membership, reviewer: bool) -> None:
    """Let a member review annotations at their centre besides its administrators (or stop)."""
    from annotations.models import ReviewerAssignment

    _require(actor, Action.MANAGE_MEMBERS, membership.centre)
    if reviewer:
        _, changed = ReviewerAssignment.objects.get_or_create(centre=membership.centre,
                                                              user=membership.user)
    else:
        changed = ReviewerAssignment.objects.filter(centre=membership.centre,
                                                    user=membership.user).delete()[0] > 0
    if changed:
        audit_record(user=actor, action=AuditAction.CHANGE, obj=membership,
                     centre=membership.centre,
                     detail={"member": membership.user.get_username(), "reviewer": reviewer})


@transaction.atomic
def membership_remove(*, actor: User, membership: Membership) -> None:
    _require(actor, Action.MANAGE_MEMBERS, membership.centre)
    if membership.user_id == actor.pk and not actor.platform_role:
        # A centre admin removing themselves would lock the centre out of its own admin.
        raise ValidationError("You cannot remove your own membership; ask another administrator.")
    audit_record(
        user=actor,
        action=AuditAction.DELETE,
        obj=membership,
        centre=membership.centre,
        detail={"member": membership.user.get_username(), "role": membership.role},
    )
    membership.delete()


# --- Cases: patients, nodules, pathology ----------------------------------------------------


class TransientError(Exception):
    """A failure that may pass (storage or database briefly unavailable): retry later."""


def _clean(obj: models.Model, exclude: list[str] | None = None) -> None:
    from django.core.exceptions import ValidationError as DjangoValidationError

    try:
        obj.full_clean(exclude=exclude, validate_unique=False, validate_constraints=False)
    except DjangoValidationError as exc:
        messages = [f"{field}: {'; '.join(errs)}" if field != "__all__" else "; ".join(errs)
                    for field, errs in exc.message_dict.items()]
        raise ValidationError(" ".join(messages)) from exc


@transaction.atomic
def patient_create(
    *, user: User, centre: Centre, code: str, sex: str = "U", age_at_exam: int | None = None
) -> Patient:
    _require(user, Action.CREATE, centre)
    code = code.strip()
    if not code:
        raise ValidationError("A patient needs a pseudonymous code.")
    if Patient.objects.filter(centre=centre, code=code).exists():
        raise ValidationError(f"Patient {code} already exists at {centre.code}.")
    patient = Patient(centre=centre, code=code, sex=sex or Sex.UNKNOWN, age_at_exam=age_at_exam)
    _clean(patient, exclude=["centre"])
    patient.save()
    audit_record(user=user, action=AuditAction.CREATE, obj=patient)
    return patient


@transaction.atomic
def nodule_create(
    *, user: User, patient: Patient, code: str, location: str = NoduleLocation.UNKNOWN,
    max_diameter_mm=None,
) -> Nodule:
    _require(user, Action.CREATE, patient.centre)
    code = code.strip()
    if not code:
        raise ValidationError("A nodule needs a code, e.g. N1.")
    if Nodule.objects.filter(patient=patient, code=code).exists():
        raise ValidationError(f"Nodule {code} already exists for patient {patient.code}.")
    nodule = Nodule(patient=patient, code=code, location=location or NoduleLocation.UNKNOWN,
                    max_diameter_mm=max_diameter_mm)
    _clean(nodule, exclude=["patient"])
    nodule.save()
    audit_record(user=user, action=AuditAction.CREATE, obj=nodule)
    return nodule


@transaction.atomic
def case_create(
    *, user: User, centre: Centre, patient_code: str, nodule_code: str, sex: str = "U",
    age_at_exam: int | None = None, location: str = NoduleLocation.UNKNOWN,
    max_diameter_mm=None,
) -> Nodule:
    """A nodule for upload, creating its patient when the code is new at the centre."""
    _require(user, Action.CREATE, centre)
    patient = Patient.objects.filter(centre=centre, code=patient_code.strip()).first()
    if patient is None:
        patient = patient_create(user=user, centre=centre, code=patient_code, sex=sex,
                                 age_at_exam=age_at_exam)
    return nodule_create(user=user, patient=patient, code=nodule_code, location=location,
                         max_diameter_mm=max_diameter_mm)


def pathology_validate(
    *, outcome: str, source: str, diagnosis: str = "", bethesda: str = "", date=None
) -> None:
    """The rules of a consistent reference standard; each message is shown as is."""
    import datetime

    from annotations import labels

    errors = []
    if outcome not in PathologyOutcome.values:
        errors.append(f"Unknown outcome {outcome!r}; use benign, malignant or indeterminate.")
    if source not in PathologySource.values:
        errors.append(f"Unknown source {source!r}; use surgery or fna.")
    if diagnosis and diagnosis not in Diagnosis.values:
        errors.append(f"Unknown diagnosis {diagnosis!r} (WHO 2022 list).")
    if bethesda and bethesda not in Bethesda.values:
        errors.append(f"Unknown Bethesda category {bethesda!r}; use I to VI.")
    if errors:
        raise ValidationError(" ".join(errors))
    if bethesda and source != PathologySource.FNA:
        errors.append("A Bethesda category is recorded only when the source is FNA cytology.")
    if source == PathologySource.FNA and not bethesda:
        errors.append("FNA cytology needs its Bethesda category (I to VI).")
    if source == PathologySource.FNA and bethesda:
        expected = {Bethesda.II: PathologyOutcome.BENIGN,
                    Bethesda.VI: PathologyOutcome.MALIGNANT}.get(
            bethesda, PathologyOutcome.INDETERMINATE)
        if outcome != expected:
            errors.append(f"Bethesda {bethesda} cytology means the outcome is {expected}.")
    if diagnosis:
        dx = labels.diagnosis_label(diagnosis) if diagnosis not in labels.LOW_RISK_DIAGNOSES \
            else None
        label = Diagnosis(diagnosis).label
        if dx == labels.MALIGNANT and outcome != PathologyOutcome.MALIGNANT:
            errors.append(f"{label} is malignant: the outcome must be malignant.")
        if dx == labels.BENIGN and outcome != PathologyOutcome.BENIGN:
            errors.append(f"{label} is benign: the outcome must be benign.")
        if diagnosis in labels.LOW_RISK_DIAGNOSES and outcome == PathologyOutcome.MALIGNANT:
            errors.append(f"{label} is a low-risk neoplasm, not malignant.")
    if source == PathologySource.SURGERY and not diagnosis:
        errors.append("Surgical histology needs a diagnosis from the WHO 2022 list.")
    if date and date > datetime.date.today():
        errors.append("The pathology date is in the future.")
    if errors:
        raise ValidationError(" ".join(errors))


@transaction.atomic
def pathology_save(
    *, user: User | None, nodule: Nodule, outcome: str, source: str, diagnosis: str = "",
    bethesda: str = "", date=None,
) -> Pathology:
    """Create or replace the reference standard of `nodule` (`user` None: the trusted
    command line, e.g. import_cases)."""
    _require(user, Action.CHANGE, nodule.patient.centre)
    pathology_validate(outcome=outcome, source=source, diagnosis=diagnosis, bethesda=bethesda,
                       date=date)
    pathology, created = Pathology.objects.update_or_create(
        nodule=nodule,
        defaults={"outcome": outcome, "source": source, "diagnosis": diagnosis,
                  "bethesda": bethesda, "date": date,
                  "recorded_by": user if user is not None and user.is_authenticated else None},
    )
    audit_record(user=user, action=AuditAction.CREATE if created else AuditAction.CHANGE,
                 obj=pathology, detail={"outcome": outcome, "source": source,
                                        "diagnosis": diagnosis, "bethesda": bethesda})
    return pathology


# --- Videos: registration, intake (de-identification), processing ---------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def size_refusal(size: int) -> str | None:
    limit = setting("MAX_UPLOAD_BYTES")
    if size > limit:
        return (f"The file is {human_bytes(size)}; the largest accepted upload is "
                f"{human_bytes(limit)}.")
    return None


def video_register(
    *, nodule: Nodule, incoming: Path, filename: str, scan_plane: str = ScanPlane.SWEEP,
    user: User | None = None, sha256: str = "", enqueue: bool = True,
) -> Video:
    """Record an upload that lies in the incoming folder and queue its processing.

    `incoming` must be inside the incoming folder: it holds identified bytes until the
    worker has de-identified them (annotations.deid) and stored the copy.
    """
    if user is not None:
        _require(user, Action.CREATE, nodule.patient.centre)
    folder = incoming_dir().resolve()
    if incoming.resolve().parent != folder:
        raise ValueError(f"{incoming} is not in the incoming folder {folder}")
    if scan_plane not in ScanPlane.values:
        raise ValidationError(f"Unknown scan plane {scan_plane!r}.")
    with transaction.atomic():
        original = _original_of(sha256) if sha256 else None
        video = Video.objects.create(
            nodule=nodule, scan_plane=scan_plane, original_filename=Path(filename).name[:255],
            sha256=sha256, duplicate_of=original,
            size_bytes=incoming.stat().st_size, incoming_name=incoming.name,
            uploaded_by=user if user is not None and user.is_authenticated else None,
        )
        audit_record(user=user, action=AuditAction.CREATE, obj=video,
                     detail={"filename": video.original_filename, "bytes": video.size_bytes})
        if original is not None:
            _mark_duplicate(video, original, incoming, sha256)
        elif enqueue:
            _enqueue_processing(video)
    return video


def _original_of(sha256: str) -> Video | None:
    return (Video.objects.filter(sha256=sha256, duplicate_of__isnull=True)
            .select_related("nodule__patient").order_by("pk").first())


def _enqueue_processing(video: Video) -> None:
    from annotations.tasks import video_process as video_process_task

    video_process_task.delay_on_commit(video.pk)


@transaction.atomic
def video_reprocess(*, video: Video, user: User | None = None, enqueue: bool = True) -> Video:
    """Run processing again (after a fix), from the stored de-identified upload, or from the
    quarantined upload when it never got that far."""
    if user is not None:
        _require(user, Action.CHANGE, video.nodule.patient.centre)
    if video.duplicate_of_id:
        raise ValidationError("A duplicate is not processed: open the original video instead.")
    if not video.file and not video.incoming_name:
        raise ValidationError("Nothing to process again: the upload was not kept "
                              f"({video.failure_reason or 'no file'}). Upload the file again.")
    Video.objects.filter(pk=video.pk).update(status=VideoStatus.UPLOADED, failure_reason="")
    video.refresh_from_db()
    audit_record(user=user, action=AuditAction.CHANGE, obj=video, detail={"reprocess": True})
    if enqueue:
        _enqueue_processing(video)
    return video


def video_status_data(video: Video) -> dict:
    return {"id": video.pk, "nodule": video.nodule_id, "status": video.status,
            "status_display": video.get_status_display(), "failure_reason": video.failure_reason,
            "frame_count": video.frame_count, "frames_version": video.frames_version}


def _set_status(video: Video, status: str, reason: str = "", **fields) -> None:
    video.status = status
    video.failure_reason = reason
    for name, value in fields.items():
        setattr(video, name, value)
    video.save(update_fields=["status", "failure_reason", *fields])
    group_notify(f"nodule-{video.nodule_id}", event_type="video.status",
                 data=video_status_data(video))


def video_process(*, video: Video) -> Video:
    """The worker's job for one video, idempotent: de-identify the upload if that has not
    happened yet, then decode it into the frame store, thumbnail and training clip. Every
    unusable file ends `failed` with a reason a person understands; transient storage or
    database trouble raises `TransientError` for the task to retry."""
    video.refresh_from_db()
    if video.status == VideoStatus.READY or video.duplicate_of_id:
        return video
    _set_status(video, VideoStatus.PROCESSING, attempts=video.attempts + 1)
    try:
        if video.incoming_name:
            if not _intake(video):
                return video
        _process(video)
    except VideoError as exc:
        _set_status(video, VideoStatus.FAILED, exc.reason[:2000], processed_at=timezone.now())
    except (TransientError, DatabaseError):
        raise
    except Exception as exc:  # noqa: BLE001 - a bad file must never crash the worker
        logger.exception("processing video %s failed", video.pk)
        _set_status(video, VideoStatus.FAILED,
                    f"processing stopped on an unexpected error ({type(exc).__name__}); "
                    "the upload is kept and an administrator can process it again",
                    processed_at=timezone.now())
    return video


def video_fail(*, video: Video, reason: str) -> Video:
    _set_status(video, VideoStatus.FAILED, reason, processed_at=timezone.now())
    return video


def _mark_duplicate(video: Video, original: Video, incoming: Path, sha256: str) -> None:
    """Link `video` to the original with the same content and report it; the copy's
    identified bytes are deleted (the original is stored de-identified already)."""
    if original.nodule.patient.centre_id == video.nodule.patient.centre_id:
        where = f"video {original.pk} of {original.nodule}"
    else:
        where = "a video of another centre"
    incoming.unlink(missing_ok=True)
    _set_status(
        video, VideoStatus.FAILED,
        f"duplicate: the same file (identical SHA-256) was already uploaded as {where}",
        duplicate_of=original, sha256=sha256, incoming_name="", processed_at=timezone.now(),
    )


# The incoming folder holds an upload's identified bytes until de-identification; then, until
# its blanked source is stored, a de-identified copy under this suffix (also where a file that
# could not be blanked stays, private, for `manage.py reprocess`).
DEIDENTIFIED_SUFFIX = ".deidentified"


def _intake(video: Video) -> bool:
    """De-identify the incoming upload's header and container metadata, in the private
    incoming folder; the identified bytes are deleted then. False when the video has failed.
    Burned-in text is blanked by `_process`, before anything reaches storage."""
    if video.incoming_name.endswith(DEIDENTIFIED_SUFFIX):
        return True  # de-identified already (a reprocess after a failure)
    incoming = incoming_dir() / video.incoming_name
    if not incoming.exists():
        raise VideoError("the uploaded file is no longer in the incoming folder; upload it again")
    size = incoming.stat().st_size
    sha = video.sha256 or _sha256(incoming)
    original = (Video.objects.filter(sha256=sha, duplicate_of__isnull=True)
                .exclude(pk=video.pk).select_related("nodule__patient").order_by("pk").first())
    if original is not None:
        _mark_duplicate(video, original, incoming, sha)
        return False
    try:
        with transaction.atomic():
            Video.objects.filter(pk=video.pk).update(sha256=sha, size_bytes=size)
    except IntegrityError:  # another worker stored the same content a moment ago
        original = _original_of(sha)
        _mark_duplicate(video, original, incoming, sha)
        return False
    video.sha256, video.size_bytes = sha, size
    if refusal := size_refusal(size):
        incoming.unlink(missing_ok=True)
        _set_status(video, VideoStatus.FAILED, refusal, incoming_name="",
                    processed_at=timezone.now())
        return False
    if size == 0:
        incoming.unlink(missing_ok=True)
        _set_status(video, VideoStatus.FAILED, "the file is empty (0 bytes)", incoming_name="",
                    processed_at=timezone.now())
        return False
    # Content, never the name: magic bytes say what the file is. A file that is not a video
    # cannot be de-identified, so it stays quarantined in the private incoming folder.
    container = mlvideo.sniff_format(incoming)
    centre = video.nodule.patient.centre
    clean = incoming_dir() / f"{video.pk}{DEIDENTIFIED_SUFFIX}"
    with tempfile.TemporaryDirectory(dir=incoming_dir()) as tmp:
        partial = Path(tmp) / "deidentified"
        deidentify(incoming, partial, container=container, secret=centre.deid_secret,
                   pseudonym=video.nodule.patient.code)
        os.replace(partial, clean)
    Video.objects.filter(pk=video.pk).update(container=container, incoming_name=clean.name)
    video.container, video.incoming_name = container, clean.name
    incoming.unlink(missing_ok=True)  # the identified bytes are gone from here on
    return True


@contextmanager
def _local_file(name: str):
    """A local path for a stored file: the file itself on a filesystem storage, a temporary
    copy otherwise (S3)."""
    try:
        yield Path(default_storage.path(name))
        return
    except NotImplementedError:
        pass
    with tempfile.NamedTemporaryFile(dir=incoming_dir(), suffix=".video") as tmp:
        with default_storage.open(name, "rb") as src:
            shutil.copyfileobj(src, tmp, 8 * 1024 * 1024)
        tmp.flush()
        yield Path(tmp.name)


def processing_options() -> processing.Options:
    return processing.Options(
        min_frames=setting("MIN_FRAMES"),
        max_side=setting("MAX_FRAME_SIDE"),
        clip_size=tuple(setting("CLIP_SIZE")),
        chunk_size=setting("FRAME_CHUNK_SIZE"),
        jpeg_quality=setting("FRAME_JPEG_QUALITY"),
        thumbnail_width=setting("THUMBNAIL_WIDTH"),
    )


@contextmanager
def _source_of(video: Video):
    """A local path of what processing reads: the private de-identified copy while there is
    one, else the kept source in storage."""
    if video.incoming_name:
        path = incoming_dir() / video.incoming_name
        if not path.exists():
            raise VideoError("the de-identified upload is missing; upload it again")
        yield path
        return
    if not video.file or not default_storage.exists(video.file.name):
        raise VideoError("the de-identified upload is missing from storage; upload it again")
    with _local_file(video.file.name) as path:
        yield path


def _known_region(video: Video) -> dict:
    """The region found when the video was first decoded: its kept source is blank outside
    it, so finding it again there could only shrink it (and change the clip)."""
    if not video.region_w or not video.region_h:
        return {}
    region = mlvideo.Region(video.region_x, video.region_y, video.region_w, video.region_h)
    return {"region": region, "region_source": video.region_source}


def _upload_fields(video: Video, info: mlvideo.VideoInfo) -> dict:
    """Container, codec and rate describe the upload: read from it the first time, kept when
    a kept source (Motion JPEG in Matroska, RLE DICOM) is processed again."""
    if video.codec:
        fps = video.fps or 0.0
        return {"fps": video.fps, "duration_s": info.frame_count / fps if fps else None}
    return {"container": info.container, "codec": info.codec[:64], "fps": info.fps or None,
            "duration_s": info.duration_s or None}


class _FinishedFile(File):
    """A finished local file to store. It offers Django's `temporary_file_path`, so a
    FileSystemStorage moves it (a rename on the same filesystem) instead of copying it: the
    frame store and the kept source are several times the upload's size. Other storages
    (S3) read it as any file."""

    def temporary_file_path(self) -> str:
        return self.file.name


def _store_source(video: Video, source: Path) -> str:
    """Save the blanked source beside (never over) the current one: a crash before the row
    points to it (`_set_source`) leaves the row's source whole."""
    name = video_upload_path(video, "") + source.suffix
    try:
        with source.open("rb") as f:
            return default_storage.save(name, _FinishedFile(f, name=name))
    except OSError as exc:
        raise TransientError(f"storage unavailable: {exc}") from exc


def _set_source(video: Video, stored: str, status: str, reason: str = "", **fields) -> None:
    """Make `stored` the video's kept source (with the row's other new fields), then delete
    what it replaces: the private de-identified copy, or an older stored source. Deleted
    only once the row points to the new copy, so a crash in between loses nothing."""
    previous = video.file.name if video.file else ""
    private = incoming_dir() / video.incoming_name if video.incoming_name else None
    _set_status(video, status, reason, file=stored, incoming_name="", **fields)
    if private is not None:
        private.unlink(missing_ok=True)
    if previous and previous != stored:
        default_storage.delete(previous)


def _keep_unusable(video: Video, exc: processing.Unusable) -> None:
    """A video refused after a whole decoding pass: its blanked source replaces the upload
    (nothing is lost: it holds every frame), with the region it was blanked by, and the
    video fails with the reason."""
    region = exc.region
    _set_source(
        video, _store_source(video, exc.source), VideoStatus.FAILED, exc.reason[:2000],
        processed_at=timezone.now(), **_upload_fields(video, exc.info),
        region_x=region.x, region_y=region.y, region_w=region.w, region_h=region.h,
        region_source=exc.region_source,
    )


def _process(video: Video) -> None:
    from annotations.selectors import centre_masks_for

    masks_for = centre_masks_for(centre_id=video.nodule.patient.centre_id)
    version = video.frames_version + 1
    centre = video.nodule.patient.centre.code
    prefix = f"frames/{centre}/{video.pk}/v{version}"
    saved: list[str] = []
    # The output folder lies beside the incoming folder, so that its files can be moved into
    # local media storage (the same volume in a single-host deployment) rather than copied.
    with _source_of(video) as source, tempfile.TemporaryDirectory(dir=incoming_dir()) as out:
        try:
            result = processing.process_video(source, Path(out), masks_for=masks_for,
                                              options=processing_options(),
                                              **_known_region(video))
        except processing.Unusable as exc:
            _keep_unusable(video, exc)
            return
        try:
            for path in [*result.chunks, result.thumbnail, result.clip]:
                with path.open("rb") as f:
                    saved.append(default_storage.save(f"{prefix}/{path.name}",
                                                      _FinishedFile(f)))
            stored = _store_source(video, result.source)
        except (OSError, TransientError) as exc:
            for name in saved:
                default_storage.delete(name)
            raise TransientError(f"storage unavailable: {exc}") from exc
    old_prefix = video.frames_prefix
    info, region = result.info, result.region
    _set_source(
        video, stored, VideoStatus.READY, "", **_upload_fields(video, info),
        frame_count=info.frame_count, width=info.width, height=info.height,
        region_x=region.x, region_y=region.y,
        region_w=region.w, region_h=region.h, region_source=result.region_source,
        frames_prefix=prefix, frames_chunk_size=processing_options().chunk_size,
        frames_version=version, thumbnail=saved[-2], clip=saved[-1],
        clip_shape=list(result.clip_shape), processing_seconds=round(result.seconds, 3),
        processed_at=timezone.now(),
    )
    if old_prefix and old_prefix != prefix:
        transaction.on_commit(lambda: _delete_prefix(old_prefix))


def _delete_prefix(prefix: str) -> None:
    try:
        _, files = default_storage.listdir(prefix)
        for name in files:
            default_storage.delete(f"{prefix}/{name}")
    except (OSError, NotImplementedError):  # pragma: no cover - left-overs are harmless
        logger.warning("could not delete old frames under %s", prefix, exc_info=True)


# --- Resumable uploads (tus) ----------------------------------------------------------------


@transaction.atomic
def upload_create(
    *, user: User, nodule: Nodule, length: int, filename: str = "",
    scan_plane: str = ScanPlane.SWEEP,
) -> UploadSession:
    _require(user, Action.CREATE, nodule.patient.centre)
    if length < 0:
        raise ValidationError("Upload-Length must not be negative.")
    if refusal := size_refusal(length):
        raise UploadTooLarge(refusal)
    if scan_plane not in ScanPlane.values:
        raise ValidationError(f"Unknown scan plane {scan_plane!r}.")
    upload = UploadSession.objects.create(user=user, nodule=nodule, length=length,
                                          filename=Path(filename).name[:255],
                                          scan_plane=scan_plane)
    upload_path(upload).touch()
    if length == 0:  # nothing to send: complete at once (tus creation extension)
        _upload_finish(upload)
    return upload


class UploadTooLarge(ValidationError):
    pass


class OffsetMismatch(Exception):
    def __init__(self, offset: int):
        super().__init__(f"the upload is at byte {offset}")
        self.offset = offset


def upload_path(upload: UploadSession) -> Path:
    return incoming_dir() / f"{upload.pk}.part"


def upload_append(*, upload: UploadSession, offset: int, stream, max_bytes: int) -> UploadSession:
    """Append the request body `stream` at `offset`, a block at a time (memory stays bounded
    whatever the file size). Bytes received before a dropped connection count: the client
    resumes from the stored offset. The last byte registers the video.

    No database transaction spans the body, which may take minutes to arrive: a lock on the
    part file keeps two requests from writing at once, and the offset moves by a conditional
    update."""
    upload.refresh_from_db()
    if upload.status != UploadStatus.RECEIVING:
        raise ValidationError(f"This upload is {upload.get_status_display().lower()}.")
    if offset != upload.offset:
        raise OffsetMismatch(upload.offset)
    path = upload_path(upload)
    received = 0
    error: Exception | None = None
    with path.open("r+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OffsetMismatch(upload.offset) from None  # another request is appending
        upload.refresh_from_db(fields=["offset", "status"])
        if offset != upload.offset or upload.status != UploadStatus.RECEIVING:
            raise OffsetMismatch(upload.offset)
        f.seek(offset)
        f.truncate()
        try:
            while received < max_bytes:
                block = stream.read(min(1024 * 1024, max_bytes - received))
                if not block:
                    break
                if offset + received + len(block) > upload.length:
                    raise ValidationError("The upload is longer than its declared length.")
                f.write(block)
                received += len(block)
        except ValidationError:
            f.truncate(offset)
            raise
        except OSError as exc:  # the connection dropped: keep what arrived
            error = exc
        f.flush()
        os.fsync(f.fileno())
        with transaction.atomic():
            moved = UploadSession.objects.filter(
                pk=upload.pk, offset=offset, status=UploadStatus.RECEIVING
            ).update(offset=offset + received, updated_at=timezone.now())
            if not moved:  # pragma: no cover - the file lock makes this unreachable
                raise OffsetMismatch(UploadSession.objects.get(pk=upload.pk).offset)
            upload.offset = offset + received
            if error is None and upload.offset == upload.length:
                _upload_finish(upload)
    if error is not None:
        raise error
    return upload


def _upload_finish(upload: UploadSession) -> None:
    path = upload_path(upload)
    final = path.with_suffix(".upload")
    path.rename(final)
    video = video_register(nodule=upload.nodule, incoming=final, filename=upload.filename,
                           scan_plane=upload.scan_plane, user=upload.user)
    upload.status = UploadStatus.COMPLETE
    upload.video = video
    upload.save(update_fields=["status", "video", "updated_at"])


@transaction.atomic
def upload_cancel(*, upload: UploadSession, user: User) -> None:
    if upload.user_id != user.pk:
        _require(user, Action.DELETE, upload.nodule.patient.centre)
    if upload.status == UploadStatus.RECEIVING:
        upload_path(upload).unlink(missing_ok=True)
        upload.status = UploadStatus.CANCELLED
        upload.save(update_fields=["status", "updated_at"])


def uploads_expire(*, older_than) -> int:
    """Cancel resumable uploads left unfinished since `older_than` (a datetime) and delete
    their partial bytes: identified data must not linger in the incoming folder."""
    stale = UploadSession.objects.filter(status=UploadStatus.RECEIVING, updated_at__lt=older_than)
    count = 0
    for upload in stale:
        upload_path(upload).unlink(missing_ok=True)
        upload.status = UploadStatus.CANCELLED
        upload.save(update_fields=["status", "updated_at"])
        count += 1
    return count
