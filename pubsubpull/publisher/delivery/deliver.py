"""Deliver a subscription's backlog: claim it, PUT batches, record, advance or back off.

Delivery is a kind of job of the engine (``pubsubpull.jobs``): its rows are
subscriptions, its lease ``LEASE`` seconds. One batch in flight per
subscription: a worker first claims the subscription (in one short
statement), then sends batch after batch, renewing the lease, until the
receiver is caught up, fails, or the worker's time budget runs out. No
transaction is held open during a request: an open transaction would hold
back every reader's feed fence.

Wakes come by model (the capture trigger's NOTIFY: :func:`wake_models`), by
id (``DELIVERY.wake``) and by the engine's sweep, which wakes due
subscriptions with a batch to retry or changes past their position (and
forbidden ones, to check their owner's access again).

The position only moves after a 2xx, in the statement that records the
attempt, and only while the worker still holds the lease. A worker that dies
mid-request leaves its lease to expire and its batch (same changes, same
``webhook-id``) to be sent again by another worker: at least once, in order.

Before each batch the owner's access is checked again (``access.py``): a
revoked token or an inactive user sends nothing more and the subscription
shows ``forbidden`` until access returns. A receiver that refuses a batch
(413, or the same 4xx twice) is sent smaller batches until the change it
refuses is alone; then the subscription shows ``blocked``, naming it, and
an operator can park it (``parking.py``) so the rest goes on in order. A
whole-transactions subscription (``whole_transactions``) is only ever sent
whole transactions: a refused batch narrows to fewer transactions, a single
transaction still refused is ``blocked`` as a whole, and parking it parks
all its changes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
from django.db import IntegrityError, connection

from pubsubpull import conf, jobs, tracing
from pubsubpull.exceptions import InvalidFilter, Unsubscribed
from pubsubpull.jobs.lease import HELD, LET_GO, RENEWED, SPENT, execute
from pubsubpull.jobs.outcome import Outcome
from pubsubpull.protocol import cloudevents, notification
from pubsubpull.protocol.retry_after import parse_retry_after
from pubsubpull.publisher import feed, framing
from pubsubpull.publisher.delivery import access, guard, signing
from pubsubpull.version import __version__

logger = logging.getLogger("pubsubpull.delivery")

USER_AGENT = f"django-pubsubpull/{__version__}"


# States a worker delivers (or, when forbidden, checks access for).
DELIVERABLE = ["active", "failing", "blocked", "forbidden"]


@dataclass
class Claimed:
    id: int
    name: str
    subscriber: str  # the subscription's owner (token:N or user:N)
    state: str
    callback: str
    models: list[str]
    batch_size: int
    position: feed.Position
    pending_batch: str
    pending: feed.Position | None
    pending_count: int
    secrets: list[str]
    failures: int
    # Never split a transaction across batches (also when narrowing a refused one).
    whole_transactions: bool = False
    framing: str = "pubsubpull"  # or "cloudevents"
    # Its filters as stored (label -> canonical JSON); parsed when read.
    filters: dict[str, Any] = field(default_factory=dict)
    woken: bool = False  # a wake came while we held it (set when letting go)
    # An empty read moved past other models' changes: from where (the
    # position as claimed), recorded when letting go if nobody moved it since.
    skipped_from: feed.Position | None = None


# Due subscriptions nobody holds that have a batch to retry or committed
# changes past their position. Whether those are behind the feed's fence yet
# is the feed's to say when the job reads them (a job finding them held back
# by an open transaction waits for it a little, then the next sweep retries).
# A forbidden one is due to have its owner's access checked again, backlog or
# not, so that its state says the truth.
_SWEEP = "pending_batch <> '' OR state = 'forbidden' OR " + feed.pending_sql(
    "position_txid, position_id", "model_labels", jsonb=True
)

SUBSCRIPTIONS = jobs.LeaseSpec(
    table="pubsubpull_subscription",
    runnable="state IN (" + ", ".join(f"'{state}'" for state in DELIVERABLE) + ")",
    due="next_attempt_at",
    lease=conf.lease,
    retry_base=conf.retry_base,
    retry_max=conf.retry_max,
    sweep=_SWEEP,
    columns="""t.id, t.name, t.owner, t.state, t.callback, t.model_labels, t.batch_size,
          t.position_txid, t.position_id, t.pending_batch, t.pending_txid, t.pending_id,
          t.pending_count, t.secret,
          CASE WHEN t.previous_secret_expires > now() THEN t.previous_secret ELSE '' END,
          t.failures, t.whole_transactions, t.framing, t.filters""",
)

# Letting go also records how far an empty read skipped (past other models'
# changes), so the next read does not scan them again; only if the position
# is still the one the read started from (a replay or a park meanwhile wins).
_SKIPPED = [
    """position_txid = CASE WHEN pending_batch = '' AND (position_txid, position_id)
        = (%(from_txid)s, %(from_pid)s) THEN %(txid)s ELSE position_txid END""",
    """position_id = CASE WHEN pending_batch = '' AND (position_txid, position_id)
        = (%(from_txid)s, %(from_pid)s) THEN %(pid)s ELSE position_id END""",
]

# A batch read after changes its filters skipped records the skip with it: a
# retry (by any worker) reads the batch again from the same position.
_BEGIN_BATCH_SQL = f"""
UPDATE pubsubpull_subscription
SET pending_batch = %(batch)s, pending_txid = %(txid)s, pending_id = %(pid)s,
    pending_count = %(count)s, {RENEWED},
    {", ".join(_SKIPPED).replace("%(txid)s", "%(read_txid)s").replace("%(pid)s", "%(read_pid)s")}
