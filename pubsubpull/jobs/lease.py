"""The lease every job row carries, and the statements made from it.

A kind of job works on rows of one table (a subscription, a pull cursor),
each with ``lease_owner``, ``lease_expires`` and ``wake_requested_at``
columns and a column saying when the row is due. A :class:`LeaseSpec`
names them; the claim, renew, release, wake and sweep statements are made
from it here, once, for every kind:

- **claim** takes a due, runnable row nobody holds (``FOR UPDATE SKIP
  LOCKED``, in one short statement) and uses up its wake;
- **renew** holds it ``lease`` seconds more; **release** lets it go and says
  whether a wake came meanwhile (the holder then runs again);
- **wake** records a wake in the row (``wake_requested_at``) before a job is
  enqueued. That flag is what coalesces: while a job is pending, further
  wakes enqueue nothing; while a worker holds the row, they only set the
  flag, and the holder runs again when it lets go. A lost job leaves the
  flag set; after ``lease`` seconds the next wake or sweep enqueues another;
- **sweep** wakes every due row nobody holds that has work (the kind says
  which: a backlog, a retry, a schedule).

A wake is spent, and cleared, when it can do nothing: a job that finds its
row not due (paused, backing off) clears it, so the next change can wake
the row again, and a holder that lets go to retry later clears it in the
same statement that sets the due time (the sweep wakes the row when the
retry is due). Left set, a spent wake would refuse every wake until it aged
past ``lease``: a failing row of a busy publisher would be retried every
``lease`` seconds, not on its backoff.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection

from pubsubpull.jobs.backoff import backoff

# Fragments for a kind's own statements that hold or let go of a row.
HELD = "id = %(id)s AND lease_owner = %(owner)s"
RENEWED = "lease_expires = now() + %(lease)s * interval '1 second'"
LET_GO = "lease_owner = '', lease_expires = NULL"
SPENT = "wake_requested_at = NULL"
FREE = "(lease_expires IS NULL OR lease_expires < now())"

_CLAIM = """
UPDATE {table} AS t
SET lease_owner = %(owner)s,
    lease_expires = now() + %(lease)s * interval '1 second',
    wake_requested_at = NULL
FROM (
    SELECT id FROM {table}
    WHERE id = %(id)s
      AND {runnable}
      AND (%(now)s OR {due} <= now())
      AND ({free} OR lease_owner = %(owner)s)
    FOR UPDATE SKIP LOCKED
) AS claimed
WHERE t.id = claimed.id
RETURNING {columns}
"""

# A wake that finds the row not runnable or not yet due is used up: clear
# its flag so the next wake can enqueue again. (A holder's flag stays: the
# holder runs again when it lets go.)
_SPENT_WAKE = """
UPDATE {table}
SET wake_requested_at = NULL
WHERE id = %(id)s AND {free}
RETURNING {runnable} AND (%(now)s OR {due} <= now())
"""

_HOLD = """
UPDATE {table}
SET lease_owner = %(owner)s, lease_expires = now() + %(lease)s * interval '1 second'
WHERE id = %(id)s AND ({free} OR lease_owner = %(owner)s)
RETURNING id
"""

_RENEW = "UPDATE {table} SET " + RENEWED + " WHERE " + HELD + " RETURNING id"

_RELEASE = """
UPDATE {table}
SET {lease}{assignments}
WHERE id = %(id)s AND lease_owner = %(owner)s
RETURNING wake_requested_at IS NOT NULL
"""

_WAKE = """
UPDATE {table}
SET wake_requested_at = now()
WHERE {runnable}
  AND {due} <= now()
  AND ({match})
  AND (%(force)s OR wake_requested_at IS NULL
       OR wake_requested_at < now() - %(lease)s * interval '1 second')
RETURNING id, coalesce(lease_expires >= now(), false)
"""


def execute(sql: str, params: dict[str, Any]) -> list[tuple]:
    """Run one statement on the default connection; its rows, if it returns any."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


