"""JSON API of the annotation workspace. Every endpoint starts from a selector
(`videos_visible_to`, `annotations_visible_to`), so another centre's videos and annotations
answer 404; writes go through annotations.workspace.

GET  /api/videos/<id>/annotations/            annotations of the video the user may read
POST /api/videos/<id>/annotations/            start (or fetch) the user's own annotation;
                                              {"consensus": true, "source": <id>} for reviewers
GET  /api/annotations/<id>/                   the document, state, version, comments, rights
PUT  /api/annotations/<id>/                   {"version": n, "data": {...}} -> 200 | 409
POST /api/annotations/<id>/transition/        {"action": submit|accept|request_changes|reopen,
                                               "comment": "...", "frame": n, "reason": "..."}
POST /api/annotations/<id>/comments/<cid>/    {"resolved": true|false}: a comment addressed
GET  /api/annotations/<id>/export.json        the document (docs/annotation-format.md)
GET  /api/annotations/<id>/export.xml         CVAT for video 1.1
POST /api/annotations/<id>/import/            ?version=n, body: the JSON document or CVAT XML
"""

from __future__ import annotations

from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view, parser_classes
from rest_framework.parsers import BaseParser, JSONParser
from rest_framework.response import Response

from annotations import annotation_format as fmt
from annotations import services, workspace
from annotations.models import Annotation, AuditAction
from annotations.selectors import annotations_visible_to, videos_visible_to


class XMLTextParser(BaseParser):
    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        return stream.read().decode("utf-8", errors="replace")


class AnnotationSerializer(serializers.Serializer):
    """What GET, PUT and transitions answer (the document is docs/annotation-format.md)."""

    id = serializers.IntegerField()
    video = serializers.IntegerField()
    annotator = serializers.CharField(allow_null=True)
    is_consensus = serializers.BooleanField()
    state = serializers.ChoiceField(choices=["draft", "submitted", "changes_requested",
                                             "accepted"])
    state_label = serializers.CharField()
    version = serializers.IntegerField()
    data = serializers.JSONField()
    tirads_result = serializers.JSONField(allow_null=True)
    updated_at = serializers.DateTimeField()
    updated_by = serializers.CharField(allow_null=True)
    comments = serializers.JSONField()
    permissions = serializers.JSONField()


class SaveSerializer(serializers.Serializer):
    version = serializers.IntegerField(help_text="the version this edit was based on")
    data = serializers.JSONField(help_text="the annotation document")


class ConflictSerializer(serializers.Serializer):
    detail = serializers.CharField()
    current_version = serializers.IntegerField()
    data = serializers.JSONField()
    state = serializers.CharField()


class StartSerializer(serializers.Serializer):
    consensus = serializers.BooleanField(required=False, help_text="reviewers: the consensus")
    source = serializers.IntegerField(required=False, help_text="copy this annotation")


class TransitionSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=["submit", "accept", "request_changes", "reopen"])
    comment = serializers.CharField(required=False, help_text="request_changes: the comment")
    frame = serializers.IntegerField(required=False, help_text="the frame it is pinned to")
    reason = serializers.CharField(required=False, help_text="reopen: why (audited)")


def annotation_json(annotation: Annotation, user) -> dict:
    video = annotation.video
    return {
        "id": annotation.pk,
        "video": video.pk,
        "annotator": annotation.annotator.get_username() if annotation.annotator else None,
        "is_consensus": annotation.is_consensus,
        "state": annotation.state,
        "state_label": annotation.get_state_display(),
        "version": annotation.version,
        "data": annotation.data or fmt.empty_document(),
        "tirads_result": fmt.tirads_result(annotation.data or {},
                                           video.nodule.max_diameter_mm),
        "updated_at": annotation.updated_at.isoformat(),
        "updated_by": annotation.updated_by.get_username() if annotation.updated_by else None,
        "comments": [
            {"id": c.pk, "frame": c.frame, "text": c.text, "created_at": c.created_at.isoformat(),
             "author": c.author.get_username() if c.author else None, "resolved": c.resolved}
            for c in annotation.comments.select_related("author")
        ],
        "permissions": workspace.permissions_for(user, annotation),
    }


