"""The notification a subscription's callback receives: its body, written and read.

A notification is a Standard Webhooks message (``PUT``, signed)::

    {"type": "pubsubpull.changes", "timestamp": "<the last change's at>",
     "data": {"subscription": "<name>", "cursor": "<position after it>",
              "changes": [<change items>]}}

``data`` may carry ``"parked": true`` instead of a cursor: a parked change
sent again by hand, older than the subscription's position. The publisher
writes bodies with :func:`body` (the changes' JSON text is spliced in as the
feed rendered it, not decoded and encoded again for every subscription); the
receiver reads them with :func:`subscription_of` (before the signature is
checked: whose secret verifies it) and :func:`read` (after).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pubsubpull.exceptions import InvalidNotification
from pubsubpull.protocol.cursor import END
from pubsubpull.protocol.items import dumps

TYPE = "pubsubpull.changes"

_LONGEST_CURSOR = END.encode()


def body(name: str, timestamp: str, changes_json: str, cursor: str | None, **extra: Any) -> bytes:
    """A notification body around ``changes_json`` (a JSON array, as the feed renders it).

    ``extra`` goes into ``data`` (``parked=True``). ``cursor`` None leaves it out.
    """
    data: dict[str, Any] = {"subscription": name, **extra}
    if cursor is not None:
        data["cursor"] = cursor
    head = dumps({"type": TYPE, "timestamp": timestamp, "data": data})
    # head ends with "}}": the changes go last in data.
    return (head[:-2] + ',"changes":' + changes_json + "}}").encode()


def overhead(name: str, timestamp_length: int) -> int:
    """An upper bound of a body's bytes besides its changes' array, for a byte cap.

    ``timestamp_length`` is the longest ``at`` text of the changes it may carry.
    """
    return len(body(name, "t" * timestamp_length, "", _LONGEST_CURSOR))


@dataclass(frozen=True)
class Notification:
    """A notification's data, as the receiver reads it."""

    subscription: str
    changes: list[dict[str, Any]]
    cursor: Any = None
    """The position after these changes: a cursor string, or None (a parked change)."""
    parked: bool = False


def subscription_of(envelope: Any) -> str | None:
    """The subscription a parsed body names, or None when it names none."""
    try:
        name = envelope["data"]["subscription"]
    except (KeyError, TypeError):
        return None
    return name if isinstance(name, str) else None


def is_change(item: Any) -> bool:
    """Whether ``item`` can be read as a change item (a dict with a model and an op)."""
    return isinstance(item, dict) and all(isinstance(item.get(k), str) for k in ("model", "op"))


def read(envelope: Any) -> Notification:
    """The notification in a parsed body; :class:`InvalidNotification` if it is none."""
    try:
        data = envelope["data"]
        changes = data["changes"]
        cursor = data.get("cursor")
        if not isinstance(changes, list) or not all(is_change(c) for c in changes):
            raise TypeError
        name = data.get("subscription")
    except (KeyError, TypeError, AttributeError):
        raise InvalidNotification("The body is not a pubsubpull notification.") from None
    return Notification(name, changes, cursor, data.get("parked") is True)
