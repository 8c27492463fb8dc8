"""The same table tracked by the peer, django-pghistory (only with the bench extra)."""

import pghistory

from benchmarks.writes.models import Row


@pghistory.track()
class Tracked(Row):
    """``pghistory.track()`` with its default trackers: inserts and updates."""


@pghistory.track(pghistory.InsertEvent(), pghistory.UpdateEvent(), pghistory.DeleteEvent())
class TrackedWithDeletes(Row):
    """The default trackers miss deletes; this one records them, for the DELETE figure."""
