"""Who made a change: the request or job a change belongs to reaches the trigger.

The capture trigger (``sql/capture_v3.sql``) reads the transaction-local setting
``pubsubpull.context``: a JSON object with the ``pubsubpull_request`` columns of
the request or job that is running. This module sends that setting with every
data-changing statement, on every database alias, while a request (see
``middleware.py``) or a ``pubsubpull.context`` block is active.

How it is sent matters:

- ``set_config(..., true)`` (or ``SET LOCAL``, the same thing) lasts until
  the end of the transaction, so the setting must travel in the same
  transaction as the statement. Under PgBouncer's transaction pooling nothing
  else reaches the right server connection, and a session-level ``SET`` would
  leak into other clients.
- With Django's default psycopg cursors (client-side binding) the statement is
  sent as ``SET LOCAL pubsubpull.context = '...'; <statement>``: one round
  trip, and one simple-protocol query is one transaction even in autocommit
  mode. The cursor is then moved past the ``SET`` result, so the caller sees
  the statement's own rows and row count. The value is a parameter, not SQL
  text, so a statement's text stays the same and psycopg's parse cache works.
- Other cursors (``server_side_binding``, ``executemany``) cannot carry two
  statements: the setting goes in a separate execute, inside a transaction
  opened for the purpose when the connection is in autocommit mode.
- Within a transaction the setting outlives the block that sent it, so after a
  block ends, data-changing statements of that transaction send an empty
  setting until the transaction is over ("dirty" connections below).

SELECTs are never touched.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from contextlib import ContextDecorator, nullcontext
from datetime import UTC, datetime
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, connections, router, transaction

from pubsubpull import tracing

_ClientCursor: type | None
try:
    from psycopg import ClientCursor as _ClientCursor
except ImportError:  # psycopg2: every statement takes the separate-execute path
    _ClientCursor = None

__all__ = ["context"]

logger = logging.getLogger("pubsubpull")

_SET = "SELECT set_config('pubsubpull.context', %s, true)"
# The same as a prefix bound client-side: SET LOCAL is a utility statement,
# neither planned nor returning a row, which PostgreSQL and psycopg handle in
# less time than a SELECT.
_PREFIX = "SET LOCAL pubsubpull.context = %s"
_PREFIX_NAMED = "SET LOCAL pubsubpull.context = %(pubsubpull_context)s"

# Statements that can change rows (and so fire the capture trigger). Leading
# comments are skipped; a WITH counts only if it holds a data-changing verb.
_FIRST_WORD = re.compile(r"\s*(?:(?:--[^\n]*(?:\n|$)|/\*.*?\*/)\s*)*(\w+)", re.S)
_WRITES = {"INSERT", "UPDATE", "DELETE", "TRUNCATE", "MERGE", "COPY", "CALL", "DO"}
_WITH_WRITES = re.compile(r"\b(?:INSERT|UPDATE|DELETE|MERGE)\b", re.I)


def changes_data(sql: object) -> bool:
    """Whether ``sql`` may change rows; SELECTs and DDL do not count."""
    if not isinstance(sql, str):
        return True  # a psycopg sql.Composed, say: assume the worst
    match = _FIRST_WORD.match(sql)
    if match is None:
        return False
    word = match.group(1).upper()
    if word == "WITH":
        return _WITH_WRITES.search(sql) is not None
    return word in _WRITES


# One encoder for every payload: json.dumps(cls=...) builds a new one per call.
_json = DjangoJSONEncoder(separators=(",", ":")).encode


def _clean(value: Any) -> Any:
    """``value`` without what jsonb refuses (NUL characters, lone surrogates).

    jsonb rejecting the context would make the audited write itself fail.
    """
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "replace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {_clean(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _time_ordered_uuid(at: float) -> str:
    """A UUIDv7 (RFC 9562) for a request starting at ``at`` (Unix seconds).

    Time-ordered ids go to the right-hand end of the request table's primary
    key and of the change table's request index, where random (v4) ones
    touched a random page of each index per request (measured: about 25 us
    more PostgreSQL CPU per writing request).
    """
    value = int(at * 1000) << 80 | int.from_bytes(os.urandom(10))
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # RFC 9562 variant
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class _Root:
    """One request or job: one ``pubsubpull_request`` row per database it changes."""

    def __init__(
        self,
        fields: Callable[[], dict[str, Any]] | None = None,  # JSON-safe already
        user: Callable[[], Any] | None = None,
    ):
        self.started_wall = time.time()  # made a datetime only if it writes
        self.started = time.monotonic()
        self._fields = fields
        self._user = user
        self._resolving_user = False
        self._id: str | None = None
        self.written: list[str] = []  # aliases it changed, in order
        self.written_metadata: list[dict[str, Any]] = []  # of each block that wrote
        self.anonymous_write = False

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = _time_ordered_uuid(self.started_wall)
        return self._id

    def static(self) -> dict[str, Any]:
        """The request's columns; computed at its first write, not for reads."""
        fields = self._fields() if self._fields else {}
        started = datetime.fromtimestamp(self.started_wall, UTC).isoformat()
        return {"id": self.id, "started": started, **fields}

    def user_pk(self) -> Any:
        """The user's primary key now, or None; read late on purpose."""
        if self._user is None or self._resolving_user:
            return None
        # Resolving a lazy request.user can itself write (a session flushed
        # after a password change); those writes go unattributed, not in a loop.
        self._resolving_user = True
        try:
            return self._user()
        finally:
            self._resolving_user = False


