"""The publisher test project's URLs plus receivers for tests/test_client_edges.py."""

from __future__ import annotations

from django.urls import path

import pubsubpull
from publisher.urls import urlpatterns as publisher_urls
from pubsubpull.client.receiver import Receiver

urlpatterns = [
    # By dotted path, as a settings-driven project would name it.
    path("hooks/strict/", pubsubpull.receiver("tests.edge_handlers.strict_or_crash")),
    # A Receiver subclass (or as_view()) that was given no handler.
    path("hooks/none/", Receiver.as_view()),
    *publisher_urls,
]
