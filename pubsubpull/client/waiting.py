"""Read your writes: wait until a publisher's feed position has been applied here.

A publisher's response to a request that changed published data carries the
feed position of its last change (``Pubsubpull-Position``). A subscriber that
caused the change and wants to read it from its own copy waits until what it
has applied locally reaches that position::

    answer = httpx.put(customers_url, json={"country": "NZ"}, headers=auth)
    customers.wait_for(answer.headers.get("Pubsubpull-Position"), timeout=5)
    CustomerCountry.objects.get(remote_id=pk).country   # "NZ"

The applied position is what the worker (pull) or the receiver (push) stored
in the transaction that applied the changes, so this works across processes:
the waiter reads it from the database, polling with a backoff from 5 ms to
100 ms (one primary-key read a poll; no connection is held beyond the
caller's own). Under ``READ COMMITTED`` (Django's default) a waiter inside a
transaction sees the worker's commits; under ``REPEATABLE READ`` or
``SERIALIZABLE`` it would not, so wait outside the transaction there.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pubsubpull.exceptions import WaitTimeout
from pubsubpull.protocol import cursor as cursors
from pubsubpull.protocol.cursor import Position

#: Seconds between looks: the first, the growth factor, the longest.
FIRST_POLL, GROWTH, LONGEST_POLL = 0.005, 1.5, 0.1

#: Seconds ``wait_for`` waits by default.
DEFAULT_TIMEOUT = 10.0


def target(position: Position | str | None, database: str | None = None) -> Position | None:
    """The position to wait for: a Position, a cursor, or a header value (None: nothing)."""
    if position is None or position == "":
        return None
    return cursors.from_header(position, database)


def wait_until_applied(
    applied: Callable[[], Position | None],
    position: Position | str | None,
    *,
    timeout: float,
    what: str,
    database: str | None = None,
) -> Position | None:
    """Return once ``applied()`` is at or past ``position``; :class:`WaitTimeout` after ``timeout``.

    ``position`` is a Position, a cursor string or a ``Pubsubpull-Position``
    value (``database`` picks one of several); None or empty returns at once
    (the request changed nothing published). Returns the applied position.
    """
    wanted = target(position, database)
    if wanted is None:
        return None
    deadline = time.monotonic() + timeout
    delay = FIRST_POLL
    while True:
        now = applied()
        if now is not None and now >= wanted:
            return now
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(what, wanted.encode(), now.encode() if now else None, timeout)
        time.sleep(min(delay, remaining))
        delay = min(delay * GROWTH, LONGEST_POLL)


def latest(*positions: Position | None) -> Position | None:
    """The furthest of ``positions`` (None for unknown ones), or None."""
    known = [p for p in positions if p is not None]
    return max(known) if known else None
