"""Writes: setting up a reader study and recording reads.

Setup freezes each case's reference standard and the production model, and creates every
read row in each reader's order: in the sequential design each case is read unaided and then,
in the same sitting, aided; in the washout design all cases are read unaided, then, once the
washout has passed since the reader's last unaided read, all aided in a new shuffled order
(so that memory of the first reading does not carry over: DOMAIN.md, "Reader studies")."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from annotations.labels import label_of, training_label
from annotations.models import User, Video, VideoStatus
from annotations.tirads import tirads_score
from webapp.review.models import (
    Call,
    Design,
    Experience,
    Modality,
    Read,
    ReaderStudy,
    StudyCase,
    StudyReader,
    StudyStatus,
)
from webapp.review.selectors import can_manage_studies, prediction_for_case
from webapp.training.selectors import production_model


class ValidationError(Exception):
    pass


class PermissionDenied(Exception):
    pass


class WashoutNotOver(Exception):
    def __init__(self, opens_at: datetime, days: int):
        self.opens_at = opens_at
        super().__init__(
            f"The aided session opens on {opens_at:%Y-%m-%d %H:%M} UTC: the study asks for a "
            f"washout of {days} day{'s' if days != 1 else ''} after your unaided session.")


# An AUROC needs a case of each class; the DeLong tests and the Obuchowski-Rockette analysis
# need two of each (the results page says so when a pilot study has fewer).
MIN_PER_CLASS = 1
MIN_READERS = 2  # the random-reader analysis needs two readers


def _label_source(video: Video) -> str:
    pathology = getattr(video.nodule, "pathology", None)
    return pathology.source if pathology is not None else ""


@transaction.atomic
def study_create(
    *,
    user: User | None,
    name: str,
    design: str,
    videos: Iterable[Video],
    readers: Sequence[tuple[User, str]],
    washout_days: int = 0,
    seed: int = 0,
    description: str = "",
    require_ready: bool = True,
) -> ReaderStudy:
    """Set up a study. `readers` are (user, "junior" | "senior"). `require_ready=False` is for
    simulated demo reads only, which need no processed video."""
    if user is not None and not can_manage_studies(user):
        raise PermissionDenied("Only platform administrators set up reader studies.")
    name = name.strip()
    if not name:
        raise ValidationError("The study needs a name.")
    if design not in Design.values:
        raise ValidationError(f"Unknown design {design!r}.")
    if design == Design.WASHOUT and washout_days < 1:
        raise ValidationError("The washout design needs a washout of at least one day.")
    if design == Design.SEQUENTIAL:
        washout_days = 0

    videos = list({v.pk: v for v in videos}.values())
    labelled: list[tuple[Video, int]] = []
    for video in videos:
        if require_ready and video.status != VideoStatus.READY:
            raise ValidationError(f"Video {video.pk} is not ready ({video.get_status_display()}).")
        pathology = getattr(video.nodule, "pathology", None)
        label = training_label(pathology)
        if label is None:
            raise ValidationError(
                f"Video {video.pk} has no known label ({label_of(pathology)}): a reader study "
                "needs a benign or malignant reference standard for every case.")
        labelled.append((video, label))
    n_malignant = sum(label for _, label in labelled)
    n_benign = len(labelled) - n_malignant
    if n_malignant < MIN_PER_CLASS or n_benign < MIN_PER_CLASS:
        raise ValidationError(
            f"Choose at least {MIN_PER_CLASS} malignant and {MIN_PER_CLASS} benign case(s) "
            f"(chosen: {n_malignant} malignant, {n_benign} benign).")

    users = [u for u, _ in readers]
    if len({u.pk for u in users}) != len(users):
        raise ValidationError("A reader is listed twice.")
    if len(users) < MIN_READERS:
        raise ValidationError(f"Choose at least {MIN_READERS} readers.")
    for reader_user, experience in readers:
        if not reader_user.is_active:
            raise ValidationError(f"{reader_user.username} is not an active user.")
        if experience not in Experience.values:
            raise ValidationError(f"Mark {reader_user.username} junior or senior.")

    study = ReaderStudy.objects.create(
        name=name, description=description, design=design, washout_days=washout_days,
        seed=seed, model_version=production_model(), created_by=user)
    cases = StudyCase.objects.bulk_create(
        [StudyCase(study=study, video=v, truth=label, label_source=_label_source(v))
         for v, label in sorted(labelled, key=lambda item: item[0].pk)])
    for reader_user, experience in readers:
        reader = StudyReader.objects.create(study=study, user=reader_user, experience=experience)
        Read.objects.bulk_create(_reads_in_order(study, reader, cases))
    return study


def _reads_in_order(study: ReaderStudy, reader: StudyReader, cases: list[StudyCase]) -> list[Read]:
    rng = random.Random(f"{study.seed}:{reader.user_id}")
    first = cases[:]
    rng.shuffle(first)
    if study.design == Design.SEQUENTIAL:
        plan = [(case, modality) for case in first
                for modality in (Modality.UNAIDED, Modality.AIDED)]
    else:
        second = cases[:]
        rng.shuffle(second)
        plan = ([(case, Modality.UNAIDED) for case in first]
                + [(case, Modality.AIDED) for case in second])
    return [Read(reader=reader, case=case, modality=modality, order=i)
            for i, (case, modality) in enumerate(plan)]


def washout_opens_at(*, reader: StudyReader) -> datetime | None:
    """When the reader's aided session may start (washout design), None when not yet known
    (unaided reads outstanding) or not applicable."""
    study = reader.study
    if study.design != Design.WASHOUT:
        return None
    unaided = reader.reads.filter(modality=Modality.UNAIDED)
    if unaided.filter(submitted_at__isnull=True).exists():
        return None
    last = unaided.aggregate(last=Max("submitted_at"))["last"]
    return last + timedelta(days=study.washout_days) if last else None


@transaction.atomic
def read_start_next(*, reader: StudyReader, now: datetime | None = None) -> Read | None:
    """The reader's next read, started (its clock set) if it was not yet; None when the
    reader has finished. Raises WashoutNotOver for an aided read that comes too early."""
    now = now or timezone.now()
    read = (Read.objects.select_for_update().select_related("case", "reader__study")
            .filter(reader=reader, submitted_at__isnull=True).order_by("order").first())
    if read is None:
        return None
    study = reader.study
    if read.modality == Modality.AIDED and study.design == Design.WASHOUT:
        opens_at = washout_opens_at(reader=reader)
        if opens_at is not None and now < opens_at:
            raise WashoutNotOver(opens_at, study.washout_days)
    if read.started_at is None:
        read.started_at = now
        if read.modality == Modality.AIDED:
            prediction = prediction_for_case(study=study, case=read.case)
            read.model_probability = prediction.probability if prediction else None
        read.save(update_fields=["started_at", "model_probability"])
    return read


def tirads_level_of(*, level: int | None, features: dict | None) -> tuple[int, dict]:
    """The reader's TI-RADS: a level 1-5, or the ACR features from which it is scored."""
    if features:
        try:
            result = tirads_score(
                composition=features.get("composition", ""),
                echogenicity=features.get("echogenicity", ""),
                shape=features.get("shape", ""), margin=features.get("margin", ""),
                echogenic_foci=features.get("echogenic_foci") or [])
        except ValueError as exc:
            raise ValidationError(f"TI-RADS features: {exc}") from None
        if level is not None and level != result.level.level:
            raise ValidationError(
                f"The TI-RADS features score TR{result.level.level}, not TR{level}.")
        return result.level.level, dict(features, points=result.points)
    if level is None or not 1 <= level <= 5:
        raise ValidationError("Give a TI-RADS level (TR1-TR5) or the TI-RADS features.")
    return level, {}


