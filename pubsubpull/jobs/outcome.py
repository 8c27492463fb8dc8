"""How a job, or one step of it, ended: one type for every kind of job."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """How a run ended. A ``str``, so it compares equal to (and logs as) its value."""

    BUSY = "busy"
    """Not run: another worker holds the row, or it is not due (paused, backing off)."""
    MORE = "more"
    """The time budget ran out with work left: another job is enqueued."""
    CAUGHT_UP = "caught_up"
    """Nothing left to do for now; the next wake (a change, a schedule) runs it again."""
    DONE = "done"
    """Finished and let go (a pull that walks everything once; a batch that caught up)."""
    FAILED = "failed"
    """An error, recorded in the row, which is retried after a backoff."""
    BLOCKED = "blocked"
    """Stopped on something a retry cannot fix: waits for an operator."""
    FORBIDDEN = "forbidden"
    """The owner lost access: nothing sent; access is checked again later."""
    LOST = "lost"
    """The lease ran out, or the work was changed under us (replayed, parked)."""
    SENT = "sent"
    """One step done (a batch acknowledged), more to do under the same lease."""
    HELD_BACK = "held_back"
    """Committed changes wait behind an older open transaction."""
