"""The next batch of a subscription: a page of the gap-free feed.

Delivery reads exactly what the HTTP change feed serves, through
``feed.read_changes``: the same fence (only transactions older than the
reading statement's snapshot xmin, in the same statement), the same order
(txid, id), the same item format and the same cursors.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import feed

Position = feed.Position
START = feed.START
CursorExpired = feed.CursorExpired


@dataclass
class Batch:
    changes: list[feed.FeedChange]
    next: feed.Position
    held_back: bool

    def changes_json(self) -> str:
        """The changes as a JSON array, exactly as the HTTP feed serves them."""
        return "[" + ",".join(c.as_json_text() for c in self.changes) + "]"


def read(after: feed.Position, limit: int, models: list[str]) -> Batch:
    """Up to ``limit`` changes of ``models`` after ``after``, in feed order.

    ``next`` is where the subscription's position goes once the receiver has
    acknowledged these changes; ``held_back`` says committed changes wait
    behind an older open transaction (read again shortly). Raises
    ``CursorExpired`` when the log was pruned past ``after``; a subscription
    that started at the beginning follows the oldest retained change instead.
    """
    page = feed.read_changes(None if after == START else after, limit, models)
    return Batch(page.changes, page.next, page.held_back)