WHERE {HELD}
"""

_ATTEMPT_SQL = """
attempt AS (
    INSERT INTO pubsubpull_attempt (subscription_id, at, webhook_id, changes, first_change_id,
                                    last_change_id, status, duration, error, response, worker)
    -- From the subscription row, so an unsubscribe meanwhile records nothing.
    SELECT id, %(at)s, %(batch)s, %(count)s, %(first)s, %(last)s, %(status)s,
           %(duration)s, %(error)s, %(response)s, %(owner)s
    FROM pubsubpull_subscription WHERE id = %(id)s
)
"""

_SUCCESS_SQL = (
    """
WITH more AS MATERIALIZED (
    -- Any committed change past the new position (behind the fence or not)?
    -- If none, the subscription is caught up and is let go in this statement;
    -- a change committed later wakes it by its own notification.
    SELECT """
    + feed.pending_sql("%(txid)s, %(pid)s", "%(models)s")
    + """ AS more
),
updated AS (
    UPDATE pubsubpull_subscription
    SET position_txid = %(txid)s, position_id = %(pid)s,
        pending_batch = '', pending_txid = NULL, pending_id = NULL, pending_count = 0,
        delivered = delivered + %(count)s,
        failures = 0, failing_since = NULL,
        state = CASE WHEN state IN ('failing', 'blocked') THEN 'active' ELSE state END,
        state_reason = CASE WHEN state IN ('failing', 'blocked') THEN '' ELSE state_reason END,
        next_attempt_at = now(), last_attempt_at = now(), last_success_at = now(),
        last_error = '',
        lease_owner = CASE WHEN (SELECT more FROM more) THEN lease_owner ELSE '' END,
        lease_expires = CASE WHEN (SELECT more FROM more)
                             THEN now() + %(lease)s * interval '1 second' END
    WHERE id = %(id)s AND lease_owner = %(owner)s AND pending_batch = %(batch)s
    RETURNING wake_requested_at IS NOT NULL AS woken
),
"""
    + _ATTEMPT_SQL
    + "SELECT count(*), coalesce(bool_or(woken), false), (SELECT more FROM more) FROM updated"
)

# A failure keeps the pending batch (same changes, same webhook-id next time),
# counts the streak, and disables the subscription when the receiver said 410
# or has been failing for DISABLE_AFTER. A refused batch (``refused``: 413 or
# a repeated 4xx) makes it ``blocked`` instead, and a blocked subscription
# stays blocked through other errors and is never disabled by the streak: it
# waits for its receiver or an operator. A pause by an operator meanwhile
# wins. Letting go for a later retry uses up any wake that came while the
# batch was in flight: the sweep wakes the subscription when the retry is
# due (a flag left set would refuse that wake until it aged past LEASE).
_FAILURE_SQL = (
    """
