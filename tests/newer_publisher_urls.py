"""The publisher test project's URLs plus, under ``newer/``, a publisher of a later version.

Its feed spells one change's cursor in a form this client cannot read (a
future cursor version: something this version's publisher can never send, so
it is served from here). Tests that point a subscriber at it set
``ROOT_URLCONF`` to this module.
"""

from __future__ import annotations

from django.http import JsonResponse
from django.urls import path

from publisher.urls import urlpatterns as publisher_urls
from pubsubpull.protocol import items
from pubsubpull.protocol.cursor import Position

#: What the subscriber has handled, the position after this page, and the
#: change of the page it cannot place.
HANDLED = Position(6, 0)
FOLLOWING = Position(7, 0)
FUTURE_CURSOR = "c2.unreadable-by-this-version"


def _change(id_: int, cursor: str, name: str) -> dict:
    new = {"id": id_, "name": name, "country_id": None}
    at = "2026-12-01T10:00:00+00:00"
    return items.change_item(id_, cursor, "customers.customer", id_, "insert", at, None, new, None)


def service(request):
    changes = request.build_absolute_uri("changes/")
    return JsonResponse({"service": "django-pubsubpull", "links": {"changes": changes}})


def changes(request):
    page = [
        _change(1, Position(5, 10).encode(), "handled before"),  # at or before HANDLED
        _change(2, FUTURE_CURSOR, "from the future"),
    ]
    return JsonResponse({"changes": page, "cursor": FOLLOWING.encode(), "next": ""})


urlpatterns = [
    path("newer/", service),
    path("newer/changes/", changes),
    *publisher_urls,
]
