"""CloudEvents framing: each change as a CloudEvent 1.0, a batch as a JSON array.

An optional framing of what the default wire format carries, for consumers
that speak CloudEvents (Knative, Azure Event Grid, Google Eventarc, Debezium's
CloudEvents converter): structured JSON mode (the JSON event format), and the
JSON batch format (``application/cloudevents-batch+json``, a JSON array of
events) for a feed page and for a notification, as the CloudEvents HTTP
binding's batched mode sends several events in one message.

One change is one event::

    {"specversion": "1.0",
     "id": "812",                               # the change id: stable, so a
                                                # redelivery carries the same
     "source": "https://customers.example/pubsubpull/",   # CLOUDEVENTS_SOURCE
     "type": "org.pubsubpull.shop.customer.update",  # CLOUDEVENTS_TYPE_PREFIX.<model>.<op>
     "subject": "3",                            # the primary key (none for truncate)
     "time": "2026-12-01T17:02:28.123456+00:00",   # the change's "at"
     "datacontenttype": "application/json",
     "pubsubpullcursor": "YzEuNzc...",          # the change's feed cursor
     "pubsubpullseq": "812",                    # its sequence (decimal text)
     "pubsubpullsub": "billing",                # notifications: the subscription
     "data": {<the change item, as the default framing carries it>}}

Extension attribute names are lower-case letters and digits, at most 20
characters, as the spec asks; the sequence is a string because a CloudEvents
Integer is 32 bits and change ids are 64. A parked change sent again carries
``"pubsubpullparked": true``. The event's ``data`` is the change item
unchanged, so :meth:`~pubsubpull.protocol.events.Event.from_change` reads it.

The publisher renders events with :func:`event_json` (the change's JSON text
is spliced in as the feed rendered it); the receiver and the pull client read
a batch with :func:`read_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pubsubpull.exceptions import InvalidNotification
from pubsubpull.protocol.items import dumps

SPECVERSION = "1.0"

#: A JSON array of events (the JSON batch format); what feed pages and notifications use.
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"

#: One event in structured mode; the receiver accepts one such event too.
CONTENT_TYPE = "application/cloudevents+json"

#: The framings a subscription or a feed request may choose; the first is the default.
FRAMINGS = ("pubsubpull", "cloudevents")

CURSOR = "pubsubpullcursor"
SEQUENCE = "pubsubpullseq"
SUBSCRIPTION = "pubsubpullsub"
PARKED = "pubsubpullparked"

_REQUIRED = ("id", "source", "type")


def event_type(prefix: str, model: str, op: str) -> str:
    """The event ``type`` of a change: ``<prefix>.<app_label>.<model>.<op>``."""
    return f"{prefix}.{model}.{op}"


def event_json(
    change_json: str,
    *,
    id: int,
    cursor: str,
    model: str,
    pk: Any,
    op: str,
    at: str,
    source: str,
    type_prefix: str,
    subscription: str | None = None,
    parked: bool = False,
) -> str:
    """One change as a CloudEvent in structured JSON mode (compact JSON text).

    ``change_json`` is the change item's JSON text, spliced in as ``data``.
    """
    head: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": str(id),
        "source": source,
        "type": event_type(type_prefix, model, op),
    }
    if pk is not None:
        head["subject"] = str(pk)
    head["time"] = at
    head["datacontenttype"] = "application/json"
    head[CURSOR] = cursor
    head[SEQUENCE] = str(id)
    if subscription is not None:
        head[SUBSCRIPTION] = subscription
    if parked:
        head[PARKED] = True
    return dumps(head)[:-1] + ',"data":' + change_json + "}"


def batch_json(events: list[str]) -> str:
    """Events' JSON texts as one batch (a JSON array)."""
    return "[" + ",".join(events) + "]"


def is_cloudevents(envelope: Any) -> bool:
    """Whether a parsed body is CloudEvents: a batch (an array) or one structured event."""
    return isinstance(envelope, list) or (isinstance(envelope, dict) and "specversion" in envelope)


@dataclass(frozen=True)
class Batch:
    """A CloudEvents batch as a subscriber reads it."""

    changes: list[dict[str, Any]]
    """The events' ``data``: change items, in order."""
    subscription: str | None
    cursor: str | None
    """The last event's cursor: where the subscriber is once it handled them all."""
    parked: bool


def subscription_of(envelope: Any) -> str | None:
    """The subscription a batch's (first) event names, or None."""
    first = envelope[0] if isinstance(envelope, list) and envelope else envelope
    name = first.get(SUBSCRIPTION) if isinstance(first, dict) else None
    return name if isinstance(name, str) else None


def _is_change(item: Any) -> bool:
    return isinstance(item, dict) and all(isinstance(item.get(k), str) for k in ("model", "op"))


def read_batch(envelope: Any) -> Batch:
    """The changes of a parsed batch (or one event); :class:`InvalidNotification` if none.

    Every event must be CloudEvents 1.0 with ``id``, ``source`` and ``type``,
    and carry a change item as ``data``.
    """
    events = envelope if isinstance(envelope, list) else [envelope]
    changes, cursor, parked = [], None, False
    for n, event in enumerate(events):
        if not isinstance(event, dict) or event.get("specversion") != SPECVERSION:
            raise InvalidNotification(f"Event {n} is not a CloudEvent {SPECVERSION}.")
        missing = [k for k in _REQUIRED if not isinstance(event.get(k), str) or not event[k]]
        if missing:
            raise InvalidNotification(f"Event {n} has no {', '.join(missing)}.")
        if not _is_change(event.get("data")):
            raise InvalidNotification(f"Event {n}'s data is not a pubsubpull change.")
        changes.append(event["data"])
        if isinstance(event.get(CURSOR), str):
            cursor = event[CURSOR]
        parked = parked or event.get(PARKED) is True
    return Batch(changes, subscription_of(envelope), None if parked else cursor, parked)


def schema(change: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of one event carrying ``change`` (a schema or a $ref) as ``data``."""
    text = {"type": "string"}
    return {
        "type": "object",
        "description": "A change as a CloudEvent 1.0 (structured JSON mode).",
        "required": ["specversion", "id", "source", "type", "time", "data", CURSOR, SEQUENCE],
        "properties": {
            "specversion": {"const": SPECVERSION},
            "id": {**text, "description": "The change id: the same on every redelivery."},
            "source": {**text, "description": "The publisher (setting CLOUDEVENTS_SOURCE)."},
            "type": {
                **text,
                "description": "CLOUDEVENTS_TYPE_PREFIX.<app_label>.<model>.<op>",
            },
            "subject": {**text, "description": "The primary key (absent for a truncate)."},
            "time": {**text, "format": "date-time"},
            "datacontenttype": {"const": "application/json"},
            CURSOR: {**text, "description": "The change's feed cursor."},
            SEQUENCE: {**text, "description": "The change's sequence, in decimal."},
            SUBSCRIPTION: {**text, "description": "Notifications: the subscription's name."},
            PARKED: {"type": "boolean", "description": "A parked change sent again."},
            "data": change,
        },
    }
