"""Complete finished requests' rows (status, duration) outside the request.

``RequestMiddleware`` hands each finished writing request here; a background
thread writes them in batches on its own connections (see ``StatusWriter``).
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from typing import Any

from django.db import connections

from pubsubpull.capture.context import _Root, complete, completion

logger = logging.getLogger("pubsubpull")


def finish(root: _Root, status: int, duration: float) -> None:
    for alias, row in completion(root, status=status, duration=duration):
        if connections[alias].in_atomic_block:
            # Run inside an outer transaction (a test's): its rows are
            # visible to this connection only.
            complete(alias, [row])
        else:
            status_writer.put(alias, row)


class StatusWriter:
    """Completes finished requests' rows (status, duration) from a background thread.

    Doing it in the request would cost every writing request one more round
    trip and commit (about 12% of a one-UPDATE view's throughput, measured).
    Instead rows are queued and a daemon thread writes them in batches (what
    queued up within 0.2 s) with one ``UPDATE ... FROM jsonb_to_recordset()``
    per database, on its own connections (closed after each batch unless
    ``CONN_MAX_AGE`` keeps them).
    Each process starts its thread at its first writing request, so forked
    workers get their own; what is queued is flushed at exit.
    """

    BATCH = 500  # rows per statement at most
    LINGER = 0.2  # seconds a batch waits for more rows

    def __init__(self):
        self._reset()
        os.register_at_fork(after_in_child=self._reset)
        atexit.register(self.flush, 10)

    def _reset(self) -> None:
        self._queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._hurry = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def put(self, alias: str, row: dict[str, Any]) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._run,
                        args=(self._queue,),
                        name="pubsubpull-request-status",
                        daemon=True,
                    )
                    self._thread.start()
        self._queue.put((alias, row))

    def _run(self, rows: queue.Queue) -> None:
        while True:
            batch = [rows.get()]
            # Linger, asleep (waking for each row would cost each request a
            # thread switch): one statement then completes many requests and
            # the database does a fraction of the work. flush() cuts it short.
            self._hurry.wait(self.LINGER)
            while len(batch) < self.BATCH:
                try:
                    batch.append(rows.get_nowait())
                except queue.Empty:
                    break
            try:
                by_alias: dict[str, list[dict[str, Any]]] = {}
                for alias, row in batch:
                    by_alias.setdefault(alias, []).append(row)
                for alias, alias_rows in by_alias.items():
                    complete(alias, alias_rows)
                    connections[alias].close_if_unusable_or_obsolete()
            except Exception:
                logger.exception("pubsubpull's request status writer failed a batch.")
            finally:
                for _ in batch:
                    rows.task_done()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued row is written; False if ``timeout`` s passed first."""
        rows = self._queue
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with rows.all_tasks_done:
                while rows.unfinished_tasks:
                    self._hurry.set()
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    rows.all_tasks_done.wait(remaining)
            return True
        finally:
            self._hurry.clear()


status_writer = StatusWriter()


def flush(timeout: float | None = None) -> bool:
    """Wait until finished requests' status and duration are written.

    For tests that read them right after a response, and for shutdown hooks
    (exiting the interpreter flushes by itself). False if ``timeout`` passed.
    """
    return status_writer.flush(timeout)
