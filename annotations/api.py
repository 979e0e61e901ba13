"""REST API. Querysets come from selectors, so another centre's objects answer 404 and never
appear in lists or counts; object actions beyond viewing ask the same permission layer."""

from __future__ import annotations

from django.http import Http404
from rest_framework import mixins, permissions, viewsets
from rest_framework.exceptions import PermissionDenied as DRFPermissionDenied
from rest_framework.exceptions import ValidationError as DRFValidationError

from annotations import selectors, services
from annotations.models import AuditAction, Centre
from annotations.permissions import Action, can
from annotations.serializers import (
    CentreSerializer,
    MembershipSerializer,
    NoduleSerializer,
    PathologySerializer,
    PatientSerializer,
    VideoSerializer,
)


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


class PatientViewSet(AuditedRetrieveMixin, viewsets.ReadOnlyModelViewSet):
    serializer_class = PatientSerializer

    def get_queryset(self):
        return selectors.patients_visible_to(user=self.request.user).select_related("centre")


class NoduleViewSet(AuditedRetrieveMixin, viewsets.ReadOnlyModelViewSet):
    serializer_class = NoduleSerializer

    def get_queryset(self):
        return selectors.nodules_visible_to(user=self.request.user)


class PathologyViewSet(AuditedRetrieveMixin, viewsets.ReadOnlyModelViewSet):
    serializer_class = PathologySerializer

    def get_queryset(self):
        return selectors.pathology_visible_to(user=self.request.user)


class VideoViewSet(AuditedRetrieveMixin, viewsets.ReadOnlyModelViewSet):
    serializer_class = VideoSerializer

    def get_queryset(self):
        return selectors.videos_visible_to(user=self.request.user)


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