class _Frame:
    """One active block: its root and the metadata merged down to it."""

    def __init__(self, root: _Root, metadata: dict[str, Any]):
        self.root = root
        self.metadata = metadata
        self._base: str | None = None  # JSON without user_id
        self._payload: tuple[Any, str] | None = None  # (user pk, JSON)
        self._wrote = False

    def payload(self) -> str:
        """The ``pubsubpull.context`` value for a write happening now."""
        root = self.root
        user_pk = root.user_pk()
        cached = self._payload
        if cached is not None and cached[0] == user_pk:
            return cached[1]
        if self._base is None:
            self._base = _json({**root.static(), "metadata": self.metadata})
        if user_pk is None:
            payload = self._base
        else:
            user = _json(_clean(user_pk))
            payload = f'{self._base[:-1]},"user_id":{user}}}'
        self._payload = (user_pk, payload)
        return payload

    def wrote(self, alias: str) -> None:
        root = self.root
        if alias not in root.written:
            root.written.append(alias)
        if not self._wrote:
            self._wrote = True
            root.written_metadata.append(self.metadata)
        if self._payload is not None and self._payload[0] is None:
            root.anonymous_write = True


_active: contextvars.ContextVar[_Frame | None] = contextvars.ContextVar(
    "pubsubpull_context", default=None
)


def current_root() -> _Root | None:
    """The request or job whose block is active here, or None outside any."""
    frame = _active.get()
    return None if frame is None else frame.root


def _client_cursor(raw_cursor: object) -> bool:
    return _ClientCursor is not None and isinstance(raw_cursor, _ClientCursor)


def _execute_wrapper(execute, sql, params, many, context):
    """Send the active context with each data-changing statement (see the module doc)."""
    connection = context["connection"]
    frame = _active.get()
    if frame is None:
        if not connection.__dict__.get("_pubsubpull_dirty"):
            return execute(sql, params, many, context)
        if connection.autocommit:
            # No transaction is open, so the last one took the setting with it.
            connection._pubsubpull_dirty = False
            return execute(sql, params, many, context)
        if not changes_data(sql):
            return execute(sql, params, many, context)
        payload = ""  # the block ended, its transaction did not: stop attributing
    else:
        if not changes_data(sql):
            return execute(sql, params, many, context)
        payload = frame.payload()
        frame.wrote(connection.alias)
        if not connection.autocommit:
            connection._pubsubpull_dirty = True

    raw_cursor = context["cursor"].cursor
    if not many and isinstance(sql, str) and _client_cursor(raw_cursor):
        # The payload goes as a parameter, so the statement's text stays the
        # same from request to request and psycopg's parse cache keeps working.
        if params is None:  # then "%" was literal; with parameters it is "%%"
            sql, params = f"{_PREFIX}; {sql.replace('%', '%%')}", [payload]
        elif isinstance(params, dict):
            sql, params = f"{_PREFIX_NAMED}; {sql}", {**params, "pubsubpull_context": payload}
        else:
            sql, params = f"{_PREFIX}; {sql}", [payload, *params]
        result = execute(sql, params, many, context)
        raw_cursor.nextset()  # past SET's result, to the statement's
        return result
    opened = transaction.atomic(using=connection.alias) if connection.autocommit else nullcontext()
    with opened:
        with connection.wrap_database_errors:
            raw_cursor.execute(_SET, [payload])
        return execute(sql, params, many, context)


def install(connection, **kwargs) -> None:
    """Hook the wrapper onto a PostgreSQL connection (``connection_created`` receiver).

    Only databases that hold pubsubpull's tables: elsewhere there is no
    trigger to read the setting and no request row to complete.
    """
    if connection.vendor != "postgresql" or _execute_wrapper in connection.execute_wrappers:
        return
    from pubsubpull.capture.models import Change

    if not router.allow_migrate_model(connection.alias, Change):
        return
    # First in the list (the outermost wrapper): Django's execute_wrapper()
    # context manager removes the last one on exit, which must stay the
    # caller's own even if this connection was opened inside their block.
    connection.execute_wrappers.insert(0, _execute_wrapper)


# Completes request rows; a background writer passes many at once. One
# parameter whatever their number: one statement text, parsed once.
_COMPLETE = """
UPDATE pubsubpull_request AS r SET
    status = coalesce(v.status, r.status),
    duration = coalesce(make_interval(secs => v.seconds), r.duration),
    user_id = coalesce(r.user_id, v.user_id),
    metadata = r.metadata || coalesce(v.metadata, '{{}}')
FROM jsonb_to_recordset(%s::jsonb)
    AS v (id uuid, status integer, seconds double precision, user_id {user_type}, metadata jsonb)
-- The ids again, as an array: the planner, which guesses 100 rows for any
-- function, would otherwise hash-join a full scan of the table. Sent as one
-- comma-separated string: psycopg quotes a list element by element, about
-- 2 us per id.
WHERE r.id = v.id AND r.id = ANY(string_to_array(%s, ',')::uuid[])
"""


