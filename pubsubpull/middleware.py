"""The stable dotted path of the request middleware, as settings name it.

``MIDDLEWARE = ["pubsubpull.middleware.RequestMiddleware", ...]`` is what the
README gives users. The capture of who changed what lives with the rest of
the capture side (``pubsubpull.capture.middleware``); this one adds the
publisher's read-your-writes header (``Pubsubpull-Position``,
``pubsubpull.publisher.positions``) to the response of every request that
changed published data.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError
from django.http.response import HttpResponseBase

from pubsubpull.capture import middleware as capture
from pubsubpull.capture.context import _Root
from pubsubpull.capture.middleware import flush
from pubsubpull.publisher import positions

__all__ = ["RequestMiddleware", "flush"]

logger = logging.getLogger("pubsubpull")


class RequestMiddleware(capture.CaptureMiddleware):
    __doc__ = capture.CaptureMiddleware.__doc__

    def respond(self, root: _Root, response: HttpResponseBase) -> None:
        try:
            positions.add_header(root, response)
        except DatabaseError:
            # The changes are committed and the response is ready: without
            # the header the caller cannot wait for them, but it gets its answer.
            logger.exception("Could not read the feed position of request %s.", root.id)
