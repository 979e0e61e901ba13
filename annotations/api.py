"""REST API. Querysets come from selectors, so another centre's objects answer 404 and never
appear in lists or counts; object actions beyond viewing ask the same permission layer."""

from __future__ import annotations

import uuid

from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException
from rest_framework.exceptions import PermissionDenied as DRFPermissionDenied
from rest_framework.exceptions import ValidationError as DRFValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from annotations import selectors, services
from annotations.conf import incoming_dir
from annotations.models import AuditAction, Centre
from annotations.permissions import Action, can
from annotations.serializers import (
    CentreSerializer,
    MembershipSerializer,
    NoduleSerializer,
    PathologySerializer,
    PatientSerializer,
    VideoSerializer,
    VideoUploadSerializer,
)


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"


def _service_call(fn, **kwargs):
    """Call a service, turning its exceptions into API answers."""
    try:
        return fn(**kwargs)
    except services.PermissionDenied as exc:
        raise DRFPermissionDenied(str(exc)) from exc
    except services.ValidationError as exc:
        raise DRFValidationError({"detail": str(exc)}) from exc


class AuditedRetrieveMixin:
    """Record every object view through the API, as the pages do."""

    def retrieve(self, request, *args, **kwargs):
        response = super().retrieve(request, *args, **kwargs)
        services.audit_record(
            user=request.user,
            action=AuditAction.VIEW,
            obj=self.get_object(),
            ip_address=request.META.get("REMOTE_ADDR"),
            detail={"via": "api"},
        )
        return response


class CentreViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = CentreSerializer

    def get_queryset(self):
        return selectors.centres_visible_to(user=self.request.user)


class PatientViewSet(AuditedRetrieveMixin, mixins.CreateModelMixin,
                     viewsets.ReadOnlyModelViewSet):
    """Pseudonymous patients; creating one needs the create right at its centre."""

    serializer_class = PatientSerializer

    def get_queryset(self):
        return selectors.patients_visible_to(user=self.request.user).select_related("centre")

    def perform_create(self, serializer):
        data = serializer.validated_data
        serializer.instance = _service_call(
            services.patient_create, user=self.request.user, centre=data["centre"],
            code=data["code"], sex=data.get("sex", "U"), age_at_exam=data.get("age_at_exam"),
        )


class NoduleViewSet(AuditedRetrieveMixin, mixins.CreateModelMixin,
                    viewsets.ReadOnlyModelViewSet):
    serializer_class = NoduleSerializer

    def get_queryset(self):
        return selectors.nodules_visible_to(user=self.request.user).select_related("pathology")

    def perform_create(self, serializer):
        data = serializer.validated_data
        serializer.instance = _service_call(
            services.nodule_create, user=self.request.user, patient=data["patient"],
            code=data["code"], location=data.get("location", "unknown"),
            max_diameter_mm=data.get("max_diameter_mm"),
        )


class PathologyViewSet(AuditedRetrieveMixin, mixins.CreateModelMixin, mixins.UpdateModelMixin,
                       viewsets.ReadOnlyModelViewSet):
    """One reference standard per nodule: POST creates or replaces it, PUT/PATCH edit it.
    The rules (Bethesda only with FNA, diagnosis agrees with outcome...) answer 400."""

    serializer_class = PathologySerializer

    def get_queryset(self):
        return selectors.pathology_visible_to(user=self.request.user)

    def _save(self, serializer, nodule):
        data = {**{f: getattr(serializer.instance, f, "") for f in
                   ("outcome", "source", "diagnosis", "bethesda")},
                "date": getattr(serializer.instance, "date", None),
                **serializer.validated_data}
        serializer.instance = _service_call(
            services.pathology_save, user=self.request.user, nodule=nodule,
            outcome=data["outcome"], source=data["source"], diagnosis=data.get("diagnosis", ""),
            bethesda=data.get("bethesda", ""), date=data.get("date"),
        )

    def perform_create(self, serializer):
        nodule = serializer.validated_data["nodule"]
        if not selectors.nodules_visible_to(user=self.request.user).filter(pk=nodule.pk).exists():
            raise Http404
        self._save(serializer, nodule)

    def perform_update(self, serializer):
        self._save(serializer, serializer.instance.nodule)


class VideoViewSet(AuditedRetrieveMixin, mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Videos with their processing status and, once ready, frame, chunk, thumbnail and clip
    URLs. POST uploads a whole file in one request; large files use /api/uploads/ (tus)."""

    serializer_class = VideoSerializer

    def get_queryset(self):
        return selectors.videos_visible_to(user=self.request.user)

    def get_parsers(self):
        if getattr(self, "action", None) == "create":
            return [MultiPartParser()]
        return super().get_parsers()

    @extend_schema(request={"multipart/form-data": VideoUploadSerializer},
                   responses={201: VideoSerializer})
    def create(self, request, *args, **kwargs):
        upload = VideoUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        data = upload.validated_data
        nodule = get_object_or_404(selectors.nodules_visible_to(user=request.user),
                                   pk=data["nodule"])
        if not can(request.user, Action.CREATE, nodule.patient.centre_id):
            raise DRFPermissionDenied("You may not add videos at this centre.")
        if refusal := services.size_refusal(data["file"].size):
            raise PayloadTooLarge(refusal)
        # The identified bytes go to the private incoming folder only.
        incoming = incoming_dir() / f"{uuid.uuid4()}.upload"
        with incoming.open("wb") as out:
            for block in data["file"].chunks():
                out.write(block)
        video = _service_call(
            services.video_register, nodule=nodule, incoming=incoming,
            filename=data["file"].name, scan_plane=data["scan_plane"], user=request.user,
        )
        return Response(VideoSerializer(video, context={"request": request}).data,
                        status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={202: VideoSerializer})
    @action(detail=True, methods=["post"])
    def reprocess(self, request, pk=None):
        """Process the kept upload again (after a fix)."""
        video = self.get_object()
        video = _service_call(services.video_reprocess, video=video, user=request.user)
        return Response(VideoSerializer(video, context={"request": request}).data,
                        status=status.HTTP_202_ACCEPTED)


class MembershipViewSet(
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    mixins.UpdateModelMixin,
    viewsets.ReadOnlyModelViewSet,
):
    """Memberships of visible centres; changing them needs the manage-members right."""

    serializer_class = MembershipSerializer
    permission_classes = [permissions.IsAuthenticated]

    def get_queryset(self):
        return selectors.memberships_visible_to(user=self.request.user)

    def _centre(self, centre: Centre) -> Centre:
        if not can(self.request.user, Action.VIEW, centre):
            raise Http404
        if not can(self.request.user, Action.MANAGE_MEMBERS, centre):
            raise DRFPermissionDenied("You may not change memberships at this centre.")
        return centre

    def perform_create(self, serializer):
        data = serializer.validated_data
        try:
            serializer.instance = services.membership_set(
                actor=self.request.user,
                centre=self._centre(data["centre"]),
                user=data["user"],
                role=data["role"],
            )
        except services.ValidationError as exc:
            raise DRFValidationError(str(exc)) from exc

    def perform_update(self, serializer):
        membership = serializer.instance
        serializer.instance = services.membership_set(
            actor=self.request.user,
            centre=self._centre(membership.centre),
            user=membership.user,
            role=serializer.validated_data.get("role", membership.role),
        )

    def perform_destroy(self, instance):
        self._centre(instance.centre)
        try:
            services.membership_remove(actor=self.request.user, membership=instance)
        except services.ValidationError as exc:
            raise DRFValidationError(str(exc)) from exc
