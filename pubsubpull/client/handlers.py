"""Your code, as pulls and receivers call it: found by a dotted path, given events.

A handler is a callable taking one :class:`~pubsubpull.protocol.events.Event`,
or an object with ``handle_events(events)`` taking a page at a time (a mirror
does that to write a page in one statement), and optionally
``handle_snapshot(events, first=, last=)``. Jobs run in other processes, so a
handler is stored by its dotted path.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

from django.db import DataError, IntegrityError

from pubsubpull import tracing
from pubsubpull.protocol.events import Event

Handler = Callable[[Event], Any] | Any


# The errors that say a page can never apply as it is (a constraint, a value
# the column cannot hold), unlike a lost connection or a deadlock.
CANNOT_APPLY = (IntegrityError, DataError)


def handler_path(handler: Handler | str) -> str:
    """The dotted path a worker imports ``handler`` by.

    A function or class is found by its module and name; any other object
    (a mirror, say) by the module-level name it was assigned to.
    """
    if isinstance(handler, str):
        resolve_handler(handler)  # fail now, not in a worker later
        return handler
    qualname = getattr(handler, "__qualname__", None)
    module = getattr(handler, "__module__", None)
    if qualname and module and "<" not in qualname:
        return f"{module}.{qualname}"
    module = getattr(handler, "defined_in", None) or module
    namespace = vars(sys.modules[module]) if module in sys.modules else {}
    for name, value in namespace.items():
        if value is handler:
            return f"{module}.{name}"
    raise ValueError(
        f"{handler!r} cannot be found by a dotted path, so a worker could not import it. "
        "Define it at module level (a function, or a mirror assigned to a module "
        "variable) or pass its dotted path as a string."
    )


def resolve_handler(path: str) -> Handler:
    """Import ``package.module.name`` (also ``package.module.Class.method``)."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            target: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attribute in parts[split:]:
                target = getattr(target, attribute)
        except AttributeError:
            break
        return target
    raise ImportError(
        f"No handler at {path!r}: give a dotted path like 'billing.handlers.on_user'."
    )


def call_handler(
    handler: Handler, events: list[Event], snapshot: tuple[bool, bool] | None = None
) -> None:
    """Give ``events`` (in order) to the handler: all at once if it takes pages.

    ``snapshot`` is (first page, last page) for the pages of a snapshot: a
    handler with ``handle_snapshot(events, first=, last=)`` (a mirror) gets
    them there, to remove at the end what the snapshot did not contain.
    """
    handle_snapshot = getattr(handler, "handle_snapshot", None)
    if snapshot is not None and handle_snapshot is not None:
        handle_snapshot(events, first=snapshot[0], last=snapshot[1])
        return
    handle_events = getattr(handler, "handle_events", None)
    if handle_events is not None:
        handle_events(events)
        return
    if not tracing.AVAILABLE:
        for event in events:
            handler(event)
        return
    for event in events:
        # A span per change, in the trace of the request that made it.
        with tracing.change_span(event.model, event.op, event.request):
            handler(event)