def completion(
    root: _Root, *, status: int | None = None, duration: float | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """What is left to write to ``root``'s request rows once its block has ended.

    ``[(alias, row)]`` for ``complete()``; empty when the rows the trigger
    wrote are complete already. ``duration`` is in seconds. Call it in the
    request's thread: it may read the user.
    """
    if not root.written:
        return []
    metadata: dict[str, Any] = {}
    if len(root.written_metadata) > 1:
        for written in root.written_metadata:  # nested blocks merge into one row
            metadata.update(written)
    elif status is None and duration is None:
        return []  # a plain context block: its one row is complete already
    # Anonymous at a write, maybe logged in since (a sign-up view).
    user_pk = root.user_pk() if root.anonymous_write else None
    row: dict[str, Any] = {"id": root.id}
    if status is not None:
        row["status"] = status
    if duration is not None:
        row["seconds"] = duration
    if user_pk is not None:
        row["user_id"] = user_pk
    if metadata:
        row["metadata"] = metadata
    return [(alias, row) for alias in root.written]


def complete(alias: str, rows: list[dict[str, Any]]) -> None:
    """Write ``completion()`` rows of one database, on this thread's connection.

    Errors are logged, not raised: the response is ready and the changes are
    committed; a missing status is not worth an error page.
    """
    from pubsubpull.capture.models import Request

    connection = connections[alias]
    sql = _COMPLETE.format(user_type=Request._meta.get_field("user").db_type(connection))
    params = [_json(rows), ",".join(row["id"] for row in rows)]
    try:
        with connection.cursor() as cursor:
            if connection.autocommit and _client_cursor(cursor.cursor):
                # Alone in its transaction: status and duration are not worth
                # waiting for a WAL flush; the changes and the rows themselves
                # were committed durably by their requests.
                sql = f"SELECT set_config('synchronous_commit', 'off', true); {sql}"
            cursor.execute(sql, params)
    except DatabaseError:
        logger.exception("Could not complete %d request row(s) in database %r.", len(rows), alias)


def begin(root: _Root, metadata: dict[str, Any] | None = None) -> contextvars.Token:
    """Make ``root`` the active request or job of this thread or task."""
    return _active.set(_Frame(root, _clean(metadata) if metadata else {}))


def end(token: contextvars.Token) -> None:
    _active.reset(token)


class context(ContextDecorator):
    """Attribute the changes made inside the block to a job, with ``metadata``.

    For code that runs outside a web request: management commands, tasks, the
    shell. The block's first change writes a ``pubsubpull.models.Request`` row
    (``method`` and ``path`` empty, ``metadata`` as given) and every change made
    inside the block points at it. A block that changes nothing writes nothing.
    With OpenTelemetry installed, the row keeps the trace (``traceparent``,
    ``tracestate``) of the span active at the block's first write.

    ::

        with pubsubpull.context(command="import_customers", file=path) as job:
            Customer.objects.bulk_create(rows)
        Change.objects.filter(request_id=job.id)

        @pubsubpull.context(task="send_invoices")
        def send_invoices(): ...

    Nested blocks, and blocks inside a web request, belong to the request or
    job around them: their metadata is merged into its row. Leaving the block
    ends the attribution, also after an exception or a savepoint rollback.
    Metadata values must be JSON-serialisable (``DjangoJSONEncoder``: dates,
    UUIDs and decimals are fine).
    """

    def __init__(self, **metadata: Any):
        self.metadata = metadata
        self.id: uuid.UUID | None = None
        self._token: contextvars.Token[_Frame | None] | None = None
        self._root: _Root | None = None

    def _recreate_cm(self):
        # As a decorator, each call (maybe in another thread) gets its own block.
        return type(self)(**self.metadata)

    def __enter__(self) -> context:
        if self._token is not None:
            # Its one token would be lost, and the inner exit would end the outer block.
            raise RuntimeError(
                "This pubsubpull.context block is open already; nest a new "
                "pubsubpull.context(...) instead of entering the same one again."
            )
        parent = _active.get()
        if parent is None:
            # A job's trace is the active OpenTelemetry span's, if any (read
            # at its first write, like a request's columns).
            root = self._root = _Root(fields=tracing.trace_fields)
            frame = _Frame(root, _clean(dict(self.metadata)))
        else:
            root = parent.root
            frame = _Frame(root, {**parent.metadata, **_clean(self.metadata)})
        self._token = _active.set(frame)
        self.id = uuid.UUID(root.id)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._token is None:
            raise RuntimeError("This pubsubpull.context block was left without being entered.")
        _active.reset(self._token)
        self._token = None
        if self._root is not None:
            for alias, row in completion(self._root):
                complete(alias, [row])

    def __call__(self, func):
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def inner(*args, **kwargs):
                with self._recreate_cm():
                    return await func(*args, **kwargs)

            return inner
        return super().__call__(func)
