"""Pruning: old changes, the requests they belonged to, and old delivery attempts.

Changes go oldest first in feed order, in batches of short transactions, so
no long lock is held and the feed keeps serving. A change is kept while any
subscription (active, failing, paused or disabled: each keeps its backlog)
has not received it, and while a transaction older than it may still be
running. The feed's horizon (``sql/log_v1.sql``) follows the deletes, so a
cursor from before the pruned range answers 410 and its reader re-snapshots.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connections, transaction
from django.utils import timezone

from pubsubpull import conf
from pubsubpull.publisher import feed
from pubsubpull.publisher.delivery.attempts import prune_attempts
from pubsubpull.publisher.delivery.subscriptions import oldest_needed_position

logger = logging.getLogger("pubsubpull")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> timedelta:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"3600s"`` or ``"2w"`` as a timedelta."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(
            f"{text!r} is not an age: use a number and a unit, e.g. 30d, 12h, 90m, 3600s, 2w."
        )
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


_REQUESTS_SQL = """
DELETE FROM pubsubpull_request WHERE id IN (
    SELECT r.id FROM pubsubpull_request AS r
    WHERE r.started < %(cutoff)s
      AND NOT EXISTS (SELECT 1 FROM pubsubpull_log AS c WHERE c.request_id = r.id)
    LIMIT %(batch)s
)
"""


@dataclass
class Pruned:
    changes: int = 0
    requests: int = 0
    attempts: int = 0


def prune(
    older_than: timedelta | None = None,
    *,
    batch_size: int = 10_000,
    using: str = "default",
    progress: Callable[[Pruned], None] | None = None,
) -> Pruned:
    """Delete changes older than ``older_than`` (default: the RETENTION setting).

    Returns how many changes, requests and attempts went. ``progress`` is
    called after each batch.
    """
    if older_than is None:
        older_than = timedelta(seconds=conf.retention())
    cutoff: datetime = timezone.now() - older_than
    # Every subscription's backlog is kept (None: there is none).
    keep = oldest_needed_position()
    result = Pruned()

    def changes() -> tuple[int, int]:
        return feed.delete_oldest(keep, cutoff, batch_size, using)

    def requests() -> tuple[int, int]:
        params: dict[str, Any] = {"cutoff": cutoff, "batch": batch_size}
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            cursor.execute(_REQUESTS_SQL, params)
            return cursor.rowcount, cursor.rowcount

    # Each batch deletes up to batch_size rows; a short one was the last.
    for delete, attribute in ((changes, "changes"), (requests, "requests")):
        while True:
            rows, deleted = delete()
            setattr(result, attribute, getattr(result, attribute) + deleted)
            if progress:
                progress(result)
            if rows < batch_size:
                break
    result.attempts = prune_attempts()
    if progress:
        progress(result)
    logger.info(
        "Pruned %d changes, %d requests and %d attempts older than %s",
        result.changes,
        result.requests,
        result.attempts,
        cutoff.isoformat(),
        extra={"pubsubpull": {"event": "pruned", "cutoff": cutoff.isoformat(), **vars(result)}},
    )
    return result
