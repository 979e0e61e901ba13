"""Dataset snapshots, training runs, the model registry and predictions.

Fields, choices and constraints only; behaviour lives in `services` (writes) and `selectors`
(reads). A frozen snapshot and a model version's weights, configuration and metrics never
change: database triggers (migration 0002) refuse the UPDATE, whatever code tries it.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Split(models.TextChoices):
    TRAIN = "train", "Train"
    VAL = "val", "Validation"
    INTERNAL_TEST = "internal_test", "Internal test"
    EXTERNAL_TEST = "external_test", "External test"


class DatasetSnapshot(models.Model):
    """A frozen case list: which videos, with which label, in which split. Created frozen by
    `services.snapshot_freeze`; immutable afterwards."""

    name = models.CharField(max_length=200)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Centre codes as they were chosen: development centres (train/val/internal test) and
    # centres held out whole as the external test set.
    centres = models.JSONField(default=list)
    external_centres = models.JSONField(default=list)
    # The eligibility rules applied when freezing (label rule, video state, annotations).
    eligibility = models.JSONField(default=dict)
    seed = models.PositiveIntegerField(default=0)
    fractions = models.JSONField(default=list)  # train / val / internal test of development
    counts = models.JSONField(default=dict)  # {split: {n, benign, malignant}}
    centre_counts = models.JSONField(default=dict)  # {centre: {split: n}}
    excluded = models.JSONField(default=dict)  # {reason: number of nodules}
    # Only cases whose video has an accepted consensus annotation (None in snapshots frozen
    # before annotations existed: no).
    only_accepted = models.BooleanField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Snapshot {self.pk}: {self.name}"

    @property
    def n_cases(self) -> int:
        return sum(c.get("n", 0) for c in self.counts.values())


class SnapshotCase(models.Model):
    """One case of a snapshot: a nodule's video, its label and split, and the exact clip
    (storage name and frame-store version) that was frozen."""

    snapshot = models.ForeignKey(DatasetSnapshot, on_delete=models.CASCADE, related_name="cases")
    # PROTECT: a case that a frozen snapshot used cannot silently disappear from it.
    video = models.ForeignKey("annotations.Video", on_delete=models.PROTECT, related_name="+")
    case_id = models.CharField(max_length=120)
    centre_code = models.CharField(max_length=16)
    patient_code = models.CharField(max_length=64)
    nodule_code = models.CharField(max_length=64)
    label = models.PositiveSmallIntegerField()  # 0 benign, 1 malignant
    label_source = models.CharField(max_length=16, blank=True)  # surgery | fna
    split = models.CharField(max_length=16, choices=Split.choices)
    clip = models.CharField(max_length=200)
    clip_shape = models.JSONField(default=list)
    frames_version = models.PositiveIntegerField(default=0)
    region = models.JSONField(null=True, blank=True)  # [x, y, w, h]: the clip in frame pixels
    # The accepted consensus annotation used, frozen: its id and version, and the document
    # itself (annotations may be reopened and edited later; the snapshot keeps what it used).
    annotation_id = models.PositiveIntegerField(null=True, blank=True)
    annotation_version = models.PositiveIntegerField(null=True, blank=True)
    annotation = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["snapshot_id", "case_id"]
        constraints = [
            models.UniqueConstraint(fields=["snapshot", "case_id"], name="snapshot_case_id_unique"),
            models.UniqueConstraint(fields=["snapshot", "video"], name="snapshot_video_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.case_id} ({self.split})"


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)
FINISHED_STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class RunPhase(models.TextChoices):
    NONE = "", "-"
    EXPORTING = "exporting", "Exporting the snapshot"
    TRAINING = "training", "Training"
    EVALUATING = "evaluating", "Evaluating"
    REGISTERING = "registering", "Registering the model"


class TrainingRun(models.Model):
    """A training job: its configuration, its state (`queued -> running -> succeeded | failed
    | cancelled`) and its progress. The gpu-queue task that runs it stamps `heartbeat_at`;
    `attempt` grows on every resume, and only the task of the current attempt may run it."""

    snapshot = models.ForeignKey(DatasetSnapshot, on_delete=models.PROTECT, related_name="runs")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    arch = models.CharField(max_length=32)
    preset = models.CharField(max_length=16)
    hyperparameters = models.JSONField(default=dict)  # validated overrides of the preset
    gpus = models.PositiveSmallIntegerField(default=1)
    # Relative to the training folder, unique: two runs never write the same directory.
    run_dir = models.CharField(max_length=200, unique=True)

    status = models.CharField(
        max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True
    )
    phase = models.CharField(max_length=16, choices=RunPhase.choices, blank=True)
    attempt = models.PositiveIntegerField(default=1)
    failure_reason = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
        related_name="+",
    )
    # Who runs it: the Celery worker, its host and process, and the training process.
    worker = models.CharField(max_length=255, blank=True)
    host = models.CharField(max_length=255, blank=True)
    worker_pid = models.PositiveIntegerField(null=True, blank=True)
    process_pid = models.PositiveIntegerField(null=True, blank=True)
    device = models.CharField(max_length=32, blank=True)

    epoch = models.PositiveIntegerField(default=0)  # epochs completed
    epochs = models.PositiveIntegerField(default=0)
    step = models.PositiveIntegerField(default=0)
    steps_total = models.PositiveIntegerField(default=0)
    resumed_from_epoch = models.PositiveIntegerField(null=True, blank=True)
    checkpoint_epoch = models.PositiveIntegerField(default=0)  # last epoch with a checkpoint
    summary = models.JSONField(default=dict, blank=True)  # the "done" event of ml.train
    log_tail = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Run {self.pk} ({self.arch}, {self.get_status_display().lower()})"


class RunEpoch(models.Model):
    """One epoch's metrics, from the run's metrics.jsonl."""

    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="epoch_rows")
    epoch = models.PositiveIntegerField()
    train_loss = models.FloatField(null=True)
    val_loss = models.FloatField(null=True)
    val_auroc = models.FloatField(null=True)
    lr = models.FloatField(null=True)
    seconds = models.FloatField(null=True)
    best_epoch = models.PositiveIntegerField(null=True)
    improved = models.BooleanField(default=False)

    class Meta:
        ordering = ["run_id", "epoch"]
        constraints = [
            models.UniqueConstraint(fields=["run", "epoch"], name="run_epoch_unique")
        ]


class RunStep(models.Model):
    """A logged optimiser step (every `log_every` steps): the loss curve within epochs."""

    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="step_rows")
    step = models.PositiveIntegerField()
    epoch = models.PositiveIntegerField()
    loss = models.FloatField(null=True)
    lr = models.FloatField(null=True)

    class Meta:
        ordering = ["run_id", "step"]
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="run_step_unique")]


class ModelState(models.TextChoices):
    CANDIDATE = "candidate", "Candidate"
    PRODUCTION = "production", "Production"
    RETIRED = "retired", "Retired"


class ModelVersion(models.Model):
    """An immutable trained model: weights in media storage (safetensors), the run's
    configuration with the threshold frozen on validation, metrics per split and centre, the
    weights' SHA-256, the snapshot it learnt from and the code version. Only `state` and its
    dates change (candidate -> production -> retired); at most one is in production."""

    number = models.PositiveIntegerField(unique=True)
    run = models.OneToOneField(TrainingRun, on_delete=models.PROTECT,
                               related_name="model_version")
    snapshot = models.ForeignKey(DatasetSnapshot, on_delete=models.PROTECT,
                                 related_name="model_versions")
    arch = models.CharField(max_length=32)
    preset = models.CharField(max_length=16)
    config = models.JSONField(default=dict)  # the run's config.json
    threshold = models.FloatField()
    metrics = models.JSONField(default=dict)  # ml.evaluate's metrics.json
    weights = models.CharField(max_length=300)  # storage name
    weights_format = models.CharField(max_length=16, default="safetensors")
    checksum = models.CharField(max_length=64)  # SHA-256 of the weights file
    code_version = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    state = models.CharField(
        max_length=16, choices=ModelState.choices, default=ModelState.CANDIDATE, db_index=True
    )
    promoted_at = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-number"]
        constraints = [
            models.UniqueConstraint(
                fields=["state"], condition=models.Q(state="production"),
                name="one_production_model",
            )
        ]

    def __str__(self) -> str:
        return f"Model v{self.number} ({self.arch})"


# Columns of ModelVersion that never change after creation (migration 0002's trigger).
MODEL_VERSION_IMMUTABLE = (
    "number", "run_id", "snapshot_id", "arch", "preset", "config", "threshold", "metrics",
    "weights", "weights_format", "checksum", "code_version", "created_at",
)


class PredictedLabel(models.TextChoices):
    BENIGN = "benign", "Benign"
    MALIGNANT = "malignant", "Malignant"


class Prediction(models.Model):
    """One model version's reading of one video: the probability, the class at the frozen
    threshold, and heatmaps aligned to the video's frame store (clip frame f = frame f)."""

    video = models.ForeignKey("annotations.Video", on_delete=models.CASCADE,
                              related_name="predictions")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT,
                                      related_name="predictions")
    probability = models.FloatField()
    predicted_label = models.CharField(max_length=16, choices=PredictedLabel.choices)
    threshold = models.FloatField()
    # heatmaps.npz in storage: `gradcam` (T, H, W) uint8 and `attention` (K, T, H, W) uint8,
    # values / 255 in [0, 1], on the clip grid; `frame_indices`, `crop_box`.
    heatmaps = models.CharField(max_length=300)
    heatmaps_bytes = models.PositiveIntegerField(default=0)
    attention_maps = models.PositiveSmallIntegerField(default=0)
    frames_version = models.PositiveIntegerField(default=0)
    clip_shape = models.JSONField(default=list)  # [T, H, W] of the clip the maps align to
    region = models.JSONField(default=list)  # [x, y, w, h]: the clip's area in frame pixels
    frame_indices = models.JSONField(default=list)  # frames the model sampled
    crop_box = models.JSONField(default=list)  # [x0, y0, x1, y1] in clip pixels
    seconds = models.FloatField(default=0)
    # The accepted consensus whose nodule boxes cropped the input (models trained on ROI
    # crops), or None: the whole ultrasound image.
    boxes_annotation_id = models.PositiveIntegerField(null=True, blank=True)
    boxes_annotation_version = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["video", "model_version"],
                                    name="one_prediction_per_video_and_model")
        ]

    def __str__(self) -> str:
        label = self.get_predicted_label_display()
        return f"{label} ({self.probability:.2f}) for video {self.video_id}"
