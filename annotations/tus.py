"""Resumable uploads over the tus protocol 1.0.0 (https://tus.io/protocols/resumable-upload),
core plus the creation and termination extensions.

    POST   /api/uploads/        Upload-Length, Upload-Metadata: nodule, filename, scan_plane
                                -> 201 Location: /api/uploads/<id>/
    HEAD   /api/uploads/<id>/   -> Upload-Offset, Upload-Length (where to resume)
    PATCH  /api/uploads/<id>/   Upload-Offset, Content-Type: application/offset+octet-stream
                                -> 204 Upload-Offset; the last byte answers Video-Id too
    DELETE /api/uploads/<id>/   -> 204, the partial file is removed

The body is streamed to the private incoming folder a block at a time, so memory stays
bounded whatever the file size; a dropped connection keeps what arrived. Token or session
authentication, as the rest of the API; uploads go to nodules the user may add videos to.
"""

from __future__ import annotations

import base64
import binascii

from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from annotations import selectors, services
from annotations.conf import setting

TUS_VERSION = "1.0.0"
TUS_HEADERS = {"Tus-Resumable": TUS_VERSION}


def parse_metadata(header: str) -> dict[str, str]:
    """`Upload-Metadata`: comma-separated `key base64(value)` pairs."""
    out = {}
    for pair in filter(None, (p.strip() for p in header.split(","))):
        key, _, value = pair.partition(" ")
        try:
            out[key] = base64.b64decode(value).decode("utf-8") if value else ""
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise services.ValidationError(f"Upload-Metadata {key!r} is not base64") from exc
    return out


def _int_header(request, name: str) -> int | None:
    value = request.headers.get(name, "")
    return int(value) if value.isdigit() else None


def _tus(response: Response) -> Response:
    for key, value in TUS_HEADERS.items():
        response[key] = value
    response["Cache-Control"] = "no-store"
    return response


def _error(message: str, code: int) -> Response:
    return _tus(Response({"detail": message}, status=code))


class TusMixin:
    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if request.method != "OPTIONS" and request.headers.get("Tus-Resumable") != TUS_VERSION:
            from rest_framework.exceptions import APIException

            exc = APIException(f"Tus-Resumable: {TUS_VERSION} is required")
            exc.status_code = status.HTTP_412_PRECONDITION_FAILED
            raise exc

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        return _tus(response)


@extend_schema(tags=["uploads"])
class UploadCreateView(TusMixin, APIView):
    """Start a resumable upload of a video onto a nodule (tus creation extension)."""

    @extend_schema(
        summary="Discover the tus server's capabilities",
        responses={204: OpenApiResponse(description="Tus-Version, Tus-Extension, Tus-Max-Size")},
    )
    def options(self, request, *args, **kwargs):
        response = Response(status=status.HTTP_204_NO_CONTENT)
        response["Tus-Version"] = TUS_VERSION
        response["Tus-Extension"] = "creation,termination"
        response["Tus-Max-Size"] = str(setting("MAX_UPLOAD_BYTES"))
        return response

    @extend_schema(
        summary="Create an upload",
        request=None,
        parameters=[
            OpenApiParameter("Upload-Length", int, OpenApiParameter.HEADER, required=True),
            OpenApiParameter("Upload-Metadata", str, OpenApiParameter.HEADER, required=True,
                             description="tus metadata: `nodule` (id), `filename`, "
                                         "`scan_plane`, each value base64"),
            OpenApiParameter("Tus-Resumable", str, OpenApiParameter.HEADER, required=True),
        ],
        responses={201: OpenApiResponse(description="Location: the upload's URL"),
                   413: OpenApiResponse(description="larger than the configured limit")},
    )
    def post(self, request):
        length = _int_header(request, "Upload-Length")
        if length is None:
            return _error("Upload-Length is required (deferred length is not supported).", 400)
        try:
            meta = parse_metadata(request.headers.get("Upload-Metadata", ""))
        except services.ValidationError as exc:
            return _error(str(exc), 400)
        nodule_id = meta.get("nodule", "")
        if not nodule_id.isdigit():
            return _error("Upload-Metadata must name the nodule (its id).", 400)
        nodule = get_object_or_404(selectors.nodules_visible_to(user=request.user),
                                   pk=int(nodule_id))
        try:
            upload = services.upload_create(
                user=request.user, nodule=nodule, length=length,
                filename=meta.get("filename", ""), scan_plane=meta.get("scan_plane", "sweep"),
            )
        except services.UploadTooLarge as exc:
            return _error(str(exc), 413)
        except services.PermissionDenied as exc:
            return _error(str(exc), 403)
        except services.ValidationError as exc:
            return _error(str(exc), 400)
        response = Response({"id": str(upload.pk)}, status=status.HTTP_201_CREATED)
        response["Location"] = request.build_absolute_uri(f"{request.path}{upload.pk}/")
        response["Upload-Offset"] = "0"
        if upload.video_id:
            response["Video-Id"] = str(upload.video_id)
        return response


@extend_schema(tags=["uploads"])
class UploadDetailView(TusMixin, APIView):
    """Resume, continue or cancel one upload."""

    def _upload(self, request, upload_id):
        upload = get_object_or_404(selectors.uploads_visible_to(user=request.user), pk=upload_id)
        if upload.user_id != request.user.pk:
            raise Http404  # an upload belongs to the person who started it
        return upload

    @extend_schema(summary="Where to resume", request=None,
                   responses={200: OpenApiResponse(description="Upload-Offset, Upload-Length")})
    def head(self, request, upload_id):
        upload = self._upload(request, upload_id)
        response = Response(status=status.HTTP_200_OK)
        response["Upload-Offset"] = str(upload.offset)
        response["Upload-Length"] = str(upload.length)
        if upload.video_id:
            response["Video-Id"] = str(upload.video_id)
        return response

    @extend_schema(
        summary="Append bytes",
        request={"application/offset+octet-stream": OpenApiTypes.BINARY},
        parameters=[OpenApiParameter("Upload-Offset", int, OpenApiParameter.HEADER,
                                     required=True)],
        responses={204: OpenApiResponse(description="Upload-Offset; Video-Id when complete"),
                   409: OpenApiResponse(description="Upload-Offset does not match")},
    )
    def patch(self, request, upload_id):
        upload = self._upload(request, upload_id)
        if request.content_type != "application/offset+octet-stream":
            return _error("Content-Type must be application/offset+octet-stream.", 415)
        offset = _int_header(request, "Upload-Offset")
        if offset is None:
            return _error("Upload-Offset is required.", 400)
        try:
            upload = services.upload_append(
                upload=upload, offset=offset, stream=request._request,
                max_bytes=setting("UPLOAD_CHUNK_BYTES"),
            )
        except services.OffsetMismatch as exc:
            response = _error(f"Upload-Offset {offset} does not match: {exc}.", 409)
            response["Upload-Offset"] = str(exc.offset)
            return response
        except services.ValidationError as exc:
            return _error(str(exc), 400)
        response = Response(status=status.HTTP_204_NO_CONTENT)
        response["Upload-Offset"] = str(upload.offset)
        if upload.video_id:
            response["Video-Id"] = str(upload.video_id)
        return response

    @extend_schema(summary="Cancel the upload", request=None, responses={204: None})
    def delete(self, request, upload_id):
        upload = self._upload(request, upload_id)
        services.upload_cancel(upload=upload, user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

