"""The next batch of a subscription: a page of the gap-free feed.

Delivery reads exactly what the HTTP change feed serves, through
``feed.read_changes``: the same fence (only transactions older than the
reading statement's snapshot xmin, in the same statement), the same order
(txid, id), the same item format and the same cursors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pubsubpull.publisher import feed

Position = feed.Position
START = feed.START
CursorExpired = feed.CursorExpired


@dataclass
class Batch:
    changes: list[feed.FeedChange]
    next: feed.Position
    held_back: bool
    _texts: list[str] | None = field(default=None, repr=False)

    @property
    def texts(self) -> list[str]:
        """Each change's JSON text, encoded once (for the byte cap and the body)."""
        if self._texts is None:
            self._texts = [c.as_json_text() for c in self.changes]
        return self._texts

    def changes_json(self) -> str:
        """The changes as a JSON array, exactly as the HTTP feed serves them."""
        return "[" + ",".join(self.texts) + "]"

    def within(self, max_bytes: int, envelope: int) -> Batch:
        """The longest start of this batch whose body fits in ``max_bytes``.

        ``envelope`` is what the body holds besides the changes (an upper
        bound). A first change larger than the cap on its own goes alone: it
        can never be sent in a smaller batch. When changes are cut off,
        ``next`` is the last kept change's position, so the rest follow in
        the next batch.
        """
        size = envelope + 2  # the brackets
        for n, text in enumerate(self.texts):
            size += (len(text) if text.isascii() else len(text.encode())) + (1 if n else 0)
            if size > max_bytes and n > 0:
                kept = self.changes[:n]
                return Batch(kept, kept[-1].position, False, self.texts[:n])
        return self


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
