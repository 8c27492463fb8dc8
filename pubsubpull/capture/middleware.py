"""Attribute the changes made while handling a web request to that request.

Add ``"pubsubpull.middleware.RequestMiddleware"`` to ``MIDDLEWARE`` (first, so
that it times the whole request and sees writes made by other middleware).
The first change a request makes writes its ``pubsubpull.models.Request`` row;
a request that changes nothing writes nothing. Status and duration are filled
in once the response is ready, outside the request's transaction, by a
background thread (``pubsubpull.capture.status``) so the request does not wait
for them; the request's columns come from ``pubsubpull.capture.request_info``.
"""

from __future__ import annotations

import time

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from pubsubpull.capture.context import _Root, begin, end
from pubsubpull.capture.request_info import request_root
from pubsubpull.capture.status import finish, flush, status_writer

__all__ = ["CaptureMiddleware", "flush", "status_writer"]


class CaptureMiddleware:
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
        root = request_root(request)
        token = begin(root)
        status = 500  # unless a response comes back
        response = None
        try:
            response = self.get_response(request)
            status = response.status_code
            return response
        finally:
            end(token)
            if root.written:
                self._finished(root, response, status, _elapsed(root))

    async def __acall__(self, request: HttpRequest):
        root = request_root(request)
        token = begin(root)
        status = 500
        response = None
        try:
            response = await self.get_response(request)
            status = response.status_code
            return response
        finally:
            end(token)
            if root.written:
                # One hop to the request's thread (its connections) for both.
                await sync_to_async(self._finished)(root, response, status, _elapsed(root))

    def _finished(
        self, root: _Root, response: HttpResponseBase | None, status: int, elapsed: float
    ) -> None:
        """After a writing request: its response (None if the view raised) is ready."""
        if response is not None:
            self.respond(root, response)
        finish(root, status, elapsed)

    def respond(self, root: _Root, response: HttpResponseBase) -> None:
        """Called with a writing request's response before it is sent; a hook.

        ``pubsubpull.middleware.RequestMiddleware``, its subclass, adds the read-your-writes
        header here (the capture side serves nothing itself).
        """


def _elapsed(root: _Root) -> float:
    return time.monotonic() - root.started
