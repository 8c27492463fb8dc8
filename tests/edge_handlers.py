"""Handlers for tests/test_client_edges.py (found by dotted path).

``strict`` writes a value into PostgreSQL for every event, as a handler that
stores rows does; for a pk in ``refuse`` the value is one a ``smallint``
column cannot hold, so the database raises a real DataError.
"""

from __future__ import annotations

from django.db import connection

seen: list = []
refuse: set = set()
crash: set = set()


def strict(event):
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::smallint", [70000 if event.pk in refuse else 1])
    seen.append((event.op, event.pk))


def strict_or_crash(event):
    """``strict``, and a plain bug (RuntimeError) for a pk in ``crash``."""
    if event.pk in crash:
        raise RuntimeError(f"a bug on {event.pk}")
    strict(event)
