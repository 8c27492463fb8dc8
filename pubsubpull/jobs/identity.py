"""Who holds a lease: this process, and a random part per run."""

from __future__ import annotations

import os
import socket
import uuid

WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"


def new_owner(kind: str = "") -> str:
    """A lease owner name: this process, and a random part (one per run or command).

    ``kind`` prefixes it (``"command:"`` for the foreground pull command), so an
    operator can tell who holds a row.
    """
    return f"{kind}{WORKER_NAME}:{uuid.uuid4().hex[:8]}"
