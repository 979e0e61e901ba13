"""The readers' JSON API (under /review/api/): the same selectors and services as the pages,
so the same rules: a reader sees only the studies they read in, reads in order, and never
sees pathology (no truth, no patient or nodule codes; cases are numbered)."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from webapp.review import selectors, services
from webapp.review.models import Design, Modality, Read


class ReadSubmitSerializer(serializers.Serializer):
    likelihood = serializers.IntegerField(min_value=0, max_value=100)
    # benign | malignant, checked by the service (a ChoiceField would add a second "CallEnum"
    # to the OpenAPI schema, which drf-spectacular warns about).
    call = serializers.CharField(max_length=16)
    tirads_level = serializers.IntegerField(min_value=1, max_value=5, required=False,
                                            allow_null=True)
    tirads_features = serializers.DictField(required=False, allow_null=True)


def _reader(request, study_id: int):
    study = get_object_or_404(selectors.studies_visible_to(user=request.user), pk=study_id)
    reader = selectors.study_reader_for(user=request.user, study=study)
    if reader is None:
        raise NotFound()
    return study, reader


@extend_schema(responses=OpenApiTypes.OBJECT)
@api_view(["GET"])
def study_list(request):
    rows = []
    for reader in request.user.reader_studies.select_related("study"):
        study = reader.study
        rows.append({"id": study.pk, "name": study.name, "design": study.design,
                     "washout_days": study.washout_days, "status": study.status,
                     "progress": selectors.reader_progress(reader=reader)})
    return Response(rows)


def _state(study, reader, read: Read | None) -> dict:
    progress = selectors.reader_progress(reader=reader)
    if read is None:
        return {"finished": True, "progress": progress}
    video = read.case.video
    number = (read.order // 2 + 1 if study.design == Design.SEQUENTIAL
              else reader.reads.filter(modality=read.modality, order__lte=read.order).count())
    chunk0 = reverse("review-case-chunk", kwargs={"study_id": study.pk, "read_id": read.pk,
                                                  "chunk": 0})
    state = {
        "finished": False, "progress": progress, "read_id": read.pk, "case_number": number,
        "n_cases": study.cases.count(), "modality": read.modality,
        "started_at": read.started_at,
        "frames": {"frame_count": video.frame_count, "fps": video.fps,
                   "chunk_size": video.frames_chunk_size, "chunk_url_base": chunk0[:-1]},
    }
    if read.modality == Modality.AIDED:
        state["model"] = {
            "version": study.model_version.number if study.model_version else None,
            "probability": read.model_probability}
    return state


@extend_schema(responses=OpenApiTypes.OBJECT)
@api_view(["GET"])
def reading_state(request, study_id: int):
    """The reader's current read, started if it was not (a reload resumes it)."""
    study, reader = _reader(request, study_id)
    try:
        read = services.read_start_next(reader=reader)
    except services.WashoutNotOver as exc:
        return Response({"detail": str(exc), "opens_at": exc.opens_at},
                        status=status.HTTP_409_CONFLICT)
    return Response(_state(study, reader, read))


@extend_schema(request=ReadSubmitSerializer, responses=OpenApiTypes.OBJECT)
@api_view(["POST"])
def read_submit(request, study_id: int, read_id: int):
    study, reader = _reader(request, study_id)
    read = get_object_or_404(Read, pk=read_id, reader=reader)
    data = ReadSubmitSerializer(data=request.data)
    data.is_valid(raise_exception=True)
    try:
        services.read_submit(read=read, **data.validated_data)
    except services.ValidationError as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    return Response({"progress": selectors.reader_progress(reader=reader)})