def _error(exc: Exception, code: int) -> Response:
    return Response({"detail": str(exc)}, status=code)


def _visible_annotation(request, annotation_id: int) -> Annotation:
    return get_object_or_404(
        annotations_visible_to(user=request.user).select_related(
            "video__nodule__patient__centre", "updated_by"),
        pk=annotation_id,
    )


def _save(request, annotation: Annotation, data, version, via: str) -> Response:
    try:
        version = int(version)
    except (TypeError, ValueError):
        return Response({"detail": "version (an integer) is required"}, status=400)
    try:
        saved = workspace.annotation_save(annotation=annotation, data=data, version=version,
                                          user=request.user, via=via)
    except workspace.VersionConflict as exc:
        return Response({"detail": str(exc), "current_version": exc.current,
                         "data": exc.data, "state": exc.state}, status=status.HTTP_409_CONFLICT)
    except workspace.Locked as exc:
        return Response({"detail": str(exc), "locked": True}, status=status.HTTP_403_FORBIDDEN)
    except services.PermissionDenied as exc:
        return _error(exc, 403)
    except services.ValidationError as exc:
        return _error(exc, 400)
    return Response(annotation_json(saved, request.user))


@extend_schema(methods=["GET"], responses={200: OpenApiTypes.OBJECT})
@extend_schema(methods=["POST"], request=StartSerializer,
               responses={200: AnnotationSerializer, 201: AnnotationSerializer})
