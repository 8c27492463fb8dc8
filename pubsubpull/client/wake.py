"""Ask for pull cursors to run: by id (a new pull, a job that wants more) or by sweep.

As for subscriptions, the cursor row coalesces: a wake is recorded in it
(``wake_requested_at``) before a job is enqueued, so a cursor has at most one
job pending, and a lost job is replaced after PULL_LEASE seconds.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connection

from pubsubpull import conf
from pubsubpull.client import tasks

_WAKE_SQL = """
UPDATE pubsubpull_pullcursor
SET wake_requested_at = now()
WHERE state IN ('active', 'failing')
  AND phase <> 'done'
  AND next_run_at <= now()
  AND (lease_expires IS NULL OR lease_expires < now())
  AND ({match})
  AND (%(force)s OR wake_requested_at IS NULL
       OR wake_requested_at < now() - %(stale)s * interval '1 second')
RETURNING id
"""


def _wake(match: str, params: dict) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(
            _WAKE_SQL.format(match=match),
            {"force": False, "stale": conf.get("PULL_LEASE"), **params},
        )
        ids = [row[0] for row in cursor.fetchall()]
    for id_ in ids:
        tasks.enqueue(id_)
    return ids


def wake_cursors(ids: Iterable[int], force: bool = False) -> list[int]:
    """Enqueue a job for each of these cursors that is due and free."""
    return _wake("id = ANY(%(ids)s)", {"ids": list(ids), "force": force})


def sweep() -> list[int]:
    """Enqueue a job for every due cursor that has none (retries, lost jobs, every=N)."""
    return _wake("true", {})
