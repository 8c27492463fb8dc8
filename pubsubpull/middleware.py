"""Attribute the changes made while handling a web request to that request.

Add ``"pubsubpull.middleware.RequestMiddleware"`` to ``MIDDLEWARE`` (first, so
that it times the whole request and sees writes made by other middleware).
The first change a request makes writes its ``pubsubpull.models.Request`` row;
a request that changes nothing writes nothing. Status and duration are filled
in once the response is ready, outside the request's transaction, by a
background thread (``StatusWriter``) so the request does not wait for them.
"""

from __future__ import annotations

import atexit
import functools
import ipaddress
import logging
import os
import queue
import threading
import time
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.db import connections
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject, empty

from . import conf
from .context import _Root, begin, complete, completion, end

logger = logging.getLogger("pubsubpull")


class RequestMiddleware:
    """Tie every change made while handling a request to a ``Request`` row.

    Works under WSGI and ASGI, with ``ATOMIC_REQUESTS`` on or off, on every
    database alias. The user is read when each change happens, so views that
    set ``request.user`` themselves (DRF authentication) are attributed
    correctly. Settings (in ``PUBSUBPULL``): ``REQUEST_ID_HEADER``,
    ``TRUSTED_PROXY_HEADER``, ``TRUSTED_PROXY_COUNT``.

    The duration is the time until the response object is ready; the body of
    a streaming response is sent later, and changes made while streaming it
    are not attributed.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if self.async_mode:
            return self.__acall__(request)
        root = _request_root(request)
        token = begin(root)
        status = 500  # unless a response comes back
        try:
            response = self.get_response(request)
            status = response.status_code
            return response
        finally:
            end(token)
            if root.written:
                _finish(root, status, _elapsed(root))

    async def __acall__(self, request: HttpRequest):
        root = _request_root(request)
        token = begin(root)
        status = 500
        try:
            response = await self.get_response(request)
            status = response.status_code
            return response
        finally:
            end(token)
            if root.written:
                await sync_to_async(_finish)(root, status, _elapsed(root))


def _elapsed(root: _Root) -> float:
    return time.monotonic() - root.started


def _finish(root: _Root, status: int, duration: float) -> None:
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


def _request_root(request: HttpRequest) -> _Root:
    # Only references: the columns are read at the request's first write,
    # so a request that writes nothing pays for none of this.
    return _Root(
        fields=functools.partial(request_fields, request),
        user=functools.partial(_user_pk, request),
    )


def request_fields(request: HttpRequest) -> dict[str, Any]:
    """The ``pubsubpull_request`` columns that describe ``request``."""
    meta = request.META
    request_id = ""
    header = conf.request_id_header()
    if header:
        # The column holds 200 characters; a longer value must not make the
        # audited write fail.
        request_id = meta.get(_meta_key(header), "")[:200]
    fields = {
        "method": (request.method or "")[:16],
        "path": request.path,
        "query_string": meta.get("QUERY_STRING", ""),
        "remote_addr": remote_addr(request),
        "user_agent": meta.get("HTTP_USER_AGENT", ""),
        "request_id": request_id,
    }
    # jsonb refuses NUL characters, and would make the audited write fail.
    for name, value in fields.items():
        if isinstance(value, str) and "\x00" in value:
            fields[name] = value.replace("\x00", "")
    return fields


@functools.lru_cache(maxsize=64)
def _meta_key(header: str) -> str:
    """``"X-Request-ID"`` -> ``"HTTP_X_REQUEST_ID"``: cheaper than request.headers."""
    return "HTTP_" + header.upper().replace("-", "_")


def _user_pk(request: HttpRequest) -> Any:
    if _anonymous_for_sure(request):
        return None
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user.pk


_AUTH_LAZY_USER = ("django.contrib.auth.middleware", "AuthenticationMiddleware.process_request.")


def _anonymous_for_sure(request: HttpRequest) -> bool:
    """Whether ``request.user`` would resolve to AnonymousUser, known without resolving it.

    True only for the lazy user of Django's AuthenticationMiddleware, not yet
    resolved, on a request without a session (no cookie, nothing stored in
    it): resolving it would find no user id in the empty session. Resolving
    it anyway cost an anonymous writing request about 20 us and made its
    response ``Vary: Cookie`` (the session counted as accessed). Any other
    user object (DRF's, a login() in the view, another middleware's) is read.
    """
    state = request.__dict__
    user = state.get("user")
    if user is None or "_cached_user" in state:
        return False
    if type(user) is not SimpleLazyObject:  # type(): its __class__ is the user's
        return False
    lazy = object.__getattribute__(user, "__dict__")  # its own, not the user's
    setup = lazy.get("_setupfunc")
    if (
        lazy.get("_wrapped") is not empty
        or getattr(setup, "__module__", None) != _AUTH_LAZY_USER[0]
        or not getattr(setup, "__qualname__", "").startswith(_AUTH_LAZY_USER[1])
    ):
        return False
    session = state.get("session")
    return (
        session is not None
        and session.session_key is None
        and "_session_cache" not in session.__dict__
    )


def remote_addr(request: HttpRequest) -> str | None:
    """The client's address: from ``TRUSTED_PROXY_HEADER`` when set, else REMOTE_ADDR.

    With ``TRUSTED_PROXY_HEADER = "X-Forwarded-For"`` and
    ``TRUSTED_PROXY_COUNT = N``, the address is the N-th from the right: the
    one your outermost trusted proxy saw. Entries further left are written by
    the client and could be anything.
    """
    header = conf.trusted_proxy_header()
    if header:
        value = request.META.get(_meta_key(header), "")
        entries = [e.strip() for e in value.split(",") if e.strip()]
        if entries:
            count = max(int(conf.trusted_proxy_count()), 1)
            address = _ip(entries[max(len(entries) - count, 0)])
            if address is not None:
                return address
    return _ip(request.META.get("REMOTE_ADDR", ""))


@functools.lru_cache(maxsize=1024)  # the same clients and proxies, again and again
def _ip(value: str) -> str | None:
    """``value`` as PostgreSQL's inet will take it, or None (never an error)."""
    value = value.strip()
    if value.startswith("[") and "]" in value:  # [2001:db8::1]:443
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # 192.0.2.1:443
        value = value.split(":")[0]
    value = value.split("%")[0]  # fe80::1%eth0: inet has no zone ids
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None
