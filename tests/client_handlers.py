"""Handlers for pull tests that run in the test process (found by dotted path)."""

from __future__ import annotations

seen: list = []
fail_on: set = set()


def record(event):
    """Remember every event; raise for a pk listed in ``fail_on``."""
    if event.pk in fail_on:
        raise RuntimeError(f"the handler cannot take {event.pk}")
    seen.append(event)


def other(event):
    """A second cursor's handler: never fails."""
    seen.append(("other", event))
