"""The event a handler receives: one instance of a snapshot, or one change of the feed.

Reading the wire's items (``pubsubpull.protocol.items``) into events is part
of the protocol: a subscriber reads instance pages, feed pages and
notifications through :meth:`Event.from_instance` and :meth:`Event.from_change`.
Handlers know it as ``pubsubpull.Event``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Op = Literal["snapshot", "insert", "update", "delete", "truncate"]


@dataclass(frozen=True)
class Event:
    """One thing that happened to one object of a publisher's model.

    - ``op`` is ``snapshot`` for an instance read from a snapshot (it exists
      with ``data``), else the change: ``insert``, ``update``, ``delete`` or
      ``truncate`` (``pk`` None: every row of the model is gone).
    - ``data`` holds the published fields now (None after a delete), ``old``
      the fields before an update or delete.
    - ``sequence`` orders the events of one object: keep the newest, drop an
      event whose sequence is not above the one you stored (None for a row
      that has not changed since the publisher began recording).
    - ``request`` is who made the change and how (``user``, ``method``,
      ``path``), when it came from a web request.
    """

    model: str
    pk: Any
    op: Op
    sequence: int | None
    data: dict[str, Any] | None
    old: dict[str, Any] | None = None
    request: dict[str, Any] | None = None
    at: str | None = None
    cursor: str | None = None

    @property
    def deleted(self) -> bool:
        return self.op in ("delete", "truncate")

    @classmethod
    def from_instance(cls, model: str, item: dict[str, Any]) -> Event:
        """From an item of an instances page."""
        return cls(model, item["pk"], "snapshot", item.get("sequence"), item["fields"])

    @classmethod
    def from_change(cls, item: dict[str, Any]) -> Event:
        """From an item of the change feed or of a notification."""
        return cls(
            model=item["model"],
            pk=item.get("pk"),
            op=item["op"],
            sequence=item.get("sequence", item.get("id")),
            data=item.get("new"),
            old=item.get("old"),
            request=item.get("request"),
            at=item.get("at"),
            cursor=item.get("cursor"),
        )
