"""A pull that meets a page it can never apply: block, then resume or park and go on.

When the handler's database refuses a page (an IntegrityError or DataError:
a constraint, a value the column cannot hold), trying the same page again
cannot help, so the cursor goes ``blocked`` and says why (``last_error``
names the page), instead of retrying for ever. The operator then either
fixes the cause and resumes the cursor, or parks it
(``pubsubpull.client.pulling.resume`` and ``.park``): the next
run applies that page event by event, each in a savepoint, sets aside each
event that fails as a :class:`~pubsubpull.client.models.ParkedEvent` with its
error, and goes on in order with the rest. The later events of a parked
object are parked behind it (an object's events keep their order), so the
rest of the feed is never held up by it. :func:`reapply` tries parked events
again, in order, once the cause is fixed.

The same actions are in the admin (PullCursor, ParkedEvent) and in
``manage.py pubsubpull_cursors``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from django.db import transaction

from pubsubpull.client.handlers import call_handler, resolve_handler
from pubsubpull.client.models import ParkedEvent, PullCursor
from pubsubpull.protocol.events import Event


def _error(e: Exception) -> str:
    return f"{type(e).__name__}: {e}".strip()[:4000]


def apply_parking(
    cursor: PullCursor,
    handler: Any,
    events: list[Event],
    snapshot: tuple[bool, bool] | None,
    position: str,
) -> int:
    """Apply a page event by event (in the page's transaction); park those that fail."""
    first, last = snapshot if snapshot is not None else (False, False)
    within = None if snapshot is None else (False, False)
    if first:
        call_handler(handler, [], (True, False))
    parked = 0
    for event in behind_parked(cursor, events, position):
        if (
            event.pk is not None
            and ParkedEvent.objects.filter(
                cursor=cursor, model=event.model, object_pk=str(event.pk)
            ).exists()
        ):
            _park(cursor, event, position, "Behind a parked event of the same object.")
            continue
        try:
            with transaction.atomic():
                call_handler(handler, [event], within)
        except Exception as e:
            parked += 1
            _park(cursor, event, position, _error(e))
    if last:
        call_handler(handler, [], (False, True))
    return parked


def _park(cursor: PullCursor, event: Event, position: str, error: str) -> None:
    ParkedEvent.objects.create(
        cursor=cursor,
        position=position[:2000],
        model=event.model,
        object_pk="" if event.pk is None else str(event.pk),
        op=event.op,
        event=dataclasses.asdict(event),
        error=error,
    )


def behind_parked(cursor: PullCursor, events: list[Event], position: str) -> list[Event]:
    """The events to apply: those of objects with a parked event are parked behind it."""
    parked = set(ParkedEvent.objects.filter(cursor=cursor).values_list("model", "object_pk"))
    if not parked:
        return events
    kept = []
    for event in events:
        if event.pk is not None and (event.model, str(event.pk)) in parked:
            _park(cursor, event, position, "Behind a parked event of the same object.")
        else:
            kept.append(event)
    return kept


def reapply(parked: Iterable[ParkedEvent]) -> tuple[int, int]:
    """Give parked events to their cursor's handler again, oldest first:
    (applied, still parked).

    Each is applied in its own transaction; an applied one is deleted, a
    failing one keeps its place with the new error and one more attempt, and
    the later events of its object wait behind it.
    """
    applied = failing = 0
    stuck: set[tuple[int, str, str]] = set()
    for item in sorted(parked, key=lambda p: p.id):
        handler = resolve_handler(item.cursor.handler)
        key = (item.cursor_id, item.model, item.object_pk)
        if key in stuck:
            failing += 1
            continue
        try:
            with transaction.atomic():
                call_handler(handler, [Event(**item.event)])
                item.delete()
            applied += 1
        except Exception as e:
            failing += 1
            stuck.add(key)
            item.attempts += 1
            item.error = _error(e)
            item.save(update_fields=["attempts", "error", "last_attempt_at"])
    return applied, failing
