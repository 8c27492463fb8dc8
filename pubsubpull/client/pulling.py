"""Pull another service: its instances page by page, then its change feed, for ever.

A :class:`~pubsubpull.client.models.PullCursor` row says where a pull is.
Pulling is a kind of job of the engine (``pubsubpull.jobs``, run by ``manage.py
pubsubpull_worker``): a job takes the cursor with a lease of PULL_LEASE
seconds, reads a page over HTTP with no transaction open, then calls the
handler for the page's events and moves the cursor in one transaction. So a
crash anywhere redoes a page, never skips one, and a handler's own writes
commit exactly when the cursor moves past them.

A handler is a callable taking one :class:`~pubsubpull.protocol.events.Event`,
or an object with ``handle_events(events)`` taking a page at a time (a
mirror does that to write a page in one statement). Jobs run in other
processes, so a handler is stored by its dotted path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from pubsubpull import conf, jobs, tracing
from pubsubpull.client.handlers import (
    CANNOT_APPLY,
    Handler,
    call_handler,
    handler_path,
    resolve_handler,
)
from pubsubpull.client.models import PullCursor
from pubsubpull.client.parking import apply_parking, behind_parked
from pubsubpull.client.source import (
    Gone,
    Publisher,
    SourceError,
    get_events_page,
    get_json,
    split_source,
)
from pubsubpull.client.waiting import DEFAULT_TIMEOUT, wait_until_applied
from pubsubpull.exceptions import InvalidOption, LostLease, PageCannotApply
from pubsubpull.jobs.outcome import Outcome
from pubsubpull.protocol import cloudevents
from pubsubpull.protocol import cursor as feed_cursor
from pubsubpull.protocol import filters as filtering
from pubsubpull.protocol.cursor import Position
from pubsubpull.protocol.events import Event

logger = logging.getLogger("pubsubpull.client")

# -- starting a pull -------------------------------------------------------------


def _feed_head(publisher: Publisher, labels: list[str]) -> str:
    """A cursor past every change committed by now (the feed's end, as of its fence)."""
    page = get_json(
        publisher.instances_url(labels[0] if labels else publisher.labels()[0]),
        token=publisher.token,
        params={"limit": 1},
    )
    # A snapshot's feed_position may lie a little behind (the fence is the
    # publisher's oldest running transaction): walk to the end.
    cursor = page["feed_position"]
    params: dict[str, Any] = {"limit": 5000}
    if labels:
        params["models"] = ",".join(labels)
    while True:
        body = get_json(
            publisher.changes_url(), token=publisher.token, params={**params, "after": cursor}
        )
        cursor = body["cursor"]
        if not body["changes"]:
            return cursor


def pull(
    url: str,
    handler: Handler | str,
    *,
    models: Iterable[str] | None = None,
    start: str = "beginning",
    page_size: int | None = None,
    whole_transactions: bool | None = None,
    every: float = 0.0,
    auth: str | None = None,
    name: str | None = None,
    once: bool = False,
    enqueue: bool = True,
    lease_owner: str | None = None,
    format: str | None = None,
    where: dict[str, Any] | None = None,
    changed: Iterable[str] | None = None,
    fields: Iterable[str] | None = None,
    filters: dict[str, Any] | None = None,
) -> PullCursor:
    """Follow a publisher: every instance, then every change, handled in order.

    ``url`` is the publisher's service document (``…/pubsubpull/``) or one
    model's instances URL; ``models`` narrows the pull to these labels.
    ``start`` is ``"beginning"`` (a snapshot of the instances, then the feed
    from where the snapshot began), ``"now"`` (only changes from now on) or a
    feed cursor. ``every`` is how often to look for changes once caught up (0:
    follow continuously by long poll). ``auth`` is a bearer token of the
    publisher (``manage.py pubsubpull_token create`` there).
    ``whole_transactions=True`` asks the feed for pages that never split a
    publisher's transaction: each page is handled in one local transaction,
    so the handler's database never shows half of one (a transaction larger
    than ``page_size`` comes alone, as one page).

    Idempotent: the cursor is named ``name`` (default: the handler's dotted
    path); calling again keeps its position and updates its settings. The
    work is done by ``manage.py pubsubpull_worker``. Example::

        def on_change(event):
            print(event.op, event.model, event.pk, event.data)

        pubsubpull.pull("http://customers/pubsubpull/", on_change, auth=TOKEN)

    ``format="cloudevents"`` reads the feed's pages as CloudEvents batches
    (the handler gets the same events); left out, the cursor keeps what it has.
    ``where``, ``changed`` and ``fields`` filter a pull of one model (the
    publisher evaluates them, docs/filters.rst): only its rows matching
    ``where`` (in the snapshot too), only updates that change one of
    ``changed``, only the ``fields`` named (and the primary key). For several
    models, ``filters={label: {"where": ..., "changed": ..., "fields": ...}}``.
    An update that moves a row out of ``where`` arrives as a delete::

        pubsubpull.pull(URL, on_change, models=["customers.customer"],
                        where={"country": "NZ"}, fields=["name", "email"])

    ``lease_owner`` (for ``manage.py pubsubpull_pull``) creates a new cursor
    already held by that owner for PULL_LEASE seconds, so no worker takes it
    before the caller runs it.
    """
    path = handler_path(handler)
    service_url, named = split_source(url)
    labels = sorted(set(models if models is not None else (named or [])))
    name = name or path
    chosen = filtering.build(labels, where=where, changed=changed, fields=fields, filters=filters)
    settings = {
        "source": url,
        "service_url": service_url,
        "handler": path,
        "model_labels": labels,
        "filters": chosen,
        "every": every,
        "once": once,
    }
    # Left out, these keep what the cursor has (or get their defaults).
    if auth is not None:
        settings["token"] = auth
    if page_size is not None:
        settings["page_size"] = page_size
    if whole_transactions is not None:
        settings["whole_transactions"] = whole_transactions
    if format is not None:
        if format not in cloudevents.FRAMINGS:
            raise InvalidOption(
                f"format must be one of {', '.join(cloudevents.FRAMINGS)}, not {format!r}."
            )
        settings["framing"] = format
    cursor = PullCursor.objects.filter(name=name).first()
    if cursor is None:
        phase, position = PullCursor.Phase.SNAPSHOT, ""
        if start == "now":
            phase = PullCursor.Phase.FEED
            position = _feed_head(Publisher(service_url, auth or ""), labels)
        elif start != "beginning":
            phase, position = PullCursor.Phase.FEED, start
        defaults = {"page_size": conf.pull_page_size(), **settings}
        if lease_owner:
            defaults["lease_owner"] = lease_owner
            defaults["lease_expires"] = timezone.now() + timedelta(seconds=conf.pull_lease())
        cursor, created = PullCursor.objects.get_or_create(
            name=name, defaults={**defaults, "phase": phase, "feed_position": position}
        )
    else:
        created = False
    if not created:
        refiltered = cursor.filters != chosen
        for key, value in settings.items():
            setattr(cursor, key, value)
        updated = list(settings)
        # Other filters, other rows: what the old ones skipped is not here.
        # A pull that began with a snapshot takes a new one.
        if refiltered and cursor.snapshots and cursor.phase != PullCursor.Phase.SNAPSHOT:
            cursor.phase = PullCursor.Phase.SNAPSHOT
            cursor.snapshot_models, cursor.snapshot_next, cursor.feed_position = [], "", ""
            updated += ["phase", "snapshot_models", "snapshot_next", "feed_position"]
        if cursor.phase == PullCursor.Phase.DONE and not once:
            cursor.phase = PullCursor.Phase.FEED
            updated.append("phase")
        # Only these: a worker may be moving the position or holding the lease.
        cursor.save(update_fields=updated)
        if lease_owner:
            CURSORS.hold(cursor.id, lease_owner)
    if enqueue:
        PULL.wake([cursor.id], force=True)
    return cursor


def pull_up(url: str, handler: Handler | str, **options: Any) -> PullCursor:
    """Follow only what changes from now on (no snapshot): :func:`pull` with start="now"."""
    return pull(url, handler, **{**options, "start": "now"})


def pull_down(url: str, handler: Handler | str, **options: Any) -> PullCursor:
    """Walk everything once (the snapshot, then the feed up to now) and stop."""
    return pull(url, handler, **{**options, "once": True})


# -- running a pull --------------------------------------------------------------


CURSORS = jobs.LeaseSpec(
    table="pubsubpull_pullcursor",
    runnable="state IN ('active', 'failing') AND phase <> 'done'",
    due="next_run_at",
    lease=conf.pull_lease,
    retry_base=conf.pull_retry_base,
    retry_max=conf.pull_retry_max,
    sweep="true",  # every due, free cursor: retries, lost jobs, every=N
)


def backoff(failures: int, retry_after: float | None = None) -> float:
    """Seconds to wait after the ``failures``-th failure in a row, with jitter.

    The engine's schedule from PULL_RETRY_BASE, capped at PULL_RETRY_MAX.
    """
    return CURSORS.backoff(failures, retry_after)


@dataclass
class Progress:
    """What a foreground pull reports after each page."""

    cursor: PullCursor
    handled: int
    phase: str
    caught_up: bool = False
    restarted: bool = False


class Runner:
    """One claimed cursor, run page by page until a deadline."""

    def __init__(
        self,
        cursor: PullCursor,
        owner: str,
        deadline: float,
        progress: Callable[[Progress], None] | None = None,
    ):
        self.cursor = cursor
        self.owner = owner
        self.deadline = deadline
        self.progress = progress
        self.handler = resolve_handler(cursor.handler)
        self.publisher = Publisher(cursor.service_url, cursor.token)
        self._fetcher: ThreadPoolExecutor | None = None
        self._prefetched: tuple[tuple, Future] | None = None

    # While the handler works on one page the next one is already on its
    # way (keyset pages and feed pages say where the next one starts), so
    # the publisher's time and ours overlap. A prefetched page is only used
    # if the cursor did move to where it starts.
    def get(self, url: str, params: dict[str, Any] | None = None, timeout=None, fetch=get_json):
        key = (url, tuple(sorted((params or {}).items())))
        if self._prefetched is not None:
            prefetched_key, future = self._prefetched
            self._prefetched = None
            if prefetched_key == key:
                return future.result()
            # Defensive, not reached: a page is prefetched from where it says the
            # next starts, and committing it moves the cursor there. Were they to
            # differ, the prefetched page is not the one asked for.
            future.cancel()  # pragma: no cover
        return fetch(url, token=self.cursor.token, params=params, timeout=timeout)

    def prefetch(
        self, url: str, params: dict[str, Any] | None = None, timeout=None, fetch=get_json
    ) -> None:
        if self._fetcher is None:
            self._fetcher = ThreadPoolExecutor(1, thread_name_prefix="pubsubpull-prefetch")
        key = (url, tuple(sorted((params or {}).items())))
        future = self._fetcher.submit(
            fetch, url, token=self.cursor.token, params=params, timeout=timeout
        )
        self._prefetched = (key, future)

    def close(self) -> None:
        if self._prefetched is not None:
            self._prefetched[1].cancel()
            self._prefetched = None
        if self._fetcher is not None:
            self._fetcher.shutdown(wait=False, cancel_futures=True)
            self._fetcher = None

    # Each page: the handler's work and the cursor's move, in one transaction.
    def commit(
        self,
        events: list[Event],
        snapshot: tuple[bool, bool] | None = None,
        position: str = "",
        **fields: Any,
    ) -> None:
        cursor = self.cursor
        with transaction.atomic():
            held = (
                PullCursor.objects.select_for_update()
                .filter(id=cursor.id, lease_owner=self.owner)
                .values_list("phase", "snapshot_next", "feed_position", "park_failures")
                .first()
            )
            if held is None or held[:3] != (
                cursor.phase,
                cursor.snapshot_next,
                cursor.feed_position,
            ):
                raise LostLease(cursor.name)
            if held[3]:
                apply_parking(self.cursor, self.handler, events, snapshot, position)
                fields["park_failures"] = False
            elif events or (snapshot is not None and snapshot[1]):
                try:
                    with tracing.receive_span(cursor.name, count=len(events)):
                        call_handler(
                            self.handler, behind_parked(cursor, events, position), snapshot
                        )
                except CANNOT_APPLY as e:
                    raise PageCannotApply(e, position) from e
            now = timezone.now()
            PullCursor.objects.filter(id=cursor.id).update(
                **fields,
                rows=F("rows") + len(events),
                last_success_at=now,
                failures=0,
                state=PullCursor.State.ACTIVE,
                lease_expires=now + timedelta(seconds=conf.pull_lease()),
            )
        for key, value in fields.items():
            setattr(cursor, key, value)
        cursor.rows += len(events)
        cursor.failures = 0

    def renew(self) -> None:
        """Hold the cursor PULL_LEASE seconds more without a page to commit (a long poll
        that brought nothing), so a worker does not take it from a foreground pull."""
        if not CURSORS.renew(self.cursor.id, self.owner):
            raise LostLease(self.cursor.name)

    def restart_snapshot(self, reason: str) -> None:
        cursor = self.cursor
        logger.warning(
            "pull %s: %s; taking a new snapshot (snapshot number %d)",
            cursor.name,
            reason,
            cursor.snapshots + 1,
            extra={
                "pubsubpull": {
                    "event": "pull_resnapshot",
                    "cursor": cursor.name,
                    "reason": reason,
                    "snapshots": cursor.snapshots + 1,
                }
            },
        )
        self.commit(
            [],
            phase=PullCursor.Phase.SNAPSHOT,
            snapshot_models=[],
            snapshot_next="",
            feed_position="",
        )
        if self.progress:
            self.progress(Progress(cursor, 0, cursor.phase, restarted=True))

    def snapshot_page(self) -> None:
        cursor = self.cursor
        models = list(cursor.snapshot_models)
        fresh = not models and not cursor.snapshot_next
        if fresh:
            models = list(cursor.model_labels) or self.publisher.labels()
            if not models:
                self.commit([], phase=PullCursor.Phase.FEED)
                return
        params: dict[str, Any] | None = None
        if cursor.snapshot_next:
            url = cursor.snapshot_next
        else:
            url, params = self.publisher.instances_url(models[0]), {"limit": cursor.page_size}
            if cursor.filters.get(models[0]):
                # (The next pages' URLs carry it on.)
                params["filters"] = filtering.encode({models[0]: cursor.filters[models[0]]})
        body = self.get(url, params)
        if body.get("next"):
            self.prefetch(body["next"])
        label = body.get("model", models[0])
        events = [Event.from_instance(label, item) for item in body["instances"]]
        position = f"the snapshot page {cursor.snapshot_next or f'1 of {models[0]}'}"
        fields: dict[str, Any] = {"snapshot_models": models}
        if fresh:
            fields["snapshots"] = cursor.snapshots + 1
        if body.get("feed_position") and not cursor.feed_position:
            # The first page of the first model: following the feed from
            # here after the last page misses nothing (later models' pages
            # only add changes the sequences let handlers drop).
            fields["feed_position"] = body["feed_position"]
        fields["snapshot_next"] = body.get("next") or ""
        if not fields["snapshot_next"]:
            fields["snapshot_models"] = models[1:]
            if not models[1:]:
                fields["phase"] = PullCursor.Phase.FEED
        last = fields.get("phase") == PullCursor.Phase.FEED
        self.commit(events, snapshot=(fresh, last), position=position, **fields)
        if self.progress:
            self.progress(Progress(cursor, len(events), PullCursor.Phase.SNAPSHOT))

    def feed_page(self, wait: float) -> bool:
        """Handle one page of the feed; True if caught up."""
        cursor = self.cursor
        params: dict[str, Any] = {"limit": cursor.page_size}
        if cursor.feed_position:
            params["after"] = cursor.feed_position
        if cursor.model_labels:
            params["models"] = ",".join(cursor.model_labels)
        if cursor.whole_transactions:
            params["whole_transactions"] = "1"
        if cursor.filters:
            params["filters"] = filtering.encode(cursor.filters)
        if wait > 0:
            params["wait"] = f"{wait:.1f}"
        # A CloudEvents batch is read into the same shape (source.get_events_page).
        fetch = get_events_page if cursor.framing == "cloudevents" else get_json
        try:
            body = self.get(
                self.publisher.changes_url(),
                params,
                timeout=conf.pull_timeout() + wait,
                fetch=fetch,
            )
        except Gone as e:
            self.restart_snapshot(f"the publisher's change log no longer reaches our cursor ({e})")
            return False
        events = [Event.from_change(item) for item in body["changes"]]
        if cursor.whole_transactions:
            # A whole-transactions page may end short of the limit at a
            # transaction boundary with more to come: only an empty one is the end.
            caught_up = not events
        else:
            # "more": a filtered page stopped at the publisher's scan bound.
            caught_up = len(events) < cursor.page_size and not body.get("more")
        if not caught_up:
            following = {k: v for k, v in params.items() if k != "wait"}
            self.prefetch(
                self.publisher.changes_url(), {**following, "after": body["cursor"]}, fetch=fetch
            )
        fields: dict[str, Any] = {}
        if body["cursor"] != cursor.feed_position:
            fields["feed_position"] = body["cursor"]
        if caught_up and cursor.once:
            fields["phase"] = PullCursor.Phase.DONE
        if events or fields:
            self.commit(events, position=f"the feed after {cursor.feed_position or 'its start'}",
                        **fields)  # fmt: skip
        else:
            self.renew()
        if self.progress:
            self.progress(Progress(cursor, len(events), PullCursor.Phase.FEED, caught_up))
        return caught_up

    def run(self, *, stop_when_caught_up: bool = False) -> Outcome:
        """Pages until the deadline: ``more``, ``caught_up`` or ``done``."""
        cursor = self.cursor
        wait = 0.0
        # A cursor is claimed only if it is not done (CURSORS.runnable), and
        # only this runner moves it while it holds the lease: done is found
        # below, after the page that finished it.
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return Outcome.MORE
            if cursor.phase == PullCursor.Phase.SNAPSHOT:
                self.snapshot_page()
                continue
            caught_up = self.feed_page(min(wait, remaining))
            if not caught_up:
                wait = 0.0
                continue
            if cursor.phase == PullCursor.Phase.DONE:
                return Outcome.DONE
            if stop_when_caught_up or cursor.every > 0:
                return Outcome.CAUGHT_UP
            # Follow: long-poll for the next change while the budget lasts.
            wait = conf.pull_wait()


def release(cursor_id: int, owner: str) -> None:
    """Give up a cursor held by ``owner`` (the pull command, when it exits).

    A wake that came while it was held is handed to a worker.
    """
    if CURSORS.release(cursor_id, owner):
        PULL.wake([cursor_id], force=True)


def run(
    cursor_id: int,
    *,
    budget: float | None = None,
    progress: Callable[[Progress], None] | None = None,
    stop_when_caught_up: bool = False,
    now: bool = False,
    raise_errors: bool = False,
    owner: str | None = None,
) -> Outcome:
    """Run a pull until caught up or ``budget`` seconds pass (the job, and the command).

    Returns ``busy`` (another worker holds it, or it is not due), ``more``
    (the budget ran out: it is enqueued again), ``caught_up``, ``done``
    (a pull_down finished), ``failed`` (the error is recorded in the
    cursor, which is retried after a backoff) or ``blocked`` (a page that can
    never apply: recorded, not retried until resumed or parked). ``now`` runs
    it even if a backoff is pending; ``raise_errors`` raises the error after
    recording it. ``owner`` is a lease owner that holds the cursor across runs
    (the pull command): it may claim the cursor while its lease lasts, and
    keeps holding it afterwards, until :func:`release`.
    """
    return jobs.run(
        PULL,
        cursor_id,
        owner=owner,
        budget=budget,
        now=now,
        progress=progress,
        stop_when_caught_up=stop_when_caught_up,
        raise_errors=raise_errors,
    )


def _let_go(lease: jobs.Lease, *, next_in: float | None = None, spent: bool = False,
            **fields: Any) -> bool:  # fmt: skip
    """Release the cursor, setting ``fields`` (columns) in the same statement."""
    return lease.release(
        assignments=[f"{column} = %({column})s" for column in fields],
        params=fields,
        next_in=next_in,
        spent=spent,
    )


def _work(
    lease: jobs.Lease,
    row: tuple,
    deadline: float,
    *,
    progress: Callable[[Progress], None] | None = None,
    stop_when_caught_up: bool = False,
    raise_errors: bool = False,
) -> jobs.Ending:
    """The engine's work on a claimed cursor: pages until the deadline; then let go."""
    cursor = PullCursor.objects.get(id=lease.id)
    try:
        runner = Runner(cursor, lease.owner, deadline, progress)
        try:
            outcome = runner.run(stop_when_caught_up=stop_when_caught_up)
        finally:
            runner.close()
    except LostLease:
        logger.warning("pull %s: another worker took the cursor; leaving it", cursor.name)
        return jobs.Ending(Outcome.BUSY)
    except PageCannotApply as e:
        error = (
            f"{e} (at {e.position}). This page can never apply as it is: fix the cause and "
            "resume the cursor, or park the events that fail and go on (the admin's "
            "actions, or manage.py pubsubpull_cursors park/resume)."
        )
        logger.error(
            "pull %s blocked: %s",
            cursor.name,
            error,
            extra={"pubsubpull": {"event": "pull_blocked", "cursor": cursor.name}},
        )
        # Blocked waits for an operator: any wake meanwhile is spent.
        _let_go(
            lease,
            spent=True,
            state=PullCursor.State.BLOCKED,
            failures=cursor.failures + 1,
            last_error=error[:4000],
            last_error_at=timezone.now(),
        )
        cursor.state, cursor.last_error = PullCursor.State.BLOCKED, error
        if raise_errors:
            raise
        return jobs.Ending(Outcome.BLOCKED)
    except Exception as e:
        failures = cursor.failures + 1
        retry_after = e.retry_after if isinstance(e, SourceError) else None
        delay = backoff(failures, retry_after)
        error = f"{type(e).__name__}: {e}"
        logger.log(
            logging.WARNING if isinstance(e, SourceError) else logging.ERROR,
            "pull %s failed (%s); next try in %.1f s",
            cursor.name,
            error,
            delay,
            exc_info=not isinstance(e, SourceError),
        )
        _let_go(
            lease,
            next_in=delay,
            state=PullCursor.State.FAILING,
            failures=failures,
            last_error=error[:4000],
            last_error_at=timezone.now(),
        )
        cursor.failures, cursor.last_error = failures, error
        if raise_errors:
            raise
        return jobs.Ending(Outcome.FAILED)
    if outcome is Outcome.CAUGHT_UP and cursor.every > 0:
        woken = _let_go(lease, next_in=cursor.every)
    else:
        woken = _let_go(lease)
    return jobs.Ending(outcome, woken)


PULL = jobs.register(
    jobs.Kind(
        name="pull",
        spec=CURSORS,
        work=_work,
        budget=conf.pull_budget,
    )
)


# -- the operator's actions on cursors (the admin, manage.py pubsubpull_cursors) --


def _now_due(cursors: Iterable[PullCursor], **fields: Any) -> list[int]:
    ids = [c.id for c in cursors]
    PullCursor.objects.filter(id__in=ids).update(
        state=PullCursor.State.ACTIVE, next_run_at=timezone.now(), **fields
    )
    PULL.wake(ids, force=True)
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


# -- read your writes ------------------------------------------------------------


def applied_position(cursor: PullCursor | str | int) -> Position | None:
    """Where a pull cursor has applied the feed to (None: still in its snapshot, or unknown).

    Every change at or before it has been handled and committed: the snapshot
    covers the feed up to its ``feed_position``, and each feed page commits
    its cursor with its handler's writes.
    """
    rows = PullCursor.objects.all()
    if isinstance(cursor, PullCursor):
        rows = rows.filter(pk=cursor.pk)
    elif isinstance(cursor, int):
        rows = rows.filter(pk=cursor)
    else:
        rows = rows.filter(name=cursor)
    row = rows.values_list("phase", "feed_position").first()
    if row is None or row[0] == PullCursor.Phase.SNAPSHOT:
        return None
    return feed_cursor.parse(row[1])


def wait_for(
    cursor: PullCursor | str | int,
    position: Position | str | None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    database: str | None = None,
) -> Position | None:
    """Return once the pull ``cursor`` (a row, its name or id) has applied ``position``.

    ``position`` is a publisher's ``Pubsubpull-Position`` header value (or a
    cursor); None returns at once. Raises :class:`~pubsubpull.exceptions.WaitTimeout`
    after ``timeout`` seconds. See :mod:`pubsubpull.client.waiting`.
    """
    name = cursor.name if isinstance(cursor, PullCursor) else cursor
    return wait_until_applied(
        lambda: applied_position(cursor),
        position,
        timeout=timeout,
        what=f"The pull {name!r}",
        database=database,
    )
