"""Reader studies (DOMAIN.md, "Reader studies"): every reader reads every case unaided and
AI-aided, sequentially in one sitting or in two sessions separated by a washout. A reader's
progress lives in `Read` rows (one per reader x case x modality, created at setup), so a
reload resumes where the reader stopped and nothing is held in the browser or the session."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Design(models.TextChoices):
    SEQUENTIAL = "sequential", "Sequential (unaided then aided, one sitting)"
    WASHOUT = "washout", "Two sessions with a washout"


class StudyStatus(models.TextChoices):
    OPEN = "open", "Open"
    FINISHED = "finished", "Finished"


class Experience(models.TextChoices):
    JUNIOR = "junior", "Junior"
    SENIOR = "senior", "Senior"


class Modality(models.TextChoices):
    UNAIDED = "unaided", "Unaided"
    AIDED = "aided", "Aided"


class Call(models.TextChoices):
    BENIGN = "benign", "Benign"
    MALIGNANT = "malignant", "Malignant"


class ReaderStudy(models.Model):
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    design = models.CharField(max_length=16, choices=Design.choices)
    washout_days = models.PositiveIntegerField(default=0)  # 0 in the sequential design
    seed = models.PositiveIntegerField(default=0)  # of the per-reader shuffles
    # The production model at setup: the aided read shows its predictions, and the results
    # say which version helped.
    model_version = models.ForeignKey("training.ModelVersion", on_delete=models.PROTECT,
                                      null=True, blank=True, related_name="+")
    status = models.CharField(max_length=16, choices=StudyStatus.choices,
                              default=StudyStatus.OPEN)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL,
                                   null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.name


class StudyCase(models.Model):
    """A video read in the study, with its reference standard frozen at setup (for the
    analysis only: it never reaches a reader)."""

    study = models.ForeignKey(ReaderStudy, on_delete=models.CASCADE, related_name="cases")
    video = models.ForeignKey("annotations.Video", on_delete=models.PROTECT, related_name="+")
    truth = models.PositiveSmallIntegerField()  # 0 benign, 1 malignant
    label_source = models.CharField(max_length=16, blank=True)  # surgery | fna

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["study", "video"],
                                               name="review_one_case_per_video")]

    def __str__(self) -> str:
        return f"Case {self.pk} of study {self.study_id}"


class StudyReader(models.Model):
    study = models.ForeignKey(ReaderStudy, on_delete=models.CASCADE, related_name="readers")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                             related_name="reader_studies")
    experience = models.CharField(max_length=16, choices=Experience.choices)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["study", "user"],
                                               name="review_one_reader_per_user")]

    def __str__(self) -> str:
        return f"{self.user} ({self.experience}) in study {self.study_id}"


class Read(models.Model):
    """One reader's reading of one case in one modality. `order` is the reader's reading
    order across both modalities; `started_at` is set when the case is first shown, so the
    reading time survives a reload."""

    reader = models.ForeignKey(StudyReader, on_delete=models.CASCADE, related_name="reads")
    case = models.ForeignKey(StudyCase, on_delete=models.CASCADE, related_name="reads")
    modality = models.CharField(max_length=16, choices=Modality.choices)
    order = models.PositiveIntegerField()
    started_at = models.DateTimeField(null=True, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    likelihood = models.PositiveSmallIntegerField(null=True, blank=True)  # 0..100
    call = models.CharField(max_length=16, choices=Call.choices, blank=True)
    tirads_level = models.PositiveSmallIntegerField(null=True, blank=True)  # 1..5
    tirads_features = models.JSONField(default=dict, blank=True)  # when scored from features
    seconds = models.FloatField(null=True, blank=True)  # reading time
    # What the aided read showed: the model's probability (None: no prediction for the video).
    model_probability = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["reader", "order"]
        constraints = [
            models.UniqueConstraint(fields=["reader", "case", "modality"],
                                    name="review_one_read_per_modality"),
            models.UniqueConstraint(fields=["reader", "order"], name="review_read_order"),
        ]

    def __str__(self) -> str:
        return f"{self.modality} read of case {self.case_id} by reader {self.reader_id}"
