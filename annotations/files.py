"""Permission-checked file responses. Media never has a public URL: a view first finds the
object through a selector (404 for other centres), records the access, then calls this."""

from __future__ import annotations

import mimetypes

from django.conf import settings
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpResponse
from django.utils.http import content_disposition_header


def protected_file_response(
    storage_name: str,
    *,
    download_name: str | None = None,
    content_type: str | None = None,
    max_age: int = 0,
) -> HttpResponse:
    """Serve a stored file. With MEDIA_X_ACCEL_PREFIX set (nginx), answer with an
    X-Accel-Redirect header so nginx streams the bytes; otherwise stream from storage."""
    if not storage_name or not default_storage.exists(storage_name):
        raise Http404("File not found")
    content_type = content_type or mimetypes.guess_type(download_name or storage_name)[0]
    content_type = content_type or "application/octet-stream"
    if settings.MEDIA_X_ACCEL_PREFIX:
        response = HttpResponse(content_type=content_type)
        prefix = settings.MEDIA_X_ACCEL_PREFIX.rstrip("/")
        response["X-Accel-Redirect"] = f"{prefix}/{storage_name}"
    else:
        response = FileResponse(default_storage.open(storage_name, "rb"), content_type=content_type)
    if download_name:
        response["Content-Disposition"] = content_disposition_header(True, download_name)
    # Private: shared caches (proxies) must never keep patient images.
    response["Cache-Control"] = f"private, max-age={max_age}" if max_age else "private, no-cache"
    return response


def login_or_token_required(view):
    """Like `login_required`, but an API client may also authenticate with its token
    (`Authorization: Token <key>`), so the frame URLs the API hands out work for it too."""
    from functools import wraps

    from django.contrib.auth.views import redirect_to_login
    from rest_framework.authentication import TokenAuthentication
    from rest_framework.exceptions import AuthenticationFailed

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not request.user.is_authenticated and request.headers.get("Authorization"):
            try:
                result = TokenAuthentication().authenticate(request)
            except AuthenticationFailed:
                result = None
            if result is None:
                return HttpResponse("Invalid token.", status=401,
                                    headers={"WWW-Authenticate": "Token"})
            request.user = result[0]
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)

    return wrapped