WITH updated AS (
    UPDATE pubsubpull_subscription
    SET failures = failures + 1,
        failing_since = coalesce(failing_since, now()),
        state = CASE
            WHEN state IN ('paused', 'disabled') THEN state
            WHEN %(gone)s THEN 'disabled'
            WHEN %(refused)s OR state = 'blocked' THEN 'blocked'
            WHEN now() - coalesce(failing_since, now())
                 >= %(disable_after)s * interval '1 second' THEN 'disabled'
            ELSE 'failing' END,
        state_reason = CASE
            WHEN state IN ('paused', 'disabled') THEN state_reason
            WHEN %(gone)s THEN 'The receiver answered 410 Gone.'
            WHEN %(refused)s THEN %(refused_reason)s
            WHEN state = 'blocked' THEN state_reason
            WHEN now() - coalesce(failing_since, now())
                 >= %(disable_after)s * interval '1 second'
                THEN 'Every delivery failed for ' || %(disable_after_text)s || '.'
            ELSE 'Retrying with backoff.' END,
        next_attempt_at = now() + %(delay)s * interval '1 second',
        last_attempt_at = now(), last_error = %(error)s,
        """
    + f"{LET_GO}, {SPENT} WHERE {HELD}"
    + """ AND pending_batch = %(batch)s
    RETURNING id
),
"""
    + _ATTEMPT_SQL
    + "SELECT count(*) FROM updated"
)

# A refused batch of several changes: keep the lease and send its first
# ``count`` changes alone at once, as a new batch (a new webhook-id: it is a
# different message), to find the change the receiver refuses.
_SPLIT_SQL = (
    """
WITH updated AS (
    UPDATE pubsubpull_subscription
    SET failures = failures + 1,
        failing_since = coalesce(failing_since, now()),
        state = CASE WHEN state IN ('paused', 'disabled', 'blocked') THEN state
                     ELSE 'failing' END,
        state_reason = CASE WHEN state IN ('paused', 'disabled', 'blocked') THEN state_reason
                            ELSE %(split_reason)s END,
        pending_batch = %(new_batch)s, pending_txid = %(new_txid)s, pending_id = %(new_pid)s,
        pending_count = %(new_count)s,
        last_attempt_at = now(), last_error = %(error)s,
        """
    + f"{RENEWED} WHERE {HELD}"
    + """ AND pending_batch = %(batch)s
    RETURNING id
),
"""
    + _ATTEMPT_SQL
    + "SELECT count(*) FROM updated"
)

# The owner lost access: send nothing, say why, look again in ACCESS_RECHECK.
_FORBIDDEN = [
    "state = CASE WHEN state IN ('paused', 'disabled') THEN state ELSE 'forbidden' END",
    """state_reason = CASE WHEN state IN ('paused', 'disabled') THEN state_reason
                        ELSE %(reason)s END""",
]

# Access is back: deliver again from the position, as if never stopped.
_ALLOWED_AGAIN_SQL = f"""
UPDATE pubsubpull_subscription
SET state = CASE WHEN failures > 0 THEN 'failing' ELSE 'active' END,
    state_reason = CASE WHEN failures > 0 THEN 'Retrying with backoff.' ELSE '' END
WHERE {HELD} AND state = 'forbidden'
"""


def _execute(sql: str, params: dict[str, Any]) -> list[tuple]:
    try:
        return execute(sql, params)
    except IntegrityError as e:  # deleted between our statement's snapshot and its write
        raise Unsubscribed(params.get("id")) from e


def _claimed(row: tuple) -> Claimed:
    """The subscription as the engine's claim returned it (SUBSCRIPTIONS.columns)."""
    (id_, name, subscriber, state, callback, models, size, ptx, pid, pbatch, pendtx, pendid,
     pcount, secret, previous, failures, whole, framing_, filters) = row  # fmt: skip
    return Claimed(
        id=id_,
        name=name,
        subscriber=subscriber,
        state=state,
        callback=callback,
        models=json.loads(models) if isinstance(models, str) else list(models),
        batch_size=size,
        position=feed.Position(ptx, pid),
        pending_batch=pbatch,
        pending=feed.Position(pendtx, pendid) if pbatch else None,
        pending_count=pcount,
        secrets=[secret, previous],
        failures=failures,
        whole_transactions=whole,
        framing=framing_,
        filters=(json.loads(filters) if isinstance(filters, str) else filters) or {},
    )


