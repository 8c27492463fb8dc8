"""The publisher test project's URLs plus a receiver whose handler notes the active trace.

tests/test_tracing.py sets ``ROOT_URLCONF`` to this module: the publisher and
the receiving service are then the same live server, over real HTTP.
"""

from __future__ import annotations

from django.urls import path

import pubsubpull
from publisher.urls import urlpatterns as publisher_urls
from pubsubpull import tracing

# (event, (traceparent, tracestate) of the span active in the handler)
HANDLED: list = []


def note(event) -> None:
    HANDLED.append((event, tracing.current()))


urlpatterns = [path("hooks/traced/", pubsubpull.receiver(note)), *publisher_urls]
