"""Kinds of job, and the one loop that runs any of them: claim, work, let go, again.

A :class:`Kind` is a :class:`~pubsubpull.jobs.lease.LeaseSpec` and a work
function. :func:`run` claims the row, calls the work function with the
:class:`Lease` it holds, and when the work has let go (it knows how: with
what it records), runs again if a wake came meanwhile, or enqueues another
job when the budget ran out with work left. Safe to call from any number of
workers at once: only one holds a row; the others return ``busy``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pubsubpull import conf
from pubsubpull.jobs.identity import new_owner
from pubsubpull.jobs.lease import LeaseSpec
from pubsubpull.jobs.outcome import Outcome
from pubsubpull.jobs.tasks import task


@dataclass
class Lease:
    """The row a run holds: its id, who holds it, and how to let it go.

    A run renews its lease through its kind's spec (``spec.renew(id, owner)``).
    """

    spec: LeaseSpec
    id: int
    owner: str
    keep: bool = False
    """The caller holds the row across runs (a command): letting go keeps holding it."""

    def release(self, **options: Any) -> bool:
        """Let the row go (see :meth:`LeaseSpec.release`); True if woken meanwhile."""
        return self.spec.release(self.id, self.owner, keep=self.keep, **options)


@dataclass
class Ending:
    """How one claim's work ended: its outcome, and whether a wake came while held.

    The work function has let the row go by the time it returns one.
    """

    outcome: Outcome
    woken: bool = False


@dataclass
class Listen:
    """A NOTIFY channel a worker listens on for a kind, and what a notification wakes."""

    channel: str
    wake: Callable[[set[str]], list[int]]
    """Given the payloads received, wakes the rows they concern; the ids enqueued."""
    stay_awake_sql: str = ""
    """Run every ``stay_awake_every`` seconds, so that writers keep notifying."""
    stay_awake_every: float = 5.0


@dataclass
class Kind:
    """One kind of job: its rows (``spec``) and what a worker does with one.

    ``work(lease, claimed, deadline, **options)`` gets the claimed row's
    columns and must let the row go (``lease.release``, or a statement of
    its own with the lease fragments) before returning an :class:`Ending`.
    ``budget`` is a run's default seconds.
    """

    name: str
    spec: LeaseSpec
    work: Callable[..., Ending]
    budget: Callable[[], float]
    listen: Listen | None = None

    def run(self, id_: int, **options: Any) -> Outcome:
        return run(self, id_, **options)

    def enqueue(self, id_: int) -> None:
        enqueue(self.name, id_)

    def wake_where(
        self, match: str, params: dict[str, Any] | None = None, *, force: bool = False
    ) -> list[int]:
        """Wake the rows ``match`` selects and enqueue a job for each free one; their ids."""
        enqueued = []
        for id_, held in self.spec.wake(match, params, force=force):
            if not held:  # a holder sees the flag when it lets go
                self.enqueue(id_)
                enqueued.append(id_)
        return enqueued

    def wake(self, ids: Iterable[int], force: bool = False) -> list[int]:
        """Wake these rows (``force``: even if a wake is pending); the ids enqueued."""
        return self.wake_where("id = ANY(%(ids)s)", {"ids": list(ids)}, force=force)

    def sweep(self) -> list[int]:
        """Wake every due row with work that no job is on; the ids enqueued."""
        return self.wake_where(self.spec.sweep_match())


_kinds: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Make ``kind`` known to the worker and the job task (by its name)."""
    _kinds[kind.name] = kind
    return kind


def kinds() -> list[Kind]:
    return list(_kinds.values())


def get(name: str) -> Kind:
    try:
        return _kinds[name]
    except KeyError:
        raise LookupError(
            f"No job kind {name!r}: the kinds are {sorted(_kinds)} (registered when "
            "the pubsubpull app is ready)."
        ) from None


def run(
    kind: Kind,
    id_: int,
    *,
    owner: str | None = None,
    budget: float | None = None,
    now: bool = False,
    **options: Any,
) -> Outcome:
    """Run row ``id_`` of ``kind`` until its work ends or ``budget`` seconds pass.

    Returns ``busy`` when another worker holds it or it is not due (``now``:
    run it even if a backoff is pending), ``more`` when the budget ran out
    with work left (another job is enqueued), else the work's outcome.
    ``owner`` is a lease owner that holds the row across runs (a command): it
    may claim the row while its lease lasts, keeps holding it afterwards and
    enqueues nothing. ``options`` go to the work function.
    """
    keep = owner is not None
    holder = owner or new_owner()
    deadline = time.monotonic() + (kind.budget() if budget is None else budget)
    while True:
        claimed = kind.spec.claim(id_, holder, now=now)
        if claimed is None:
            return Outcome.BUSY
        lease = Lease(kind.spec, id_, holder, keep)
        ending = None
        try:
            ending = kind.work(lease, claimed, deadline, **options)
        finally:
            if ending is None:  # the work raised: let go, for another worker to retry
                lease.release()
        if keep:
            return ending.outcome
        if ending.outcome is Outcome.MORE or (ending.woken and time.monotonic() >= deadline):
            kind.wake([id_], force=True)
            return Outcome.MORE
        if not ending.woken:
            return ending.outcome


# -- the one job task --------------------------------------------------------------


@task()
def run_job(kind: str, id_: int) -> str:
    """Run row ``id_`` of the job kind named ``kind`` (see :func:`run`)."""
    return str(run(get(kind), id_))


def enqueue(kind: str, id_: int) -> None:
    """Queue ``run_job`` on ``PUBSUBPULL["TASK_BACKEND"]`` and ``["TASK_QUEUE"]``."""
    run_job.using(backend=conf.task_backend(), queue_name=conf.task_queue()).enqueue(kind, id_)
