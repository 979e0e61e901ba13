"""API shapes. Serializers validate shape; business rules live in services."""

from rest_framework import serializers

from annotations.models import Centre, Membership, Nodule, Pathology, Patient, Video


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


class NoduleSerializer(serializers.ModelSerializer):
    class Meta:
        model = Nodule
        fields = ["id", "patient", "code", "location", "max_diameter_mm", "created_at"]


class PathologySerializer(serializers.ModelSerializer):
    class Meta:
        model = Pathology
        fields = ["id", "nodule", "outcome", "diagnosis", "source", "bethesda", "date"]


class VideoSerializer(serializers.ModelSerializer):
    class Meta:
        model = Video
        fields = [
            "id", "nodule", "scan_plane", "original_filename", "sha256", "size_bytes",
            "container", "codec", "fps", "frame_count", "width", "height", "duration_s",
            "status", "failure_reason", "uploaded_at", "processed_at",
        ]
        read_only_fields = fields