@transaction.atomic
def read_submit(
    *,
    read: Read,
    likelihood: int,
    call: str,
    tirads_level: int | None = None,
    tirads_features: dict | None = None,
    now: datetime | None = None,
) -> Read:
    now = now or timezone.now()
    read = Read.objects.select_for_update().select_related("reader__study").get(pk=read.pk)
    if read.submitted_at is not None:
        raise ValidationError("This case has already been read; reads cannot be changed.")
    if read.started_at is None:
        raise ValidationError("This read has not been started.")
    earlier = Read.objects.filter(reader=read.reader, order__lt=read.order,
                                  submitted_at__isnull=True)
    if earlier.exists():
        raise ValidationError("Read the cases in the order given.")
    if not isinstance(likelihood, int) or not 0 <= likelihood <= 100:
        raise ValidationError("The likelihood of malignancy is a whole number from 0 to 100.")
    if call not in Call.values:
        raise ValidationError("Call the nodule benign or malignant.")
    level, features = tirads_level_of(level=tirads_level, features=tirads_features)
    read.likelihood = likelihood
    read.call = call
    read.tirads_level = level
    read.tirads_features = features
    read.submitted_at = now
    read.seconds = max(0.0, (now - read.started_at).total_seconds())
    read.save()
    study = read.reader.study
    if not Read.objects.filter(reader__study=study, submitted_at__isnull=True).exists():
        ReaderStudy.objects.filter(pk=study.pk).update(status=StudyStatus.FINISHED,
                                                       finished_at=now)
    return read
