"""REST API of the training app (under /api/training/). Querysets come from selectors: users
who may neither train nor promote get 404 everywhere; the services decide the actions."""

from __future__ import annotations

from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.exceptions import PermissionDenied as DRFPermissionDenied
from rest_framework.exceptions import ValidationError as DRFValidationError
from rest_framework.response import Response

from annotations.models import Centre
from webapp.training import hyperparameters as hp
from webapp.training import selectors, services
from webapp.training.serializers import (
    ModelVersionSerializer,
    PredictionSerializer,
    RunCreateSerializer,
    RunSerializer,
    SnapshotCreateSerializer,
    SnapshotSerializer,
)


class TrainingViewMixin:
    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if not selectors.can_view_training(request.user):
            raise NotFound()

    def call(self, service, **kwargs):
        try:
            return service(user=self.request.user, **kwargs)
        except services.PermissionDenied as exc:
            raise DRFPermissionDenied(str(exc)) from exc
        except hp.ConfigError as exc:
            raise DRFValidationError(exc.errors) from exc
        except services.ValidationError as exc:
            raise DRFValidationError({"detail": str(exc)}) from exc


class SnapshotViewSet(TrainingViewMixin, mixins.CreateModelMixin,
                      viewsets.ReadOnlyModelViewSet):
    def get_queryset(self):
        return selectors.snapshots_visible_to(user=self.request.user)

    def get_serializer_class(self):
        return SnapshotCreateSerializer if self.action == "create" else SnapshotSerializer

    def create(self, request, *args, **kwargs):
        data = SnapshotCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        codes = set(v["centres"]) | set(v["external_centres"])
        centres = {c.code: c for c in Centre.objects.filter(code__in=codes)}
        if unknown := codes - set(centres):
            raise DRFValidationError(
                {"centres": f"Unknown centre(s): {', '.join(sorted(unknown))}"})
        snapshot = self.call(services.snapshot_freeze, name=v["name"],
                             centres=[centres[c] for c in v["centres"]],
                             external_centres=[centres[c] for c in v["external_centres"]],
                             seed=v["seed"], only_accepted=v["only_accepted"])
        return Response(SnapshotSerializer(snapshot).data, status=status.HTTP_201_CREATED)


class RunViewSet(TrainingViewMixin, mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    def get_queryset(self):
        return selectors.runs_visible_to(user=self.request.user)

    def list(self, request, *args, **kwargs):
        services.runs_reap_stale()
        return super().list(request, *args, **kwargs)

    def retrieve(self, request, *args, **kwargs):
        services.runs_reap_stale()
        return super().retrieve(request, *args, **kwargs)

    def get_serializer_class(self):
        return RunCreateSerializer if self.action == "create" else RunSerializer

    def create(self, request, *args, **kwargs):
        data = RunCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        snapshot = selectors.snapshots_visible_to(user=request.user).filter(
            pk=v["snapshot"]).first()
        if snapshot is None:
            raise DRFValidationError({"snapshot": "No such snapshot."})
        run = self.call(services.run_create, snapshot=snapshot, arch=v["arch"],
                        preset=v["preset"], hyperparameters=v["hyperparameters"],
                        gpus=v["gpus"])
        return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)

    @action(detail=True, methods=["get"])
    def state(self, request, pk=None):
        """The run, every curve point and the log tail (what the live page draws)."""
        services.runs_reap_stale()
        return Response(selectors.run_state(self.get_object()))

    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        run = self.call(services.run_cancel, run=self.get_object())
        return Response(RunSerializer(run).data)

    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        run = self.call(services.run_resume, run=self.get_object())
        return Response(RunSerializer(run).data)


class ModelVersionViewSet(TrainingViewMixin, viewsets.ReadOnlyModelViewSet):
    serializer_class = ModelVersionSerializer

    def get_queryset(self):
        return selectors.model_versions_visible_to(user=self.request.user)

    @action(detail=True, methods=["post"])
    def promote(self, request, pk=None):
        """Put this version in production (a rollback when it was retired); audited."""
        version = self.call(services.model_promote, version=self.get_object(),
                            ip_address=request.META.get("REMOTE_ADDR"))
        return Response(ModelVersionSerializer(version).data)


class PredictionViewSet(viewsets.ReadOnlyModelViewSet):
    """Predictions of the videos the user may see (any centre role); `?video=ID` filters."""

    serializer_class = PredictionSerializer

    def get_queryset(self):
        predictions = selectors.predictions_visible_to(user=self.request.user)
        video = self.request.query_params.get("video", "")
        if video.isdigit():
            predictions = predictions.filter(video_id=int(video))
        return predictions