def release(sub: Claimed, owner: str) -> bool:
    """Give the subscription up; True if a wake was requested while we held it."""
    skipped = sub.skipped_from or feed.Position(-1, -1)  # -1: no skip to record
    params = {
        "txid": sub.position.txid,
        "pid": sub.position.id,
        "from_txid": skipped.txid,
        "from_pid": skipped.id,
    }
    return SUBSCRIPTIONS.release(sub.id, owner, assignments=_SKIPPED, params=params)


@dataclass
class Response:
    status: int | None
    error: str
    body: str
    retry_after: float | None
    duration: float


_client: httpx.Client | None = None
_client_lock = threading.Lock()


def http_client() -> httpx.Client:
    """The process's guarded HTTP client (connections are pooled per callback host)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = guard.client(headers={"user-agent": USER_AGENT})
        return _client


def send(url: str, body: bytes, headers: dict[str, str]) -> Response:
    """PUT ``body`` to ``url`` once; never raises for what the receiver or network does."""
    excerpt_size = conf.response_excerpt()
    total = conf.timeout()
    timeout = httpx.Timeout(total, connect=conf.connect_timeout())
    started = time.monotonic()
    status, error, excerpt, retry_after = None, "", b"", None
    try:
        with http_client().stream(
            "PUT", url, content=body, headers=headers, timeout=timeout
        ) as response:
            status = response.status_code
            if status in (429, 503):
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            for chunk in response.iter_raw():
                excerpt += chunk
                if len(excerpt) >= excerpt_size or time.monotonic() - started > total:
                    break
    except httpx.TimeoutException as e:
        error = f"timed out after {time.monotonic() - started:.1f} s ({type(e).__name__})"
    except httpx.HTTPError as e:
        error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    duration = time.monotonic() - started
    text = excerpt[:excerpt_size].decode("utf-8", "replace")
    if status is not None and not 200 <= status < 300 and not error:
        error = f"HTTP {status}"
    return Response(status, error, text, retry_after, duration)


def backoff(failures: int, retry_after: float | None = None) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1 for the first).

    The engine's schedule (``pubsubpull.jobs.backoff``) from RETRY_BASE,
    capped at RETRY_MAX; a Retry-After is honoured, up to RETRY_MAX.
    """
    return SUBSCRIPTIONS.backoff(failures, retry_after)


def _envelope_size(sub: Claimed, page: feed.Page) -> int:
    """An upper bound of a body's bytes besides its changes' (see :func:`within`)."""
    return notification.overhead(sub.name, max((len(c.at_text) for c in page.changes), default=0))


def within(
    page: feed.Page,
    max_bytes: int,
    envelope: int,
    texts: list[str] | None = None,
    *,
    whole_transactions: bool = False,
) -> feed.Page:
    """The longest start of ``page`` whose body fits in ``max_bytes``.

    ``envelope`` is what the body holds besides the changes (an upper
    bound); ``texts`` what the body holds per change, if not the change
    items (CloudEvents). A first change larger than the cap on its own goes alone: it
    can never be sent in a smaller batch. When changes are cut off, the
    page's ``next`` is the last kept change's position, so the rest follow
    in the next batch. ``whole_transactions`` cuts only between
    transactions: the whole ones that fit, or the first one alone however
    large.
    """
    size = envelope + 2  # the brackets
    for n, text in enumerate(page.texts() if texts is None else texts):
        size += (len(text) if text.isascii() else len(text.encode())) + (1 if n else 0)
        if size > max_bytes and n > 0:
            if whole_transactions:
                ends = feed.transaction_ends(page.changes)
                fitting = [end for end in ends if end <= n]
                n = fitting[-1] if fitting else ends[0]
                if n == len(page.changes):
                    return page
            return page.head(n)
    return page


