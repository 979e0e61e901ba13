"""API shapes. Serializers validate shape; business rules live in services."""

from django.urls import reverse
from rest_framework import serializers

from webapp.training import hyperparameters as hp
from webapp.training.models import DatasetSnapshot, ModelVersion, Prediction, TrainingRun
from webapp.training.selectors import headline, run_summary


class SnapshotSerializer(serializers.ModelSerializer):
    class Meta:
        model = DatasetSnapshot
        fields = ["id", "name", "created_at", "centres", "external_centres", "eligibility",
                  "seed", "fractions", "only_accepted", "counts", "centre_counts", "excluded"]
        read_only_fields = fields


class SnapshotCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    centres = serializers.ListField(child=serializers.SlugField(max_length=16), min_length=1,
                                    help_text="Development centre codes.")
    external_centres = serializers.ListField(child=serializers.SlugField(max_length=16),
                                             required=False, default=list)
    seed = serializers.IntegerField(min_value=0, max_value=2**31 - 1, default=0)
    only_accepted = serializers.BooleanField(
        default=False, help_text="Only cases with an accepted consensus annotation.")


class RunSerializer(serializers.ModelSerializer):
    state = serializers.SerializerMethodField()

    class Meta:
        model = TrainingRun
        fields = ["id", "snapshot", "arch", "preset", "hyperparameters", "gpus", "status",
                  "created_at", "state"]
        read_only_fields = fields

    def get_state(self, run) -> dict:
        return run_summary(run)


class RunCreateSerializer(serializers.Serializer):
    snapshot = serializers.IntegerField()
    arch = serializers.CharField(max_length=32)
    preset = serializers.CharField(max_length=16, default="small")
    hyperparameters = serializers.DictField(
        required=False, default=dict,
        help_text="Overrides of the preset: " + ", ".join(p.name for p in hp.PARAMETERS))
    gpus = serializers.IntegerField(default=1)


class ModelVersionSerializer(serializers.ModelSerializer):
    auroc = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = ["id", "number", "run", "snapshot", "arch", "preset", "threshold", "state",
                  "checksum", "weights_format", "code_version", "created_at", "promoted_at",
                  "retired_at", "auroc", "metrics"]
        read_only_fields = fields

    def get_auroc(self, version) -> dict:
        return headline(version)


class PredictionSerializer(serializers.ModelSerializer):
    model_version_number = serializers.IntegerField(source="model_version.number",
                                                    read_only=True)
    heatmaps_url = serializers.SerializerMethodField()

    class Meta:
        model = Prediction
        fields = ["id", "video", "model_version", "model_version_number", "probability",
                  "predicted_label", "threshold", "frames_version", "clip_shape", "region",
                  "frame_indices", "crop_box", "boxes_annotation_id",
                  "boxes_annotation_version", "attention_maps", "heatmaps_bytes",
                  "heatmaps_url", "created_at"]
        read_only_fields = fields

    def get_heatmaps_url(self, prediction) -> str:
        return reverse("training-prediction-heatmaps", args=[prediction.pk])
