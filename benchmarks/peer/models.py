"""The same table tracked by the peer, django-pghistory (only with the bench extra)."""

import pghistory

from benchmarks.writes.models import Row


@pghistory.track()
class Tracked(Row):
    """``pghistory.track()`` with its default trackers: inserts and updates."""


@pghistory.track(pghistory.InsertEvent(), pghistory.UpdateEvent(), pghistory.DeleteEvent())
class TrackedWithDeletes(Row):
    """The default trackers miss deletes; this one records them, for the DELETE figure."""


@pghistory.track(
    pghistory.InsertEvent(),
    pghistory.UpdateEvent(),
    pghistory.DeleteEvent(),
    level=pghistory.Statement,
)
class TrackedByStatement(Row):
    """pghistory's statement-level trackers (``level=pghistory.Statement``), deletes too.

    What a team that cares about bulk writes picks: one trigger call per
    statement, typed columns copied from the transition tables.
    """