def signed_headers(
    secrets: list[str],
    webhook_id: str,
    body: bytes,
    now: datetime,
    content_type: str = "application/json",
) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt, at ``now``, to send ``body``."""
    return {
        "content-type": content_type,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signing.signature(secrets, webhook_id, now, body.decode()),
    }


def refused(status: int | None) -> bool:
    """A 4xx that sending the same batch again will not change (not 408, 410 or 429).

    410 disables; 408 and 429 say "not now", not "never".
    """
    return status is not None and 400 <= status < 500 and status not in (408, 410, 429)


def notification_body(sub: Claimed, page: feed.Page, following: feed.Position) -> tuple[bytes, str]:
    """The body of a batch of ``page``'s changes, in the subscription's framing, and its type."""
    changes = page.changes
    if sub.framing == "cloudevents":
        texts = page.texts()[: len(changes)]
        body = framing.batch_bytes(changes, texts, subscription=sub.name)
        return body, cloudevents.BATCH_CONTENT_TYPE
    body = notification.body(sub.name, changes[-1].at_text, page.changes_json(), following.encode())
    return body, "application/json"


def deliver_batch(sub: Claimed, owner: str) -> Outcome:
    """Send the subscription's next batch once.

    Returns ``sent``, ``done`` (sent, caught up and let go), ``caught_up``,
    ``held_back`` (changes wait behind an older open transaction), ``failed``,
    ``forbidden`` (its owner lost access; nothing sent) or ``lost`` (the lease
    ran out, or the batch was forgotten meanwhile: replayed or parked).
    """
    try:
        return _deliver_batch(sub, owner)
    except Unsubscribed:
        return Outcome.LOST
    except feed.CursorExpired:
        _execute(_EXPIRED_SQL, {"id": sub.id, "owner": owner})
        logger.warning(
            "Subscription %s fell behind the pruned change log: disabled",
            sub.name,
            extra={"pubsubpull": {"event": "subscription_disabled", "subscription": sub.name}},
        )
        return Outcome.FAILED


_EXPIRED_SQL = f"""
UPDATE pubsubpull_subscription
SET state = 'disabled', {LET_GO}, {SPENT},
    state_reason = 'The change log was pruned past this subscription''s position, so '
        'changes may be missing. Take a new snapshot and subscribe again with start '
        'set to its feed_position.'
WHERE {HELD}
"""


def _check_access(sub: Claimed, owner: str) -> bool:
    """Whether the owner may still receive; if not, the subscription says why and is let go."""
    reason = access.refusal(sub.subscriber, sub.models)
    if reason:
        SUBSCRIPTIONS.release(
            sub.id,
            owner,
            assignments=_FORBIDDEN,
            params={"reason": reason},
            next_in=conf.access_recheck(),
        )
        if sub.state != "forbidden":
            logger.warning(
                "Subscription %s sends nothing: %s",
                sub.name,
                reason,
                extra={"pubsubpull": {"event": "subscription_forbidden", "subscription": sub.name}},
            )
        sub.state = "forbidden"
        return False
    if sub.state == "forbidden":
        _execute(_ALLOWED_AGAIN_SQL, {"id": sub.id, "owner": owner})
        logger.info(
            "Subscription %s: its owner may read its models again; delivering",
            sub.name,
            extra={"pubsubpull": {"event": "subscription_allowed", "subscription": sub.name}},
        )
        sub.state = "active"
    return True


def _previous_status(sub: Claimed, webhook_id: str) -> int | None:
    """The status of the last attempt to send this batch before, if any."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status FROM pubsubpull_attempt WHERE subscription_id = %s "
            "AND webhook_id = %s ORDER BY at DESC LIMIT 1",
            [sub.id, webhook_id],
        )
        row = cursor.fetchone()
    return row[0] if row else None


