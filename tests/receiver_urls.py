"""The publisher test project's URLs plus a pubsubpull receiver, for receiver tests.

Tests that PUT to the receiver over real HTTP set ``ROOT_URLCONF`` to this
module; its handler keeps what it was given in ``HANDLED``.
"""

from __future__ import annotations

from django.urls import path

import pubsubpull
from publisher.urls import urlpatterns as publisher_urls

HANDLED: list = []


def keep(event) -> None:
    HANDLED.append(event)


urlpatterns = [path("hooks/fuzz/", pubsubpull.receiver(keep)), *publisher_urls]