@dataclass(frozen=True)
class LeaseSpec:
    """Where a kind's rows are, when they are due, and its settings.

    ``runnable`` and ``due`` are SQL on the row: the states in which it has
    work, and the column saying when it may run next. ``sweep`` is SQL
    saying which free, due rows have work for a sweep to wake. ``columns``
    is what a claim returns (of the row, as ``t``). ``lease`` is the
    setting's accessor of the lease's length in seconds (``conf.lease``);
    ``retry_base`` and ``retry_max`` those of the backoff.
    """

    table: str
    runnable: str
    due: str
    lease: Callable[[], float]
    retry_base: Callable[[], float]
    retry_max: Callable[[], float]
    sweep: str = "true"
    columns: str = "t.id"

    def lease_seconds(self) -> float:
        return self.lease()

    def backoff(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (see jobs.backoff)."""
        return backoff(failures, retry_after, base=self.retry_base(), cap=self.retry_max())

    def _sql(self, template: str, **extra: str) -> str:
        return template.format(
            table=self.table,
            runnable=self.runnable,
            due=self.due,
            columns=self.columns,
            free=FREE,
            **extra,
        )

    def claim(self, id_: int, owner: str, *, now: bool = False) -> tuple | None:
        """Take row ``id_`` for ``owner`` if it is runnable, due and free: its ``columns``.

        ``now`` takes it even before it is due (a backoff pending). A row
        ``owner`` holds already is taken again (a command holding it across
        runs). A row that is free but not due has its spent wake cleared.
        """
        params = {"id": id_, "owner": owner, "lease": self.lease_seconds(), "now": now}
        rows = execute(self._sql(_CLAIM), params)
        if not rows:
            spent = execute(self._sql(_SPENT_WAKE), params)
            if spent and spent[0][0]:  # it became due meanwhile (resumed, say)
                rows = execute(self._sql(_CLAIM), params)
        return rows[0] if rows else None

    def hold(self, id_: int, owner: str) -> bool:
        """Hold the row for ``owner`` whether or not it is due, if nobody else holds it."""
        params = {"id": id_, "owner": owner, "lease": self.lease_seconds()}
        return bool(execute(self._sql(_HOLD), params))

    def renew(self, id_: int, owner: str) -> bool:
        """Hold the row ``lease`` seconds more; False if ``owner`` no longer holds it."""
        params = {"id": id_, "owner": owner, "lease": self.lease_seconds()}
        return bool(execute(self._sql(_RENEW), params))

    def release(
        self,
        id_: int,
        owner: str,
        *,
        assignments: Sequence[str] = (),
        params: dict[str, Any] | None = None,
        next_in: float | None = None,
        spent: bool = False,
        keep: bool = False,
    ) -> bool:
        """Let the row go; True if a wake came while ``owner`` held it.

        ``assignments`` are more ``column = expression`` to set in the same
        statement (with ``params``). ``next_in`` makes the row due that many
        seconds from now (a retry, a schedule) and uses up any wake: the
        sweep wakes the row when it is due. ``spent`` uses up the wake too (a
        row let go in a state that does not run). ``keep`` holds the row
        instead, until it is due plus a lease (a command that runs it again).
        """
        values = {"id": id_, "owner": owner, "lease": self.lease_seconds(), **(params or {})}
        sets = list(assignments)
        if next_in is not None:
            sets.append(f"{self.due} = now() + %(next_in)s * interval '1 second'")
            values["next_in"] = next_in
        if next_in is not None or spent:
            sets.append(SPENT)
        if keep:
            lease = "lease_expires = now() + (%(next_in)s + %(lease)s) * interval '1 second'"
            values.setdefault("next_in", 0.0)
        else:
            lease = LET_GO
        sql = self._sql(_RELEASE, lease=lease, assignments="".join(f", {s}" for s in sets))
        rows = execute(sql, values)
        return bool(rows and rows[0][0])

    def wake(
        self, match: str, params: dict[str, Any] | None = None, *, force: bool = False
    ) -> list[tuple[int, bool]]:
        """Record a wake in every runnable, due row ``match`` (SQL) selects.

        Rows with a fresh wake already are left alone unless ``force``.
        Returns (id, held) for each row woken: a held one is run again by its
        holder, so it needs no job.
        """
        values = {"force": force, "lease": self.lease_seconds(), **(params or {})}
        return [(id_, held) for id_, held in execute(self._sql(_WAKE, match=match), values)]

    def sweep_match(self) -> str:
        return f"{FREE} AND ({self.sweep})"