def _describe_change(change: feed.FeedChange) -> str:
    return f"change {change.id} ({change.model} {change.pk})"


def _describe_refused(sub: Claimed, changes: list[feed.FeedChange]) -> str:
    """What a refused batch that cannot be narrowed further is: a change, or a transaction."""
    if sub.whole_transactions and len(changes) > 1:
        return (
            f"transaction {changes[0].txid} ({len(changes)} changes, {changes[0].id} to "
            f"{changes[-1].id}; parking {_describe_change(changes[0])} parks all of them)"
        )
    return _describe_change(changes[0])


def _narrower(sub: Claimed, changes: list[feed.FeedChange]) -> list[int]:
    """The sizes a refused batch may be narrowed to (its own size last).

    Any number of changes; for a whole-transactions subscription only whole
    transactions, so a single transaction is not narrowed: it is refused as
    a whole.
    """
    if sub.whole_transactions:
        return feed.transaction_ends(changes)
    return list(range(1, len(changes) + 1))


_INVALID_FILTER_SQL = f"""
UPDATE pubsubpull_subscription
SET state = 'disabled', {LET_GO}, {SPENT}, state_reason = %(reason)s
WHERE {HELD}
"""


def _deliver_batch(sub: Claimed, owner: str) -> Outcome:
    if not _check_access(sub, owner):
        return Outcome.FORBIDDEN
    try:
        filters = feed.parse_filters(sub.filters, sub.models) if sub.filters else {}
    except InvalidFilter as exc:
        # The registration changed under the filter (a field no longer
        # published): sending unfiltered changes would send what was not
        # asked for, so stop and say why; a PUT with filters that fit resumes.
        reason = (
            f"Its filters no longer fit the published fields ({exc}). PUT the "
            "subscription again with filters that do; it resumes where it stopped."
        )
        _execute(_INVALID_FILTER_SQL, {"id": sub.id, "owner": owner, "reason": reason})
        logger.warning(
            "Subscription %s disabled: %s",
            sub.name,
            reason,
            extra={"pubsubpull": {"event": "subscription_disabled", "subscription": sub.name}},
        )
        return Outcome.FAILED
    if sub.pending_batch:
        # A retry carries exactly the batch that was sent before: the first
        # pending_count changes after the position (nothing new can sort
        # before the pending end; it was at or before a fence; a filtered
        # read looks at the same changes, the scan starting where it did).
        page = feed.read_from(sub.position, sub.pending_count, sub.models, filters)
        # A claimed subscription with a pending batch has its end (_claimed).
        following = cast(feed.Position, sub.pending)
        changes, webhook_id = page.changes, sub.pending_batch
        if not changes:
            # Its changes were deleted from the log behind our back: forget
            # the batch and read afresh from the position.
            _execute(
                "UPDATE pubsubpull_subscription SET pending_batch = '', pending_count = 0 "
                "WHERE id = %(id)s AND lease_owner = %(owner)s",
                {"id": sub.id, "owner": owner},
            )
            sub.pending_batch, sub.pending, sub.pending_count = "", None, 0
            return Outcome.SENT
        SUBSCRIPTIONS.renew(sub.id, owner)
    else:
        page = feed.read_from(
            sub.position,
            sub.batch_size,
            sub.models,
            filters,
            whole_transactions=sub.whole_transactions,
        )
        if not page.changes:
            if page.next > sub.position:
                sub.skipped_from = sub.skipped_from or sub.position
                sub.position = page.next  # recorded when the lease is let go
            if page.more:  # its filters skipped a scan's worth: read on
                return Outcome.SENT
            return Outcome.HELD_BACK if page.held_back else Outcome.CAUGHT_UP
        if sub.framing == "cloudevents":
            events = framing.event_texts(page.changes, page.texts(), subscription=sub.name)
            page = within(
                page, conf.batch_max_bytes(), 0, events, whole_transactions=sub.whole_transactions
            )
        else:
            page = within(
                page,
                conf.batch_max_bytes(),
                _envelope_size(sub, page),
                whole_transactions=sub.whole_transactions,
            )
        changes, following = page.changes, page.next
        webhook_id = f"msg_{uuid.uuid4().hex}"
        started = _execute(
            _BEGIN_BATCH_SQL + " RETURNING id",
            {
                "id": sub.id,
                "owner": owner,
                "batch": webhook_id,
                "txid": following.txid,
                "pid": following.id,
                "count": len(changes),
                "lease": conf.lease(),
                "read_txid": sub.position.txid,
                "read_pid": sub.position.id,
                "from_txid": (sub.skipped_from or feed.Position(-1, -1)).txid,
                "from_pid": (sub.skipped_from or feed.Position(-1, -1)).id,
            },
        )
        if not started:
            return Outcome.LOST
        sub.skipped_from = None
        sub.pending_batch, sub.pending, sub.pending_count = webhook_id, following, len(changes)

    body, content_type = notification_body(sub, page, following)
    now = datetime.now(UTC)
    headers = signed_headers(sub.secrets, webhook_id, body, now, content_type)
    # The notification carries the trace of its first change that has one
    # (each change item keeps its own); see pubsubpull.tracing.
    with tracing.send_span(sub.name, [c.trace() for c in changes]) as trace_headers:
        response = send(sub.callback, body, {**headers, **trace_headers})
    ok = response.status is not None and 200 <= response.status < 300
    params: dict[str, Any] = {
        "id": sub.id,
        "owner": owner,
        "at": now,
        "batch": webhook_id,
        "count": len(changes),
        "first": changes[0].id,
        "last": changes[-1].id,
        "status": response.status,
        "duration": timedelta(seconds=response.duration),
        "error": response.error,
        "response": response.body,
    }
    if ok:
        params.update(txid=following.txid, pid=following.id, lease=conf.lease(), models=sub.models)
        updated, sub.woken, more = _execute(_SUCCESS_SQL, params)[0]
        if not updated:
            return Outcome.LOST
        done = not more  # caught up, and let go in the same statement
        sub.position, sub.pending_batch, sub.pending, sub.pending_count = following, "", None, 0
        sub.failures, sub.skipped_from = 0, None
        return Outcome.DONE if done else Outcome.SENT

    # A 413, or the same 4xx for the same batch again, will not change by
    # waiting: isolate the change the receiver refuses, then say so.
    refusal = response.status == 413 or (
        refused(response.status) and refused(_previous_status(sub, webhook_id))
    )
    if refusal and len(_narrower(sub, changes)) > 1:
        return _split(sub, owner, params, changes, response)
    delay = backoff(sub.failures + 1, response.retry_after)
    disable_after = conf.disable_after()
    params.update(
        gone=response.status == 410,
        refused=refusal,
        refused_reason=(
            f"The receiver refuses {_describe_refused(sub, changes)}: {response.error}"
            f"{' (too large for it)' if response.status == 413 else ', twice or more'}. "
            "Retrying with backoff; fix the receiver, or park the change so that "
            "delivery goes on without it (admin, or PUT subscriptions/"
            f"{sub.name}/parked/{changes[0].id}/)."
            if refusal
            else ""
        ),
        delay=delay,
        disable_after=disable_after,
        disable_after_text=str(timedelta(seconds=disable_after)),
    )
    [(updated,)] = _execute(_FAILURE_SQL, params)
    if not updated:  # the batch was forgotten meanwhile (replayed, parked)
        release(sub, owner)
        return Outcome.LOST
    sub.failures += 1
    event = "delivery_blocked" if refusal else "delivery_failed"
    logger.log(
        logging.WARNING if refusal else logging.INFO,
        "Delivery of %s to subscription %s failed (%s)%s; next try in %.1f s",
        webhook_id,
        sub.name,
        response.error,
        f": blocked on {_describe_refused(sub, changes)}" if refusal else "",
        delay,
        extra={
            "pubsubpull": {
                "event": event,
                "subscription": sub.name,
                "webhook_id": webhook_id,
                "status": response.status,
                "error": response.error,
                "retry_in": delay,
                "change": changes[0].id,
            }
        },
    )
    return Outcome.FAILED


