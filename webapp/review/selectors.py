"""Reads. Platform administrators see every study; a reader sees the studies they read in,
and nothing of the cases but the videos (blinding: no pathology, no patient codes)."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from annotations.models import User
from annotations.permissions import PlatformAction, can_platform
from webapp.review.models import Read, ReaderStudy, StudyCase, StudyReader
from webapp.training.models import Prediction


def can_manage_studies(user: User) -> bool:
    return can_platform(user, PlatformAction.ADMINISTER)


def studies_visible_to(*, user: User) -> QuerySet[ReaderStudy]:
    if not user.is_authenticated or not user.is_active:
        return ReaderStudy.objects.none()
    if can_manage_studies(user):
        return ReaderStudy.objects.all()
    return ReaderStudy.objects.filter(readers__user=user).distinct()


def studies_managed_by(*, user: User) -> QuerySet[ReaderStudy]:
    if not can_manage_studies(user):
        return ReaderStudy.objects.none()
    return ReaderStudy.objects.select_related("model_version", "created_by").annotate(
        n_cases=Count("cases", distinct=True), n_readers=Count("readers", distinct=True))


def study_reader_for(*, user: User, study: ReaderStudy) -> StudyReader | None:
    if not user.is_authenticated or not user.is_active:
        return None
    return StudyReader.objects.filter(study=study, user=user).first()


def reader_progress(*, reader: StudyReader) -> dict:
    counts = reader.reads.aggregate(
        total=Count("id"), done=Count("id", filter=Q(submitted_at__isnull=False)))
    return {"total": counts["total"], "done": counts["done"],
            "finished": counts["total"] > 0 and counts["done"] == counts["total"]}


def reads_of_study(*, study: ReaderStudy) -> QuerySet[Read]:
    return Read.objects.filter(reader__study=study).select_related("reader__user", "case")


def prediction_for_case(*, study: ReaderStudy, case: StudyCase) -> Prediction | None:
    if study.model_version_id is None:
        return None
    return Prediction.objects.filter(video_id=case.video_id,
                                     model_version_id=study.model_version_id).first()
