"""A pull that meets a page it can never apply: block, then resume or park and go on.

When the handler's database refuses a page (an IntegrityError or DataError:
a constraint, a value the column cannot hold), trying the same page again
cannot help, so the cursor goes ``blocked`` and says why (``last_error``
names the page), instead of retrying for ever. The operator then either
fixes the cause and calls :func:`resume`, or calls :func:`park`: the next
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
from django.utils import timezone

from pubsubpull.client.models import ParkedEvent, PullCursor
from pubsubpull.protocol.events import Event


def _now_due(cursors: Iterable[PullCursor], **fields: Any) -> list[int]:
    ids = [c.id for c in cursors]
    PullCursor.objects.filter(id__in=ids).update(
        state=PullCursor.State.ACTIVE, next_run_at=timezone.now(), **fields
    )
    from pubsubpull.client.wake import wake_cursors

    wake_cursors(ids, force=True)
    return ids


def resume(cursors: Iterable[PullCursor]) -> list[int]:
    """Run these (blocked, failing or paused) cursors again now: the cause is fixed."""
    return _now_due(cursors, failures=0)


def park(cursors: Iterable[PullCursor]) -> list[int]:
    """Run these cursors now, parking the events of their next page that fail."""
    return _now_due(cursors, park_failures=True)


def pause(cursors: Iterable[PullCursor]) -> int:
    """Stop running these cursors until resumed."""
    return PullCursor.objects.filter(id__in=[c.id for c in cursors]).update(
        state=PullCursor.State.PAUSED
    )


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
    from pubsubpull.client.pulling import call_handler

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
    from pubsubpull.client.pulling import call_handler, resolve_handler

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