def _split(
    sub: Claimed,
    owner: str,
    params: dict[str, Any],
    changes: list[feed.FeedChange],
    response: Response,
) -> Outcome:
    """Send the start of a refused batch alone next: half of it after a 413, else one change.

    A whole-transactions subscription keeps whole transactions: after a 413
    the most that fit in half (at least the first transaction), else the
    first transaction alone.
    """
    sizes = _narrower(sub, changes)
    half = [n for n in sizes if n <= len(changes) // 2]
    keep = (half[-1] if half else sizes[0]) if response.status == 413 else sizes[0]
    end = changes[keep - 1].position
    new_batch = f"msg_{uuid.uuid4().hex}"
    params.update(
        new_batch=new_batch,
        new_txid=end.txid,
        new_pid=end.id,
        new_count=keep,
        lease=conf.lease(),
        split_reason=(
            f"The receiver refused a batch of {len(changes)} changes ({response.error}); "
            f"sending the first {keep} alone to find the change it refuses."
        ),
    )
    [(updated,)] = _execute(_SPLIT_SQL, params)
    if not updated:
        release(sub, owner)
        return Outcome.LOST
    logger.info(
        "Subscription %s: the receiver refused %s (%d changes, %s); sending %d alone",
        sub.name,
        params["batch"],
        len(changes),
        response.error,
        keep,
        extra={"pubsubpull": {"event": "delivery_split", "subscription": sub.name}},
    )
    sub.pending_batch, sub.pending, sub.pending_count = new_batch, end, keep
    sub.failures += 1
    return Outcome.SENT


# How long a claimed subscription waits for changes held back by an older
# open transaction before leaving them to the next wake or sweep.
HELD_BACK_WAIT = 2.0


def drain(subscription_id: int, budget: float = 10.0) -> Outcome:
    """Deliver a subscription until it is caught up, fails, or ``budget`` seconds pass.

    What the delivery job does (``jobs.run`` of :data:`DELIVERY`). Safe to
    call from any number of workers at once: only one holds the
    subscription; the others return ``busy``. Returns how it ended.
    """
    return jobs.run(DELIVERY, subscription_id, budget=budget)


def _work(lease: jobs.Lease, row: tuple, deadline: float) -> jobs.Ending:
    """The engine's work on a claimed subscription: batches until done; then let go."""
    sub = _claimed(row)
    outcome = Outcome.LOST
    try:
        outcome = _drain_claimed(sub, lease.owner, deadline)
    finally:
        # "done" let go with the last acknowledgement, "failed" and
        # "forbidden" with the statement that scheduled the next try.
        if outcome is Outcome.DONE:
            woken = sub.woken
        elif outcome in (Outcome.FAILED, Outcome.FORBIDDEN):
            woken = False
        else:
            woken = release(sub, lease.owner)
    return jobs.Ending(Outcome.CAUGHT_UP if outcome is Outcome.DONE else outcome, woken)


def _drain_claimed(sub: Claimed, owner: str, deadline: float) -> Outcome:
    held_until = None
    delay = 0.002
    while True:
        outcome = deliver_batch(sub, owner)
        if outcome is Outcome.SENT:
            held_until = None
            if time.monotonic() >= deadline:
                return Outcome.MORE
            continue
        if outcome is Outcome.HELD_BACK:
            now = time.monotonic()
            held_until = held_until or min(now + HELD_BACK_WAIT, deadline)
            if now < held_until:
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
                continue
        return outcome


# -- waking ------------------------------------------------------------------


def wake_models(labels: Iterable[str]) -> list[int]:
    """Wake the subscriptions that follow any of ``labels``; the ids enqueued."""
    return DELIVERY.wake_where(
        "model_labels ?| %(labels)s::text[]", {"labels": sorted(set(labels))}
    )


DELIVERY = jobs.register(
    jobs.Kind(
        name="deliver",
        spec=SUBSCRIPTIONS,
        work=_work,
        budget=lambda: 10.0,
        listen=jobs.Listen(feed.CHANNEL, wake_models, feed.STAY_AWAKE_SQL, feed.STAY_AWAKE_EVERY),
    )
)
