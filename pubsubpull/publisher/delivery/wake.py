"""Ask for subscriptions to be delivered: by model (a NOTIFY), by id, or by sweep.

A wake is recorded in the subscription row (``wake_requested_at``) before a
job is enqueued. That row is what coalesces: while a job is pending, further
changes enqueue nothing; while a worker holds the subscription, they only set
the flag, and the worker drains again when it lets go. A job that is lost
leaves the flag set; after LEASE seconds the next wake or sweep enqueues
another.

A holder that lets go to retry later (a failure, a refused batch, an owner
without access) clears the flag in the same statement that sets
``next_attempt_at``: that wake is spent, since the retry waits for its time
anyway, and the sweep wakes the subscription when it is due. Left set, it
would refuse every wake until it aged past LEASE, and a failing subscription
of a busy publisher would be retried every LEASE seconds, not on its backoff.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connection

from pubsubpull import conf
from pubsubpull.publisher.delivery import tasks
from pubsubpull.publisher.delivery.deliver import DELIVERABLE

_WAKE_SQL = """
UPDATE pubsubpull_subscription
SET wake_requested_at = now()
WHERE state = ANY(%(deliverable)s)
  AND next_attempt_at <= now()
  AND ({match})
  AND (%(force)s OR wake_requested_at IS NULL
       OR wake_requested_at < now() - %(stale)s * interval '1 second')
RETURNING id, coalesce(lease_expires >= now(), false)
"""

# Due subscriptions nobody holds that have a batch to retry or committed
# changes past their position. Whether those are behind the feed's fence yet
# is the feed's to say when the job reads them (a job finding them held back
# by an open transaction waits for it a little, then the next sweep retries).
# A forbidden one is due to have its owner's access checked again, backlog or
# not, so that its state says the truth.
_SWEEP_MATCH = """
(lease_expires IS NULL OR lease_expires < now())
AND (pending_batch <> '' OR state = 'forbidden' OR EXISTS (
    SELECT 1 FROM pubsubpull_change AS c
    WHERE (c.txid, c.id) > (position_txid, position_id)
      AND model_labels ? c.model
))
"""


def _wake(match: str, params: dict) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(
            _WAKE_SQL.format(match=match),
            {"force": False, "stale": conf.get("LEASE"), "deliverable": DELIVERABLE, **params},
        )
        rows = cursor.fetchall()
    enqueued = []
    for id_, leased in rows:
        if not leased:  # a holder sees the flag when it lets go
            tasks.enqueue(id_)
            enqueued.append(id_)
    return enqueued


def wake_models(labels: Iterable[str]) -> list[int]:
    """Wake the subscriptions that follow any of ``labels``; the ids enqueued."""
    return _wake("model_labels ?| %(labels)s::text[]", {"labels": sorted(set(labels))})


def wake_subscriptions(ids: Iterable[int], force: bool = False) -> list[int]:
    """Wake these subscriptions (``force``: even if a wake is pending)."""
    return _wake("id = ANY(%(ids)s)", {"ids": list(ids), "force": force})


def sweep() -> list[int]:
    """Wake every due subscription with something to deliver that no job is on."""
    return _wake(_SWEEP_MATCH, {})
