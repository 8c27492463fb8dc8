"""Long polls that hold no database connection (and, awaited, no thread) while they wait.

Every waiting long poll of a process joins that process's hub for its
database. The hub keeps:

- one ``LISTEN`` connection (:class:`_Listener`), woken by the capture
  trigger's ``NOTIFY``;
- a few reader threads (:data:`READERS`), each with its own Django
  connection, that read pages for the waiters;
- the waiters, grouped by what they asked for (cursor, models, limit): when
  woken, each group's page is read once, whatever the number of waiters in it,
  so a thousand clients waiting at the head of the feed cost one query.

So a process holds ``1 + READERS`` connections per database however many
polls wait, and a waiter itself holds none: ``wait_for_changes`` blocks its
thread on an event, ``await_changes`` only awaits a future.

Wake-ups follow the gate described in ``sql/capture_v1.sql``: writers notify
only while someone listens, so the hub arms before its waiters sleep, and
reads until every transaction that was running at the arm has ended (a writer
that did not see the arm sends no notification).
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import logging
import math
import os
import queue
import select
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import psycopg
from django.db import connections

from pubsubpull.publisher import feed

logger = logging.getLogger("pubsubpull")

# Threads (so connections per database) reading pages for the waiters of a
# process. Each read is one short statement; two keep a read going while
# another one's result is handed out.
READERS = 2

# A waiter's group is read at least this often, in case notifications do not
# arrive (a connection pooler in transaction mode drops LISTEN).
SAFETY_POLL = 5.0

# An arm expires after 30 s in the trigger (pubsubpull_wakeup_armed_at):
# take a new one well before.
REARM_AFTER = 20.0

# How a read that must be repeated soon (a change held back by an older
# transaction, a writer that may not have seen the arm) backs off.
FIRST_DELAY = 0.02
LONGEST_DELAY = 1.0

# The listener closes after this long without waiters.
IDLE = 60.0

# Errors that answer a waiter (the view turns them into 4xx); anything else is
# database trouble: log it, keep the waiters, read again later.
_ANSWERS = (feed.CursorExpired, feed.InvalidCursor, LookupError)

# Wake-ups. Writers send a NOTIFY only while a listener sleeps (see the end of
# sql/capture_v1.sql): the hub takes a number from pubsubpull_wakeup_armed
# before its waiters sleep, and the listener that receives a notification
# moves pubsubpull_wakeup_disarmed up to the numbers this process took, since
# that notification woke them all. A writer that saw no arm may still be
# running when the hub armed; the hub reads until the fence passes every
# transaction that was running then, so nobody sleeps through that change.
# The functions (sql/wakeup_v1.sql) also set pubsubpull_wakeup_gate, the one
# sequence capture version 4's writers read, under one lock.
_ARM_SQL = "SELECT number, xmax FROM pubsubpull_wakeup_arm()"
_DISARM_SQL = "SELECT pubsubpull_wakeup_disarm(%(n)s)"


# -- Readers -------------------------------------------------------------------


class _Readers(concurrent.futures.Executor):
    """A few long-lived threads, each keeping its own Django connections open.

    Also the executor the async change feed view authenticates a long poll in
    (``sync_to_async(..., executor=readers())``), so a burst of new polls
    does not open a connection each.
    """

    def __init__(self, size: int):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"pubsubpull-feed-reader-{n}", daemon=True)
            for n in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join(10)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                connections.close_all()
                return
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            _drop_dead_connections()
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                _tidy_connections()


def _drop_dead_connections() -> None:
    """Close a connection that PostgreSQL ended while the thread was idle.

    A reader's connections stay open between reads, for as long as the
    process runs: a server restart or an operator's ``pg_terminate_backend``
    ends them while nobody uses them, and the next read on one would fail.
    The hub's own reads retry, but a caller's read on the readers (a poll
    that timed out before the hub read, the async view's authentication)
    would get the error (a 500). An idle connection has nothing to read
    unless the server said something (its goodbye, an EOF): only then is it
    checked, so a read on a healthy connection costs no round trip.
    """
    for connection in connections.all(initialized_only=True):
        raw = connection.connection
        if raw is None or connection.in_atomic_block:
            continue
        try:
            readable = bool(select.select([raw.fileno()], [], [], 0)[0])
        except (OSError, ValueError, psycopg.Error):  # closed under us
            readable = True
        if readable and not connection.is_usable():
            connection.close()


def _tidy_connections() -> None:
    """What Django does between requests, for a thread that serves no requests.

    The connections stay open (that is the point), but one that failed and is
    no longer usable is closed, to be opened again by the next read; a
    transaction left open by a failed read is rolled back.
    """
    for connection in connections.all(initialized_only=True):
        if connection.connection is None:
            continue
        if connection.in_atomic_block:  # pragma: no cover - reads open none
            connection.close()
        elif connection.errors_occurred:
            if connection.is_usable():
                connection.errors_occurred = False
            else:
                connection.close()


# -- Waiters -------------------------------------------------------------------


class Waiter:
    """One long poll: settled once, with a Page or an exception to raise.

    ``batch``, for a waiter on an event loop, is called on that loop as
    ``batch(waiters, outcome)`` with every waiter of the same batch woken by
    one read, before their futures are set (pubsubpull.publisher.longpoll
    answers a thousand HTTP polls in one go that way).
    """

    __slots__ = ("batch", "done", "event", "future", "group", "loop", "outcome", "owner")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        batch: Callable[[list[Waiter], Any], None] | None = None,
        owner: Any = None,
    ):
        self.loop = loop
        self.future = loop.create_future() if loop is not None else None
        self.event = threading.Event() if loop is None else None
        self.group: _Group | None = None
        self.done = False
        self.outcome: Any = None
        self.batch = batch
        self.owner = owner  # whatever the batch needs of the waiter


def _settle(waiters: list[Waiter], outcome: Any) -> None:
    """On a waiter's loop: run the batches, then settle the futures."""
    # Only waiters on a loop are settled on one, and those have a future.
    futures = [(waiter, cast(asyncio.Future, waiter.future)) for waiter in waiters]
    batches: dict[Callable, list[Waiter]] = {}
    for waiter, future in futures:
        if waiter.batch is not None and not future.done():
            batches.setdefault(waiter.batch, []).append(waiter)
    for batch, members in batches.items():
        try:
            batch(members, outcome)
        except Exception:  # pragma: no cover - batches answer their own errors
            logger.exception("pubsubpull: answering woken long polls failed")
    for _, future in futures:
        if not future.done():
            future.set_result(outcome)


class _Group:
    """Waiters that asked for the same page: read once for all of them."""

    __slots__ = ("after", "limit", "models", "read", "waiters")

    def __init__(self, after: feed.Position | None, models: tuple[str, ...], limit: int):
        self.after = after
        self.models = models
        self.limit = limit
        self.waiters: set[Waiter] = set()
        # Moved on to ``after`` by a read that found nothing (until then
        # ``after`` is only where its waiters asked to start).
        self.read = False

    @property
    def key(self) -> tuple:
        return (self.after, self.models, self.limit)


def _furthest(empty: list[tuple[_Group, feed.Position]]) -> list[tuple[_Group, feed.Position]]:
    """Where each group that read nothing may go on from: as far as any read reached.

    A read from ``after`` that found nothing up to ``next`` proves there is
    nothing (of those models) in ``(after, next]``. Group i read nothing up
    to next_i; if group j read from after_j <= next_i and found nothing up to
    next_j, there is nothing up to next_j for group i either. So groups that
    read the same models at slightly different cursors (clients arriving
    between two reads, the fence moving as other transactions end) come
    together on one cursor and share their reads from then on. A cursor
    ahead of every fence (a client's, say) proves nothing for the others.
    """
    buckets: dict[tuple, list[tuple[_Group, feed.Position]]] = {}
    for group, following in empty:
        buckets.setdefault((group.models, group.limit), []).append((group, following))
    moved = []
    for members in buckets.values():
        if len(members) == 1:
            moved += members
            continue
        # Reads ordered by where they started; the furthest next among those
        # that started at or before a position, by bisection.
        reads = sorted(members, key=lambda m: m[0].after or feed.START)
        starts = [m[0].after or feed.START for m in reads]
        reach, furthest = [], feed.START
        for _, following in reads:
            furthest = max(furthest, following)
            reach.append(furthest)
        for group, following in members:
            i = bisect.bisect_right(starts, following) - 1
            moved.append((group, max(following, reach[i]) if i >= 0 else following))
    return moved


# -- The listener ----------------------------------------------------------------


class _Listener:
    """The LISTEN connection of one hub: its own psycopg connection, in autocommit."""

    def __init__(self, hub: _Hub):
        self.hub = hub
        self.listening = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"pubsubpull-listen-{hub.alias}", daemon=True
        )
        self.thread.start()

    def _connect(self) -> psycopg.Connection:
        params = connections[self.hub.alias].get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        return psycopg.connect(**params, autocommit=True)

    def _run(self) -> None:
        backoff = 0.1
        while not self.stopping.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {feed.CHANNEL}")
                    self.listening.set()
                    # Notifications sent while not listening are lost: read again.
                    self.hub.notified()
                    backoff = 0.1
                    while not self.stopping.is_set():
                        # (notifies() holds the connection's lock while it
                        # yields: query only after it returned.)
                        if any(True for _ in conn.notifies(timeout=0.5, stop_after=1)):
                            # Only arms taken before the hub sees this
                            # notification are spent; an arm taken later is
                            # taken again (the generation moved).
                            spent = self.hub.armed
                            self.hub.notified()
                            conn.execute(_DISARM_SQL, {"n": spent})
                        if self.hub.idle():
                            self.stopping.set()
            except Exception:
                self.listening.clear()
                self.hub.notified()
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        self.listening.clear()
        self.hub.listener_stopped(self)