@api_view(["GET", "POST"])
def video_annotations(request, video_id: int):
    video = get_object_or_404(videos_visible_to(user=request.user).select_related(
        "nodule__patient__centre"), pk=video_id)
    if request.method == "GET":
        rows = annotations_visible_to(user=request.user).filter(video=video)
        return Response({"results": [
            {"id": a.pk, "annotator": a.annotator.get_username() if a.annotator else None,
             "is_consensus": a.is_consensus, "state": a.state, "version": a.version}
            for a in rows]})
    try:
        if request.data.get("consensus"):
            source = None
            if request.data.get("source"):
                source = get_object_or_404(annotations_visible_to(user=request.user),
                                           pk=request.data["source"], video=video)
            annotation = workspace.annotation_consensus_start(video=video, user=request.user,
                                                              source=source)
            created = True
        else:
            annotation, created = workspace.annotation_start(video=video, user=request.user)
    except services.PermissionDenied as exc:
        return _error(exc, 403)
    except services.ValidationError as exc:
        return _error(exc, 400)
    return Response(annotation_json(annotation, request.user),
                    status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@extend_schema(methods=["GET"], responses={200: AnnotationSerializer})
@extend_schema(methods=["PUT"], request=SaveSerializer,
               responses={200: AnnotationSerializer, 409: ConflictSerializer})
@api_view(["GET", "PUT"])
def annotation_detail(request, annotation_id: int):
    annotation = _visible_annotation(request, annotation_id)
    if request.method == "GET":
        services.audit_record(user=request.user, action=AuditAction.VIEW, obj=annotation,
                              ip_address=request.META.get("REMOTE_ADDR"), detail={"via": "api"})
        return Response(annotation_json(annotation, request.user))
    if not isinstance(request.data, dict):
        return Response({"detail": "a JSON object is expected"}, status=400)
    return _save(request, annotation, request.data.get("data"), request.data.get("version"),
                 via=str(request.data.get("via", "autosave"))[:20])


TRANSITIONS = {
    "submit": lambda a, u, d: workspace.annotation_submit(annotation=a, user=u),
    "accept": lambda a, u, d: workspace.annotation_accept(annotation=a, user=u),
    "request_changes": lambda a, u, d: workspace.annotation_request_changes(
        annotation=a, user=u, text=str(d.get("comment", "")), frame=int(d.get("frame", 0))),
    "reopen": lambda a, u, d: workspace.annotation_reopen(
        annotation=a, user=u, reason=str(d.get("reason", ""))),
}


@extend_schema(request=TransitionSerializer, responses={200: AnnotationSerializer})
@api_view(["POST"])
def annotation_transition(request, annotation_id: int):
    annotation = _visible_annotation(request, annotation_id)
    action = request.data.get("action")
    if action not in TRANSITIONS:
        return Response({"detail": f"action is one of {', '.join(TRANSITIONS)}"}, status=400)
    try:
        annotation = TRANSITIONS[action](annotation, request.user, request.data)
    except services.PermissionDenied as exc:
        return _error(exc, 403)
    except (services.ValidationError, ValueError) as exc:
        return _error(exc, 400)
    return Response(annotation_json(annotation, request.user))


class CommentResolvedSerializer(serializers.Serializer):
    resolved = serializers.BooleanField(help_text="true: the comment is addressed")


@extend_schema(request=CommentResolvedSerializer, responses={200: AnnotationSerializer})
@api_view(["POST"])
def annotation_comment(request, annotation_id: int, comment_id: int):
    annotation = _visible_annotation(request, annotation_id)
    comment = get_object_or_404(annotation.comments, pk=comment_id)
    body = CommentResolvedSerializer(data=request.data)
    if not body.is_valid():
        return Response(body.errors, status=400)
    try:
        workspace.comment_set_resolved(comment=comment, user=request.user,
                                       resolved=body.validated_data["resolved"])
    except services.PermissionDenied as exc:
        return _error(exc, 403)
    return Response(annotation_json(annotation, request.user))


def _export_name(annotation: Annotation, suffix: str) -> str:
    who = "consensus" if annotation.is_consensus else annotation.annotator.get_username()
    return f"video-{annotation.video_id}-{who}-v{annotation.version}.{suffix}"


@extend_schema(responses={200: OpenApiTypes.BINARY})
@api_view(["GET"])
def annotation_export(request, annotation_id: int, kind: str):
    annotation = _visible_annotation(request, annotation_id)
    video = annotation.video
    if kind == "json":
        body = {**(annotation.data or fmt.empty_document()), "video": {
            "id": video.pk, "frame_count": video.frame_count, "width": video.width,
            "height": video.height, "fps": video.fps},
            "state": annotation.state, "version": annotation.version,
            "tirads_result": fmt.tirads_result(annotation.data or {},
                                               video.nodule.max_diameter_mm)}
        response = Response(body)
    elif kind == "xml":
        xml = fmt.to_cvat(annotation.data or fmt.empty_document(),
                          n_frames=video.frame_count or 0, width=video.width or 0,
                          height=video.height or 0, name=f"video-{video.pk}")
        response = HttpResponse(xml, content_type="application/xml")
    else:
        raise Http404
    response["Content-Disposition"] = f'attachment; filename="{_export_name(annotation, kind)}"'
    services.audit_record(user=request.user, action=AuditAction.EXPORT, obj=annotation,
                          ip_address=request.META.get("REMOTE_ADDR"), detail={"format": kind})
    return response


@extend_schema(request={"application/json": OpenApiTypes.OBJECT,
                        "application/xml": OpenApiTypes.STR},
               parameters=[OpenApiParameter("version", int, required=True)],
               responses={200: AnnotationSerializer, 409: ConflictSerializer})
@api_view(["POST"])
@parser_classes([JSONParser, XMLTextParser])
def annotation_import(request, annotation_id: int):
    """Replace the content with an uploaded document: the JSON format, or CVAT for video 1.1
    XML (its box and point tracks; the TI-RADS form and box/polygon marks are kept)."""
    annotation = _visible_annotation(request, annotation_id)
    if isinstance(request.data, dict):
        data = request.data.get("data", request.data)
        via = "import-json"
    else:
        try:
            data = fmt.from_cvat(str(request.data), base=annotation.data,
                                 n_frames=annotation.video.frame_count)
        except ValueError as exc:
            return _error(exc, 400)
        via = "import-cvat"
    return _save(request, annotation, data, request.query_params.get("version"), via=via)
