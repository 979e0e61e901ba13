"""Clinical data model. Fields, choices, constraints and indexes only: behaviour lives in
services (writes) and selectors (reads); tenancy in `annotations.permissions`."""

from __future__ import annotations

import secrets
import uuid

from django.contrib.auth.models import AbstractUser
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class PlatformRole(models.TextChoices):
    NONE = "", "None"
    ML_ENGINEER = "ml_engineer", "ML engineer"
    PLATFORM_ADMIN = "platform_admin", "Platform administrator"


class User(AbstractUser):
    """A person. Centre roles come from memberships; platform roles from `platform_role`."""

    platform_role = models.CharField(
        max_length=32, choices=PlatformRole.choices, default=PlatformRole.NONE, blank=True
    )

    def __str__(self) -> str:
        return self.get_full_name() or self.username


def new_deid_secret() -> str:
    return secrets.token_hex(32)


class Centre(models.Model):
    """A hospital contributing cases. Every case object belongs to exactly one centre."""

    name = models.CharField(max_length=200, unique=True)
    code = models.SlugField(
        max_length=16, unique=True, help_text="Short code used in manifests and pseudonyms."
    )
    # Seeds the DICOM de-identifier, so that one study's UIDs map to the same new UIDs on every
    # upload from this centre (and to different ones at another centre). Never shown.
    deid_secret = models.CharField(max_length=64, default=new_deid_secret, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


class CentreRole(models.TextChoices):
    ANNOTATOR = "annotator", "Annotator"
    READER = "reader", "Reader"
    CENTRE_ADMIN = "centre_admin", "Centre administrator"


class Membership(models.Model):
    """A user's role at one centre; a user may belong to several centres."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    centre = models.ForeignKey(Centre, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=32, choices=CentreRole.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["centre__code", "user__username"]
        constraints = [
            models.UniqueConstraint(fields=["user", "centre"], name="one_role_per_user_centre")
        ]

    def __str__(self) -> str:
        return f"{self.user} - {self.get_role_display()} at {self.centre.code}"


class Sex(models.TextChoices):
    FEMALE = "F", "Female"
    MALE = "M", "Male"
    UNKNOWN = "U", "Unknown"


class Patient(models.Model):
    """A pseudonymous patient. Never a name or a birth date: identity stays at the hospital."""

    centre = models.ForeignKey(Centre, on_delete=models.PROTECT, related_name="patients")
    code = models.CharField(max_length=64, help_text="Pseudonym, unique within the centre.")
    sex = models.CharField(max_length=1, choices=Sex.choices, default=Sex.UNKNOWN)
    age_at_exam = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MaxValueValidator(120)]
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["centre__code", "code"]
        constraints = [
            models.UniqueConstraint(fields=["centre", "code"], name="patient_code_unique_in_centre")
        ]

    def __str__(self) -> str:
        return f"{self.centre.code}/{self.code}"


class NoduleLocation(models.TextChoices):
    RIGHT_LOBE = "right", "Right lobe"
    LEFT_LOBE = "left", "Left lobe"
    ISTHMUS = "isthmus", "Isthmus"
    UNKNOWN = "unknown", "Unknown"


class Nodule(models.Model):
    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="nodules")
    code = models.CharField(max_length=64, help_text="Identifier within the patient, e.g. N1.")
    location = models.CharField(
        max_length=16, choices=NoduleLocation.choices, default=NoduleLocation.UNKNOWN
    )
    max_diameter_mm = models.DecimalField(
        max_digits=5,
        decimal_places=1,
        null=True,
        blank=True,
        validators=[MinValueValidator(0), MaxValueValidator(150)],
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["patient__code", "code"]
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "code"], name="nodule_code_unique_in_patient"
            )
        ]

    def __str__(self) -> str:
        return f"{self.patient}/{self.code}"


class ScanPlane(models.TextChoices):
    TRANSVERSE = "transverse", "Transverse"
    LONGITUDINAL = "longitudinal", "Longitudinal"
    SWEEP = "sweep", "Sweep"


class VideoStatus(models.TextChoices):
    UPLOADED = "uploaded", "Uploaded"
    PROCESSING = "processing", "Processing"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"


class RegionSource(models.TextChoices):
    DICOM = "dicom", "DICOM ultrasound regions"
    IMAGE = "image", "Image analysis"


def video_upload_path(instance: Video, filename: str) -> str:
    # Content-addressed under the centre: no patient-derived names in storage paths.
    return f"videos/{instance.nodule.patient.centre.code}/{instance.sha256[:2]}/{instance.sha256}"


class Video(models.Model):
    """One dynamic ultrasound video of a nodule, stored de-identified."""

    nodule = models.ForeignKey(Nodule, on_delete=models.CASCADE, related_name="videos")
    scan_plane = models.CharField(max_length=16, choices=ScanPlane.choices, default=ScanPlane.SWEEP)
    file = models.FileField(upload_to=video_upload_path, max_length=300, blank=True)
    original_filename = models.CharField(max_length=255, blank=True)
    sha256 = models.CharField(max_length=64, db_index=True, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    container = models.CharField(max_length=16, blank=True)
    codec = models.CharField(max_length=64, blank=True)
    fps = models.FloatField(null=True, blank=True)
    frame_count = models.PositiveIntegerField(null=True, blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    duration_s = models.FloatField(null=True, blank=True)
    status = models.CharField(
        max_length=16, choices=VideoStatus.choices, default=VideoStatus.UPLOADED, db_index=True
    )
    failure_reason = models.TextField(blank=True)
    uploaded_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    uploaded_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    # The identified upload while it waits for de-identification: a file name inside the
    # private incoming folder (settings VAR_DIR), never inside media storage. Emptied once the
    # de-identified copy is stored; kept (quarantined) when the file cannot be de-identified.
    incoming_name = models.CharField(max_length=100, blank=True)
    duplicate_of = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="duplicates"
    )
    # The ultrasound image inside the frame (pixels) and where it came from.
    region_x = models.PositiveIntegerField(null=True, blank=True)
    region_y = models.PositiveIntegerField(null=True, blank=True)
    region_w = models.PositiveIntegerField(null=True, blank=True)
    region_h = models.PositiveIntegerField(null=True, blank=True)
    region_source = models.CharField(max_length=16, choices=RegionSource.choices, blank=True)
    # Frame store: `frames_prefix`/chunk-NNNNN.bin holds `frames_chunk_size` JPEG frames each
    # (annotations.framestore). `frames_version` grows on every processing, so frame URLs of
    # one version never change content and may be cached forever.
    frames_prefix = models.CharField(max_length=200, blank=True)
    frames_chunk_size = models.PositiveIntegerField(default=0)
    frames_version = models.PositiveIntegerField(default=0)
    thumbnail = models.CharField(max_length=200, blank=True)
    clip = models.CharField(max_length=200, blank=True)
    clip_shape = models.JSONField(default=list, blank=True)  # [T, H, W]
    processing_seconds = models.FloatField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-uploaded_at"]
        constraints = [
            # One original per content: a second copy is recorded as a failed duplicate that
            # points at the first, so a race between two workers cannot store it twice.
            models.UniqueConstraint(
                fields=["sha256"],
                condition=models.Q(duplicate_of__isnull=True) & ~models.Q(sha256=""),
                name="video_sha256_unique_original",
            )
        ]

    def __str__(self) -> str:
        return f"Video {self.pk} of {self.nodule}"

    @property
    def region(self) -> tuple[int, int, int, int] | None:
        if self.region_w is None:
            return None
        return (self.region_x, self.region_y, self.region_w, self.region_h)


class CentreMask(models.Model):
    """A rectangle a centre blanks in every stored frame: where its scanners burn text (a
    vendor banner, the patient name) into the image itself. Frame coordinates in pixels;
    applies to frames of the given size only, or to every size when width/height are empty."""

    centre = models.ForeignKey(Centre, on_delete=models.CASCADE, related_name="masks")
    label = models.CharField(max_length=100, blank=True)
    frame_width = models.PositiveIntegerField(null=True, blank=True)
    frame_height = models.PositiveIntegerField(null=True, blank=True)
    x = models.PositiveIntegerField()
    y = models.PositiveIntegerField()
    w = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    h = models.PositiveIntegerField(validators=[MinValueValidator(1)])

    class Meta:
        ordering = ["centre__code", "id"]

    def __str__(self) -> str:
        rect = f"{self.x},{self.y},{self.w},{self.h}"
        return f"{self.centre.code} mask {self.label or self.pk} ({rect})"


class UploadStatus(models.TextChoices):
    RECEIVING = "receiving", "Receiving"
    COMPLETE = "complete", "Complete"
    CANCELLED = "cancelled", "Cancelled"


class UploadSession(models.Model):
    """A resumable upload (tus protocol, https://tus.io/protocols/resumable-upload): the bytes
    received so far live in the private incoming folder under `id`; `offset` is the truth
    a client resumes from after a dropped connection."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    nodule = models.ForeignKey(Nodule, on_delete=models.CASCADE, related_name="uploads")
    scan_plane = models.CharField(max_length=16, choices=ScanPlane.choices, default=ScanPlane.SWEEP)
    filename = models.CharField(max_length=255, blank=True)
    length = models.BigIntegerField()
    offset = models.BigIntegerField(default=0)
    status = models.CharField(
        max_length=16, choices=UploadStatus.choices, default=UploadStatus.RECEIVING
    )
    video = models.OneToOneField(
        Video, on_delete=models.SET_NULL, null=True, blank=True, related_name="upload"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Upload {self.id} ({self.offset}/{self.length} bytes)"


class PathologyOutcome(models.TextChoices):
    BENIGN = "benign", "Benign"
    MALIGNANT = "malignant", "Malignant"
    INDETERMINATE = "indeterminate", "Indeterminate"


class PathologySource(models.TextChoices):
    SURGERY = "surgery", "Surgical histology"
    FNA = "fna", "Fine-needle aspiration cytology"


class Bethesda(models.TextChoices):
    # The Bethesda System for Reporting Thyroid Cytopathology, 2023 (DOMAIN.md).
    I = "I", "I Nondiagnostic"  # noqa: E741 - the category's own name
    II = "II", "II Benign"
    III = "III", "III Atypia of undetermined significance"
    IV = "IV", "IV Follicular neoplasm"
    V = "V", "V Suspicious for malignancy"
    VI = "VI", "VI Malignant"


class Diagnosis(models.TextChoices):
    # WHO Classification of Thyroid Neoplasms, 5th edition (2022).
    FOLLICULAR_NODULAR_DISEASE = "follicular_nodular_disease", "Follicular nodular disease"
    FOLLICULAR_ADENOMA = "follicular_adenoma", "Follicular adenoma"
    ONCOCYTIC_ADENOMA = "oncocytic_adenoma", "Oncocytic adenoma"
    THYROIDITIS = "thyroiditis", "Thyroiditis"
    NIFTP = "niftp", "NIFTP"
    UMP = "ump", "Tumour of uncertain malignant potential"
    PAPILLARY_CARCINOMA = "papillary_carcinoma", "Papillary thyroid carcinoma"
    IEFVPTC = "iefvptc", "Invasive encapsulated follicular-variant PTC"
    FOLLICULAR_CARCINOMA = "follicular_carcinoma", "Follicular carcinoma"
    ONCOCYTIC_CARCINOMA = "oncocytic_carcinoma", "Oncocytic carcinoma"
    DHGTC = "dhgtc", "Differentiated high-grade thyroid carcinoma"
    POORLY_DIFFERENTIATED = "poorly_differentiated", "Poorly differentiated carcinoma"
    ANAPLASTIC = "anaplastic", "Anaplastic carcinoma"
    MEDULLARY = "medullary", "Medullary (C-cell) carcinoma"


class Pathology(models.Model):
    """The reference standard of one nodule; the training label is derived from it by
    `annotations.labels.training_label`, never stored twice."""

    nodule = models.OneToOneField(Nodule, on_delete=models.CASCADE, related_name="pathology")
    outcome = models.CharField(max_length=16, choices=PathologyOutcome.choices)
    diagnosis = models.CharField(max_length=32, choices=Diagnosis.choices, blank=True)
    source = models.CharField(max_length=16, choices=PathologySource.choices)
    bethesda = models.CharField(max_length=3, choices=Bethesda.choices, blank=True)
    date = models.DateField(null=True, blank=True)
    recorded_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "pathology results"
        ordering = ["nodule_id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(bethesda="") | models.Q(source="fna"),
                name="bethesda_only_with_fna",
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_outcome_display()} ({self.get_source_display()}) for {self.nodule}"


class AuditAction(models.TextChoices):
    VIEW = "view", "Viewed"
    CREATE = "create", "Created"
    CHANGE = "change", "Changed"
    EXPORT = "export", "Exported"
    DELETE = "delete", "Deleted"


class AuditEvent(models.Model):
    """Append-only record of access to case objects.

    Rows are never updated or deleted: database triggers (migration 0002) refuse both. Names
    are copied into the row so that the record outlives the user, centre or object it names;
    the foreign keys carry no database constraint for the same reason.
    """

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(
        User,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    username = models.CharField(max_length=150, blank=True)
    centre = models.ForeignKey(
        Centre,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    centre_code = models.CharField(max_length=16, blank=True)
    action = models.CharField(max_length=16, choices=AuditAction.choices)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["centre", "-at"]),
            models.Index(fields=["user", "-at"]),
            models.Index(fields=["object_type", "object_id"]),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.username} {self.action} {self.object_repr}"


# --- Annotation workspace: per-annotator annotations, review and consensus -----------------


class AnnotationState(models.TextChoices):
    DRAFT = "draft", "Draft"
    SUBMITTED = "submitted", "Submitted"
    CHANGES_REQUESTED = "changes_requested", "Changes requested"
    ACCEPTED = "accepted", "Accepted"


class Annotation(models.Model):
    """One person's labels of one video (nodule track, calcification marks, TI-RADS), or the
    reviewer's consensus (`is_consensus`), which is what training uses once accepted.

    `data` holds the document of docs/annotation-format.md, validated by
    `annotations.annotation_format`. `version` grows on every save: a write based on an older
    version is refused (optimistic locking), so two browsers never overwrite each other."""

    video = models.ForeignKey(Video, on_delete=models.CASCADE, related_name="annotations")
    annotator = models.ForeignKey(
        User, on_delete=models.PROTECT, related_name="annotations", null=True, blank=True
    )
    is_consensus = models.BooleanField(default=False)
    state = models.CharField(
        max_length=20, choices=AnnotationState.choices, default=AnnotationState.DRAFT,
        db_index=True,
    )
    version = models.PositiveIntegerField(default=1)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    submitted_at = models.DateTimeField(null=True, blank=True)
    reviewed_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["video_id", "-is_consensus", "annotator__username"]
        constraints = [
            models.UniqueConstraint(
                fields=["video", "annotator"], condition=models.Q(is_consensus=False),
                name="one_annotation_per_annotator_video",
            ),
            models.UniqueConstraint(
                fields=["video"], condition=models.Q(is_consensus=True),
                name="one_consensus_per_video",
            ),
        ]
        indexes = [models.Index(fields=["state", "video"])]

    def __str__(self) -> str:
        who = "consensus" if self.is_consensus else str(self.annotator)
        return f"Annotation {self.pk} of video {self.video_id} ({who})"


class ReviewComment(models.Model):
    """A reviewer's comment pinned to a frame of the annotated video."""

    annotation = models.ForeignKey(Annotation, on_delete=models.CASCADE, related_name="comments")
    author = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="+")
    frame = models.PositiveIntegerField()
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    resolved = models.BooleanField(default=False)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"Comment on frame {self.frame} of {self.annotation}"


class ReviewerAssignment(models.Model):
    """A member of a centre who reviews annotations there besides its administrators."""

    centre = models.ForeignKey(Centre, on_delete=models.CASCADE, related_name="reviewers")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="review_assignments")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["centre", "user"], name="one_reviewer_row")
        ]

    def __str__(self) -> str:
        return f"{self.user} reviews at {self.centre.code}"