# -- The hub ---------------------------------------------------------------------


class _Hub:
    """The waiters of one process on one database, their listener and their reads."""

    def __init__(self, alias: str, readers: _Readers):
        self.alias = alias
        self.readers = readers
        self.condition = threading.Condition()
        self.groups: dict[tuple, _Group] = {}
        self.dirty = False  # a waiter joined or a notification came: read now
        self.read_at = math.inf
        self.generation = 0  # bumped by every notification (and reconnection)
        self.armed = 0  # the highest wake-up number this process took
        self.armed_before: int | None = None  # running transactions at the arm end below it
        self.armed_generation = -1
        self.armed_at = 0.0
        self.delay = FIRST_DELAY
        self.last_busy = time.monotonic()
        self.listener: _Listener | None = None
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name=f"pubsubpull-feed-{alias}")
        self.thread.daemon = True
        self.thread.start()

    # Called by waiters.

    def join(self, after: feed.Position | None, models: tuple[str, ...], limit: int, waiter):
        with self.condition:
            key = (after, models, limit)
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = _Group(after, models, limit)
            group.waiters.add(waiter)
            waiter.group = group
            if self.listener is None:
                self.listener = _Listener(self)
            self.dirty = True
            self.condition.notify()

    def leave(self, waiter: Waiter) -> Any:
        """Take a waiter out (timed out or cancelled); its outcome if it has one."""
        with self.condition:
            if waiter.done:
                return waiter.outcome
            # Its callers joined it first, and join() gave it its group.
            group = cast(_Group, waiter.group)
            group.waiters.discard(waiter)
            if not group.waiters and self.groups.get(group.key) is group:
                del self.groups[group.key]
            waiter.done = True
            self.last_busy = time.monotonic()
            if not group.read:
                return None  # never read (the readers were behind): the caller reads
            # Caught up to where this group has read: an empty page, moved on.
            # (A read moved it on to a position.)
            return feed.Page([], cast(feed.Position, group.after), group.limit)

    # Called by the listener.

    def notified(self) -> None:
        with self.condition:
            self.generation += 1
            self.dirty = True
            self.condition.notify()

    def idle(self) -> bool:
        with self.condition:
            return not self.groups and time.monotonic() - self.last_busy > IDLE

    def listener_stopped(self, listener: _Listener) -> None:
        with self.condition:
            if self.listener is listener:
                self.listener = None
                if self.groups:  # a waiter came as it closed: listen again
                    self.listener = _Listener(self)

    # The hub's own thread.

    def _settle(self, waiters: set[Waiter], outcome: Any) -> None:
        """Give every waiter of a group its outcome (called holding the lock)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Waiter]] = {}
        for waiter in waiters:
            if waiter.done:
                continue
            waiter.done = True
            waiter.outcome = outcome
            if waiter.event is not None:
                waiter.event.set()
            elif waiter.loop is not None:  # a waiter has either an event or a loop
                by_loop.setdefault(waiter.loop, []).append(waiter)
        for loop, members in by_loop.items():
            # A loop that has closed took its waiters with it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, members, outcome)

    def _read(self, group: _Group) -> Any:
        try:
            return feed.read_changes(group.after, group.limit, list(group.models), using=self.alias)
        except _ANSWERS as exc:
            return exc

    def _arm(self) -> int:
        with connections[self.alias].cursor() as cursor:
            cursor.execute(_ARM_SQL)
            number, xmax = cursor.fetchone()
        with self.condition:
            self.armed = max(self.armed, number)
        return xmax

    def _run(self) -> None:
        while True:
            with self.condition:
                while not self.stopping:
                    if not self.groups:
                        self.read_at = math.inf
                    remaining = self.read_at - time.monotonic()
                    if self.groups and (self.dirty or remaining <= 0):
                        break
                    self.condition.wait(min(remaining, 10.0))
                if self.stopping:
                    return
                self.dirty = False
                groups = list(self.groups.values())
                listening = self.listener is not None and self.listener.listening.is_set()
            try:
                self._round(groups, listening)
            except Exception:  # database trouble: the waiters wait, we retry
                logger.warning("pubsubpull: reading the change feed failed", exc_info=True)
                with self.condition:
                    self.read_at = time.monotonic() + self.delay
                    self.delay = min(self.delay * 2, 5.0)

    def _round(self, groups: list[_Group], listening: bool) -> None:
        # One read per group, on the readers, all at once.
        reads = [(group, self.readers.submit(self._read, group)) for group in groups]
        outcomes = [(group, future.result()) for group, future in reads]
        fences = []
        held_back = False
        empty: list[tuple[_Group, feed.Position]] = []
        with self.condition:
            self.last_busy = time.monotonic()
            for group, outcome in outcomes:
                if self.groups.get(group.key) is group:
                    del self.groups[group.key]
                if isinstance(outcome, feed.Page) and outcome.changes:
                    # The feed moved: a later hold-back is a new one, so its
                    # re-reads start soon again. (Backing off only across
                    # rounds that served nothing: under steady writes a
                    # change is often behind a still-open transaction for a
                    # few ms, and a backoff grown to LONGEST_DELAY by
                    # earlier ones kept it waiting a second.)
                    self.delay = FIRST_DELAY
                if not group.waiters:
                    continue
                if not isinstance(outcome, feed.Page) or outcome.changes:
                    self._settle(group.waiters, outcome)
                    continue
                # Nothing yet: the group goes on from the page's next.
                fences.append(outcome.fence)
                held_back = held_back or outcome.held_back
                empty.append((group, outcome.next))
            for group, following in _furthest(empty):
                group.after, group.read = following, True
                other = self.groups.get(group.key)
                if other is None:
                    self.groups[group.key] = group
                else:  # with the group already waiting there: one read for both
                    for waiter in group.waiters:
                        waiter.group = other
                    other.waiters |= group.waiters
            if not self.groups:
                return
            generation = self.generation
            armed_before = self.armed_before
            rearm = (
                armed_before is None
                or generation != self.armed_generation
                or time.monotonic() - self.armed_at > REARM_AFTER
            )
        now = time.monotonic()
        if (
            held_back
            or not listening
            or (armed_before is not None and min(fences, default=math.inf) < armed_before)
        ):
            # Committed changes wait for an older transaction to end, or a
            # writer that did not see the arm may still commit; its end sends
            # no notification, so read again soon, backing off.
            read_at = now + self.delay
            self.delay = min(self.delay * 2, LONGEST_DELAY)
        elif rearm:
            # Arm (again, if a notification since spent it), then read once
            # more before sleeping.
            armed_before = self.readers.submit(self._arm).result()
            with self.condition:
                self.armed_generation = generation
                self.armed_before = armed_before
                self.armed_at = now
            read_at = now
        else:
            read_at = now + SAFETY_POLL
            self.delay = FIRST_DELAY
        with self.condition:
            self.read_at = read_at

    def stop(self) -> None:
        with self.condition:
            self.stopping = True
            listener = self.listener
            self.listener = None
            self.condition.notify()
            for group in self.groups.values():
                self._settle(group.waiters, RuntimeError("the change feed stopped listening"))
            self.groups.clear()
        if listener is not None:
            listener.stopping.set()
            listener.thread.join(5)
        self.thread.join(5)


# -- Per process -------------------------------------------------------------------

_lock = threading.Lock()
_hubs: dict[str, _Hub] = {}
_readers: _Readers | None = None
_pid = os.getpid()


def readers() -> _Readers:
    """The process's feed reader threads (started on first use)."""
    global _readers, _pid
    with _lock:
        if _pid != os.getpid():  # forked (a preloading server): threads stayed behind
            _hubs.clear()
            _readers = None
            _pid = os.getpid()
        if _readers is None:
            _readers = _Readers(READERS)
        return _readers


def hub(alias: str) -> _Hub:
    pool = readers()
    with _lock:
        found = _hubs.get(alias)
        if found is None:
            found = _hubs[alias] = _Hub(alias, pool)
        return found


def stop() -> None:
    """Close every LISTEN and reader connection of this process (they reopen on use)."""
    global _readers
    with _lock:
        stopping = list(_hubs.values())
        _hubs.clear()
        pool, _readers = _readers, None
    for found in stopping:
        found.stop()
    if pool is not None:
        pool.shutdown(wait=True)


def waiting() -> int:
    """How many long polls wait in this process (for metrics and tests)."""
    with _lock:
        hubs = list(_hubs.values())
    total = 0
    for found in hubs:
        with found.condition:
            total += sum(len(group.waiters) for group in found.groups.values())
    return total
