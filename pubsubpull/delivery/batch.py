"""The next batch of a subscription: a page of the gap-free feed.

Delivery must read exactly what the HTTP change feed serves: the same fence
(only transactions older than the reading statement's snapshot xmin, in the
same statement), the same order (txid, id), the same item format and cursor.

TODO(feed): until pubsubpull.feed lands on this branch, ``read`` carries the
fence itself; it becomes ``feed.read_changes`` and ``Position`` becomes
``feed.Position``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from django.db import connection

from ..registry import get_registration

MAX_ID = 2**63 - 1


class Position(NamedTuple):
    txid: int
    id: int

    def encode(self) -> str:
        return base64.urlsafe_b64encode(f"c1.{self.txid}.{self.id}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, cursor: str) -> Position:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
            tag, txid, id_ = raw.split(".")
            if tag != "c1":
                raise ValueError(cursor)
            return cls(int(txid), int(id_))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{cursor!r} is not a feed cursor") from e


@dataclass
class Batch:
    changes: list[dict[str, Any]]
    next: Position
    held_back: bool


_BATCH_SQL = """
WITH fence AS MATERIALIZED (
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin
),
held_back AS MATERIALIZED (
    SELECT EXISTS (
        SELECT 1 FROM pubsubpull_change AS c, fence
        WHERE c.txid >= fence.xmin
          AND (c.txid, c.id) > (%(txid)s, %(id)s)
          AND c.model = ANY(%(models)s)
    ) AS held_back
)
SELECT fence.xmin, held_back.held_back,
       c.id, c.txid, c.model, c.object_pk, c.op, c.at, c.old, c.new, r.user_id, r.method, r.path
FROM fence
CROSS JOIN held_back
LEFT JOIN LATERAL (
    SELECT c.*
    FROM pubsubpull_change AS c
    WHERE (c.txid, c.id) > (%(txid)s, %(id)s)
      AND c.txid < fence.xmin
      AND c.model = ANY(%(models)s)
    ORDER BY c.txid, c.id
    LIMIT %(limit)s
) AS c ON true
LEFT JOIN pubsubpull_request AS r ON r.id = c.request_id
ORDER BY c.txid, c.id
"""


def _published(values: Any, label: str) -> Any:
    if isinstance(values, str):
        values = json.loads(values)
    registration = get_registration(label)
    if values is None or registration is None:
        return values
    columns = set(registration.published_columns)
    return {k: v for k, v in values.items() if k in columns}


def read(after: Position, limit: int, models: list[str]) -> Batch:
    """Up to ``limit`` changes of ``models`` after ``after``, in feed order.

    ``next`` is where the subscription's position goes once the receiver has
    acknowledged these changes; ``held_back`` says committed changes wait
    behind an older open transaction (read again shortly).
    """
    with connection.cursor() as cursor:
        cursor.execute(
            _BATCH_SQL,
            {"txid": after.txid, "id": after.id, "models": list(models), "limit": limit},
        )
        rows = cursor.fetchall()
    xmin, held_back = rows[0][:2]
    changes = []
    last = after
    for id_, txid, label, pk, op, at, old, new, user_id, method, path in (r[2:] for r in rows):
        if id_ is None:
            break
        last = Position(txid, id_)
        request = None if method is None else {"user": user_id, "method": method, "path": path}
        changes.append(
            {
                "id": id_,
                "cursor": last.encode(),
                "model": label,
                "pk": pk,
                "op": op,
                "at": at.isoformat(),
                "sequence": id_,
                "old": _published(old, label),
                "new": _published(new, label),
                "request": request,
            }
        )
    following = last
    if len(changes) < limit:
        # Nothing older than the fence is left to serve: skip to it.
        following = max(following, Position(max(xmin - 1, 0), MAX_ID))
    return Batch(changes, following, held_back and not changes)
