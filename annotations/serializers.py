"""API shapes. Serializers validate shape; business rules live in services."""

from django.urls import reverse
from rest_framework import serializers

from annotations import labels
from annotations.models import (
    Centre,
    Membership,
    Nodule,
    Pathology,
    Patient,
    ScanPlane,
    Video,
)


class CentreSerializer(serializers.ModelSerializer):
    class Meta:
        model = Centre
        fields = ["id", "name", "code"]


class MembershipSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)
    centre_code = serializers.CharField(source="centre.code", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "user", "username", "centre", "centre_code", "role", "created_at"]


class PatientSerializer(serializers.ModelSerializer):
    centre_code = serializers.CharField(source="centre.code", read_only=True)

    class Meta:
        model = Patient
        fields = ["id", "centre", "centre_code", "code", "sex", "age_at_exam", "created_at"]
        read_only_fields = ["created_at"]
        validators = []  # uniqueness is a business rule: services.patient_create says it


class NoduleSerializer(serializers.ModelSerializer):
    label = serializers.SerializerMethodField()

    class Meta:
        model = Nodule
        fields = ["id", "patient", "code", "location", "max_diameter_mm", "label", "created_at"]
        read_only_fields = ["created_at"]
        validators = []

    def get_label(self, nodule) -> str:
        """benign, malignant, excluded (indeterminate) or missing, by the labelling rule."""
        return labels.label_of(getattr(nodule, "pathology", None))


class PathologySerializer(serializers.ModelSerializer):
    training_label = serializers.SerializerMethodField()

    class Meta:
        model = Pathology
        fields = ["id", "nodule", "outcome", "diagnosis", "source", "bethesda", "date",
                  "training_label"]
        validators = []

    def get_training_label(self, pathology) -> int | None:
        """1 malignant, 0 benign, null when excluded from training."""
        return labels.training_label(pathology)


class VideoSerializer(serializers.ModelSerializer):
    region = serializers.SerializerMethodField()
    frame_url_template = serializers.SerializerMethodField()
    chunk_url_template = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()
    clip_url = serializers.SerializerMethodField()

    class Meta:
        model = Video
        fields = [
            "id", "nodule", "scan_plane", "original_filename", "sha256", "size_bytes",
            "container", "codec", "fps", "frame_count", "width", "height", "duration_s",
            "status", "failure_reason", "duplicate_of", "region", "region_source",
            "frames_version", "frames_chunk_size", "frame_url_template", "chunk_url_template",
            "thumbnail_url", "clip_url", "clip_shape", "uploaded_at", "processed_at",
        ]
        read_only_fields = fields

    def get_region(self, video) -> list[int] | None:
        """x, y, w, h of the ultrasound image in the frame."""
        return list(video.region) if video.region else None

    def _url(self, name: str, video, **kw) -> str | None:
        if not video.frames_version:
            return None
        path = reverse(name, kwargs={"video_id": video.pk, "version": video.frames_version,
                                     **kw})
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request else path

    def get_frame_url_template(self, video) -> str | None:
        """Replace {index} with a frame index (0-based) to get its JPEG."""
        url = self._url("video-frame", video, index=0)
        return url[: -len("0.jpg")] + "{index}.jpg" if url else None

    def get_chunk_url_template(self, video) -> str | None:
        """Replace {chunk} with a chunk index; see annotations/framestore.py for the format."""
        url = self._url("video-chunk", video, chunk=0)
        return url[: -len("0")] + "{chunk}" if url else None

    def get_thumbnail_url(self, video) -> str | None:
        return self._url("video-thumbnail", video)

    def get_clip_url(self, video) -> str | None:
        return self._url("video-clip", video)


class VideoUploadSerializer(serializers.Serializer):
    """A whole file in one multipart request (scripts, small files); browsers and large
    files use the resumable /api/uploads/ endpoint."""

    nodule = serializers.IntegerField()
    file = serializers.FileField(allow_empty_file=True)  # refused later, with the reason
    scan_plane = serializers.ChoiceField(choices=ScanPlane.choices, default=ScanPlane.SWEEP)
