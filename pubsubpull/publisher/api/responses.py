"""JSON responses, errors and the method guard shared by pubsubpull's views."""

from __future__ import annotations

import functools
import json
from typing import Any

from django.db import transaction
from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt

from pubsubpull.exceptions import AccessDenied, ApiError
from pubsubpull.protocol import jsonbody
from pubsubpull.publisher.api import auth

JSON = "application/json"

#: The largest request body the API reads (subscription bodies are a few hundred bytes).
MAX_BODY = 1024 * 1024


def json_response(data: Any, status: int = 200, **headers: str) -> HttpResponse:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    try:
        encoded = body.encode()
    except UnicodeEncodeError:  # a lone surrogate got this far: send it escaped
        encoded = json.dumps(data, separators=(",", ":")).encode()
    return raw_json_response(encoded, status, **headers)


def json_body(request, example: str, *, max_bytes: int = MAX_BODY) -> Any:
    """The request's JSON body, or an :class:`ApiError` saying what is wrong with it.

    413 over ``max_bytes``; 400 for a body that is not UTF-8 JSON, is nested
    too deep, or holds a NUL or a lone surrogate (see :mod:`pubsubpull.protocol.jsonbody`).
    ``example`` shows the caller what a good body looks like.
    """
    length = request.headers.get("Content-Length") or "0"
    too_large = ApiError(413, "body_too_large", f"The body must be at most {max_bytes} bytes.")
    if not length.isascii() or not length.isdigit() or int(length) > max_bytes:
        raise too_large
    body = request.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise too_large
    try:
        return jsonbody.loads(body)
    except jsonbody.InvalidJSON as exc:
        raise ApiError(400, "invalid_json", f"{exc}. The body must be JSON: {example}") from None


def raw_json_response(body: str | bytes, status: int = 200, **headers: str) -> HttpResponse:
    """A response from JSON already rendered (by PostgreSQL, say), as text or UTF-8."""
    if isinstance(body, str):
        body = body.encode()
    response = HttpResponse(body, status=status, content_type=JSON)
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


def error_response(status: int, code: str, detail: str, **extra: Any) -> HttpResponse:
    """``{"status": 404, "error": "unknown_model", "detail": "..."}``"""
    response = json_response({"status": status, "error": code, "detail": detail, **extra}, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="pubsubpull"'
    return response


def endpoint(*methods: str, public: bool = False):
    """Make a view a pubsubpull endpoint answering only ``methods``.

    Any other verb (HEAD, POST, PATCH, OPTIONS, ...) is 405 with ``Allow``.
    Authentication errors and :class:`ApiError` become JSON errors. The view
    runs outside ATOMIC_REQUESTS: its reads are single statements, and a long
    poll must not hold a transaction open. CSRF is checked by
    :func:`auth.authenticate` for session callers only. A ``public`` endpoint
    also answers callers without credentials (as anonymous).
    """
    allowed = ", ".join(methods)

    def decorate(view):
        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            if request.method not in methods:
                response = error_response(
                    405,
                    "method_not_allowed",
                    f"{request.method} is not allowed here; use {allowed}.",
                )
                response.headers["Allow"] = allowed
                return response
            try:
                try:
                    caller = auth.authenticate(request)
                except auth.NotAuthenticated:
                    if not public or auth.has_credentials(request):
                        raise
                    caller = auth.Caller()
                return view(request, caller, *args, **kwargs)
            except auth.NotAuthenticated as exc:
                return error_response(401, "not_authenticated", str(exc))
            except AccessDenied as exc:
                return error_response(403, "permission_denied", str(exc))
            except ApiError as exc:
                return error_response(exc.status, exc.code, exc.detail, **exc.extra)

        return csrf_exempt(transaction.non_atomic_requests(wrapper))

    return decorate
