"""Attribute the changes made while handling a web request to that request.

Add ``"pubsubpull.middleware.RequestMiddleware"`` to ``MIDDLEWARE`` (first, so
that it times the whole request and sees writes made by other middleware).
The first change a request makes writes its ``pubsubpull.models.Request`` row;
a request that changes nothing writes nothing. Status and duration are filled
in once the response is ready, outside the request's transaction.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from datetime import timedelta
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest

from . import conf
from .context import _Root, begin, end, finish


class RequestMiddleware:
    """Tie every change made while handling a request to a ``Request`` row.

    Works under WSGI and ASGI, with ``ATOMIC_REQUESTS`` on or off, on every
    database alias. The user is read when each change happens, so views that
    set ``request.user`` themselves (DRF authentication) are attributed
    correctly. Settings (in ``PUBSUBPULL``): ``REQUEST_ID_HEADER``,
    ``TRUSTED_PROXY_HEADER``, ``TRUSTED_PROXY_COUNT``.

    The duration is the time until the response object is ready; the body of
    a streaming response is sent later, and changes made while streaming it
    are not attributed.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if self.async_mode:
            return self.__acall__(request)
        root = _request_root(request)
        token = begin(root)
        status = 500  # unless a response comes back
        try:
            response = self.get_response(request)
            status = response.status_code
            return response
        finally:
            end(token)
            if root.written:
                finish(root, status=status, duration=_elapsed(root))

    async def __acall__(self, request: HttpRequest):
        root = _request_root(request)
        token = begin(root)
        status = 500
        try:
            response = await self.get_response(request)
            status = response.status_code
            return response
        finally:
            end(token)
            if root.written:
                await sync_to_async(finish)(root, status=status, duration=_elapsed(root))


def _elapsed(root: _Root) -> timedelta:
    return timedelta(seconds=time.monotonic() - root.started)


def _request_root(request: HttpRequest) -> _Root:
    # Only references: the columns are read at the request's first write,
    # so a request that writes nothing pays for none of this.
    return _Root(
        fields=functools.partial(request_fields, request),
        user=functools.partial(_user_pk, request),
    )


def request_fields(request: HttpRequest) -> dict[str, Any]:
    """The ``pubsubpull_request`` columns that describe ``request``."""
    request_id = ""
    header = conf.get("REQUEST_ID_HEADER")
    if header:
        # The column holds 200 characters; a longer value must not make the
        # audited write fail.
        request_id = request.headers.get(header, "")[:200]
    return {
        "method": (request.method or "")[:16],
        "path": request.path,
        "query_string": request.META.get("QUERY_STRING", ""),
        "remote_addr": remote_addr(request),
        "user_agent": request.META.get("HTTP_USER_AGENT", ""),
        "request_id": request_id,
    }


def _user_pk(request: HttpRequest) -> Any:
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user.pk


def remote_addr(request: HttpRequest) -> str | None:
    """The client's address: from ``TRUSTED_PROXY_HEADER`` when set, else REMOTE_ADDR.

    With ``TRUSTED_PROXY_HEADER = "X-Forwarded-For"`` and
    ``TRUSTED_PROXY_COUNT = N``, the address is the N-th from the right: the
    one your outermost trusted proxy saw. Entries further left are written by
    the client and could be anything.
    """
    header = conf.get("TRUSTED_PROXY_HEADER")
    if header:
        entries = [e.strip() for e in request.headers.get(header, "").split(",") if e.strip()]
        if entries:
            count = max(int(conf.get("TRUSTED_PROXY_COUNT")), 1)
            address = _ip(entries[max(len(entries) - count, 0)])
            if address is not None:
                return address
    return _ip(request.META.get("REMOTE_ADDR", ""))


def _ip(value: str) -> str | None:
    """``value`` as PostgreSQL's inet will take it, or None (never an error)."""
    value = value.strip()
    if value.startswith("[") and "]" in value:  # [2001:db8::1]:443
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # 192.0.2.1:443
        value = value.split(":")[0]
    value = value.split("%")[0]  # fe80::1%eth0: inet has no zone ids
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None
