"""The publisher's CloudEvents framing of feed changes (feed pages and notifications).

How a change looks as a CloudEvent is the protocol's
(:mod:`pubsubpull.protocol.cloudevents`); this module fills in what the
publisher knows: the ``source`` and the ``type`` prefix from the settings,
and each change's fields from what the feed read. Its ``id`` is the change
id, so a redelivery, a feed page and a notification carrying one change all
carry the same event id (CloudEvents consumers dedupe by ``source`` + ``id``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.urls import NoReverseMatch, reverse

from pubsubpull import conf
from pubsubpull.protocol import cloudevents
from pubsubpull.publisher import feed


def source() -> str:
    """Each event's ``source``: CLOUDEVENTS_SOURCE, else the service document's path."""
    configured = conf.cloudevents_source()
    if configured:
        return configured
    try:
        return reverse("pubsubpull:service")
    except NoReverseMatch:  # the API is not routed in this process's URLconf
        return "/pubsubpull/"


def event_json(item: dict[str, Any], text: str, **extra: Any) -> str:
    """A change item (with its JSON ``text``) as one CloudEvent's JSON text."""
    return cloudevents.event_json(
        text,
        id=item["id"],
        cursor=item["cursor"],
        model=item["model"],
        pk=item.get("pk"),
        op=item["op"],
        at=item["at"],
        source=source(),
        type_prefix=conf.cloudevents_type_prefix(),
        **extra,
    )


def event_texts(
    changes: Sequence[feed.FeedChange], texts: Sequence[str], **extra: Any
) -> list[str]:
    """The changes (and their item texts, ``page.texts()``) as CloudEvents' JSON texts."""
    events = []
    origin, prefix = source(), conf.cloudevents_type_prefix()
    for change, text in zip(changes, texts, strict=True):
        events.append(
            cloudevents.event_json(
                text,
                id=change.id,
                cursor=change.cursor,
                model=change.model,
                pk=change.pk,
                op=change.op,
                at=change.at_text,
                source=origin,
                type_prefix=prefix,
                **extra,
            )
        )
    return events


def batch_bytes(changes: Sequence[feed.FeedChange], texts: Sequence[str], **extra: Any) -> bytes:
    """The changes as a CloudEvents JSON batch (UTF-8)."""
    return cloudevents.batch_json(event_texts(changes, texts, **extra)).encode()
