"""The one retry schedule: exponential, capped, with jitter, honouring Retry-After."""

from __future__ import annotations

import random


def backoff(failures: int, retry_after: float | None = None, *, base: float, cap: float) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1 for the first).

    Exponential from ``base``, capped at ``cap``, with jitter (half to all of
    it) so that what comes back is not hit by every job at once. A
    ``retry_after`` (the other side's Retry-After) is honoured, up to ``cap``.
    """
    delay = min(cap, base * 2 ** min(max(failures - 1, 0), 60))
    delay *= random.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay
