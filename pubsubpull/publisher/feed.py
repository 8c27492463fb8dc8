"""The gap-free change feed: read the change log in transaction-id order, page by page.

Change ids are taken before commit, so reading by id alone skips a change
whose transaction commits after a later id has been read. The feed orders by
``(txid, id)`` instead and serves only changes of transactions older than the
reading statement's snapshot ``xmin``: every such transaction has ended, so
nothing can ever appear before a position once it has been served.

That order is not commit order. It promises no gap, no duplicate, each
transaction's changes contiguous, and per-object order through ``sequence``
(a row's change ids follow its commits: the row lock serialises writers). A
transaction that took its id first is served first even if it committed
later, so a child row's transaction can precede its parent's, and one
object's changes can come out of sequence order (docs/guarantees.rst).

The HTTP change feed (``pubsubpull.publisher.api``) and the delivery worker both read
through this module::

    from pubsubpull.publisher import feed

    page = feed.read_changes(after=stored_cursor, limit=500, models=["shop.customer"])
    for change in page.changes:
        handle(change.as_json())
    stored_cursor = page.next.encode()       # store it with what handle() did

``read_changes`` raises ``CursorExpired`` when the log has been pruned past the
cursor (re-snapshot). Long polls (``wait_for_changes``, woken by the
trigger's NOTIFY) are in :mod:`pubsubpull.publisher.longpoll`. Cursors and
the change item are the wire protocol's (``pubsubpull.protocol.cursor`` and
``.items``): this module reads the log,
the protocol says how what it read looks on the wire.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from itertools import starmap
from typing import Any, TypeVar

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections, router

from pubsubpull import conf
from pubsubpull.capture import statement_log
from pubsubpull.capture.registry import Registration, get_registration, registrations
from pubsubpull.capture.triggers import quote_name
from pubsubpull.exceptions import CursorExpired, SeveralDatabases
from pubsubpull.protocol import filters as filtering
from pubsubpull.protocol import items

# The cursor codec is the protocol's; the publisher's code reads it from here too.
from pubsubpull.protocol.cursor import END, MAX_ID, START, Position
from pubsubpull.protocol.cursor import InvalidCursor as InvalidCursor

# The capture trigger's NOTIFY channel (sql/capture_v*.sql), with the model label.
CHANNEL = "pubsubpull"

# The change log (sql/log_v1.sql): a parent table that reads every log
# table (pubsubpull_change, where capture writes one row per change, is the
# first).

# The most changes one log row holds: a row's changes are ids id .. id +
# rows - 1, so the row holding change n has an id above n - CHUNK.
CHUNK = statement_log.CHUNK


def after_sql(position: str, log: str = "c") -> str:
    """SQL true for a row of the log ``log`` holding a change after ``position``.

    ``position`` is SQL of a ``txid, id`` pair. The first test is what the
    (txid, id) index can range over, the second the exact one: a row's last
    change is ``id + rows - 1`` (a TRUNCATE's row, rows 0, is one change).
    Inside a transaction of many changes the range starts up to CHUNK - 1
    ids early: that many index entries more to filter, a few buffers.
    """
    txid, id_ = (part.strip() for part in position.split(",", 1))
    return (
        f"({log}.txid, {log}.id) > ({txid}, {id_} - {CHUNK - 1}) "
        f"AND ({log}.txid, {log}.id + greatest({log}.rows, 1) - 1) > ({txid}, {id_})"
    )


# A log row's last change, in SQL (of the row c).
LAST_ID_SQL = "c.id + greatest(c.rows, 1) - 1"


def changes_after_sql(position: str, position_id: str, log: str = "c") -> str:
    """SQL of how many of log row ``log``'s changes lie after ``position``.

    All of them, or for the row the position is inside, those after its
    change. ``position`` is SQL of a ``txid, id`` pair, ``position_id`` of
    its id alone.
    """
    return (
        f"CASE WHEN ({log}.txid, {log}.id) > ({position}) THEN greatest({log}.rows, 1) "
        f"ELSE {log}.id + greatest({log}.rows, 1) - 1 - {position_id} END"
    )


# The log's tables other than pubsubpull_change (capture v4's, one or more
# versions per model: pubsubpull.capture.statement_log), by oid. Every page
# statement reads it, so a page built without a table made since is read
# again with it (read_changes).
_MEMBERS_WHERE = (
    "i.inhparent = 'pubsubpull_log'::regclass AND i.inhrelid <> 'pubsubpull_change'::regclass"
)
MEMBERS_SIGNATURE_SQL = (
    "(SELECT coalesce(json_agg(i.inhrelid::bigint ORDER BY i.inhrelid), '[]') "
    f"FROM pg_inherits AS i WHERE {_MEMBERS_WHERE})"
)
_MEMBERS_SQL = (
    "SELECT i.inhrelid::bigint, c.relname, obj_description(i.inhrelid, 'pg_class') "
    f"FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid WHERE {_MEMBERS_WHERE} "
    "ORDER BY i.inhrelid"
)


@dataclass(frozen=True)
class LogMember:
    """A log table of capture v4: one model's, its rows chunks of a statement's changes."""

    oid: int
    name: str
    label: str
    key_type: str  # the database type of its keys
    text_keys: bool  # whether its key index is of the keys as text
    columns: tuple[str, ...]  # of its images
    single: bool = False  # one change a row (statement_log.LogTable.single)


@dataclass(frozen=True)
class LogMembers:
    oids: tuple[int, ...]
    tables: tuple[LogMember, ...]

    def of(self, labels: Iterable[str]) -> list[LogMember]:
        chosen = set(labels)
        return [m for m in self.tables if m.label in chosen]


_members: dict[str, LogMembers] = {}


def log_members(using: str, *, refresh: bool = False) -> LogMembers:
    """The log tables of ``using`` besides pubsubpull_change (read once, then on ``refresh``).

    Raises ``ImproperlyConfigured`` for a table of the log whose comment does
    not say what it holds: its changes could not be served.
    """
    members = _members.get(using)
    if members is not None and not refresh:
        return members
    with connections[using].cursor() as cursor:
        cursor.execute(_MEMBERS_SQL)
        rows = cursor.fetchall()
    tables = []
    for oid, name, comment in rows:
        try:
            described = json.loads(comment or "")
            described[statement_log.DESCRIPTION]
            member = LogMember(
                oid, name, described["model"], described["key_type"],
                bool(described["text_keys"]), tuple(described["columns"]),
                bool(described.get("single", False)),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError):
            raise ImproperlyConfigured(
                f"Table {name} belongs to the change log (it inherits pubsubpull_log) but "
                "its comment does not say what it holds, so the feed cannot serve its "
                "changes. Log tables are made by pubsubpull's migrations; detach this one "
                f"(ALTER TABLE {name} NO INHERIT pubsubpull_log) if it is not one of them."
            ) from None
        tables.append(member)
    members = _members[using] = LogMembers(tuple(oid for oid, _, _ in rows), tuple(tables))
    return members


@dataclass
class FeedChange:
    """One change as the feed serves it: published fields only."""

    id: int
    txid: int
    model: str
    pk: Any
    op: str
    at_text: str
    """When the statement that made the change started, ISO 8601 as PostgreSQL
    renders timestamps in the snapshot's fields too."""
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    user_id: int | None = None
    method: str | None = None
    path: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    # The whole item, as_json_text(), when the page statement rendered it.
    item_json: str | None = field(default=None, repr=False)

    @property
    def at(self) -> datetime.datetime:
        return datetime.datetime.fromisoformat(self.at_text)

    @property
    def position(self) -> Position:
        return Position(self.txid, self.id)

    @property
    def cursor(self) -> str:
        return self.position.encode()

    @property
    def sequence(self) -> int:
        """Orders the changes of one object; compare it to drop stale events."""
        return self.id

    @property
    def request(self) -> dict[str, Any] | None:
        return items.request_item(
            self.user_id, self.method, self.path, self.traceparent, self.tracestate
        )

    def trace(self) -> tuple[str | None, str | None]:
        """``(traceparent, tracestate)`` of the request that made it; Nones without one."""
        return self.traceparent or None, self.tracestate or None

    def as_json(self) -> dict[str, Any]:
        """The change as a JSON-ready dict, as the HTTP feed and deliveries carry it."""
        return items.change_item(
            self.id, self.cursor, self.model, self.pk, self.op, self.at_text,
            self.old, self.new, self.request,
        )  # fmt: skip

    def as_json_text(self) -> str:
        """``json.dumps(self.as_json())``: as the page statement rendered it, if it did."""
        if self.item_json is not None:
            return self.item_json
        return items.change_item_json(
            self.id, self.cursor, self.model, self.pk, self.op, self.at_text,
            items.dumps(self.old), items.dumps(self.new), self.request,
        )  # fmt: skip


class _RenderedChange(FeedChange):
    """A change whose item PostgreSQL rendered whole (the page statement).

    Serving it joins its text; its fields are parsed from the item only when
    something asks for one (a delivery's last ``at_text``, the admin, tests).
    """

    def __init__(self, id_: int, txid: int, model: str, item: bytes, _fallback: None = None):
        self.id, self.txid, self.model = id_, txid, model
        self.item_bytes = item  # UTF-8, as the HTTP feed's body is made of

    @cached_property
    def item_json(self) -> str:  # type: ignore[override]
        return self.item_bytes.decode()

    @cached_property
    def _item(self) -> dict[str, Any]:
        return json.loads(self.item_bytes)

    pk = property(lambda self: self._item["pk"])
    op = property(lambda self: self._item["op"])
    at_text = property(lambda self: self._item["at"])
    old = property(lambda self: self._item["old"])
    new = property(lambda self: self._item["new"])
    request = property(lambda self: self._item["request"])
    user_id = property(lambda self: (self.request or {}).get("user"))
    method = property(lambda self: (self.request or {}).get("method"))
    path = property(lambda self: (self.request or {}).get("path"))
    traceparent = property(lambda self: (self.request or {}).get("traceparent"))
    tracestate = property(lambda self: (self.request or {}).get("tracestate"))

    def trace(self) -> tuple[str | None, str | None]:
        # Most items carry no trace: a byte search spares parsing them (one
        # whose data holds the text is parsed, and answers right).
        if b'"traceparent":"' not in self.item_bytes:
            return None, None
        return super().trace()


@dataclass
class Page:
    """A page of the feed.

    ``next`` is where to continue; it moves past the page even when the page
    holds fewer than ``limit`` changes (nothing else can appear before it), so
    store it, not the last change's position. An empty page means caught up.
    """

    changes: list[FeedChange]
    next: Position
    limit: int
    # Committed changes past the cursor exist, but an older transaction is
    # still open: they are served when it ends. wait_for_changes polls then.
    held_back: bool = field(default=False, repr=False)
    # The oldest transaction that was still running: every older one had ended.
    fence: int = field(default=0, repr=False)
    # The changes as JSON text, rendered once however many long polls serve them.
    _texts: list[str] | None = field(default=None, repr=False, compare=False)
    _changes_json: str | None = field(default=None, repr=False, compare=False)
    # For renderers of a page that answers many requests (the HTTP view's
    # bodies by URL); shared by whoever the page is handed to.
    rendered: dict = field(default_factory=dict, repr=False, compare=False)

    # Said by the read when the count cannot: a whole-transactions page may
    # hold fewer changes than ``limit`` and still not be the last, and a
    # filtered page that stopped at its scan bound before the fence holds
    # fewer, yet more is to read at once from ``next``. None: the count tells.
    more: bool | None = field(default=None, repr=False)
    # Each change's item as PostgreSQL rendered it, when it rendered them all.
    _item_bytes: list[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def caught_up(self) -> bool:
        if self.more is not None:
            return not self.more
        return len(self.changes) < self.limit

    def texts(self) -> list[str]:
        """Each change's JSON text, encoded once (for a byte cap, and the body)."""
        if self._texts is None:
            self._texts = [c.as_json_text() for c in self.changes]
        return self._texts

    def changes_json(self) -> str:
        """``[change.as_json_text(), ...]`` as one JSON array, rendered once."""
        if self._changes_json is None:
            self._changes_json = "[" + ",".join(self.texts()) + "]"
        return self._changes_json

    def changes_json_bytes(self) -> bytes:
        """:meth:`changes_json` as UTF-8, joined from the bytes PostgreSQL rendered."""
        rendered = self.rendered.get("changes_json_bytes")
        if rendered is None and self._item_bytes is not None:
            rendered = self.rendered["changes_json_bytes"] = (
                b"[" + b",".join(self._item_bytes) + b"]"
            )
        if rendered is None:
            items_ = [c.item_bytes for c in self.changes if isinstance(c, _RenderedChange)]
            if len(items_) == len(self.changes):
                rendered = b"[" + b",".join(items_) + b"]"
            else:
                rendered = self.changes_json().encode()
            self.rendered["changes_json_bytes"] = rendered
        return rendered

    def head(self, count: int) -> Page:
        """The first ``count`` changes (at least one) as a page of their own.

        Its ``next`` is the last kept change's position, so the rest follow
        on the next page.
        """
        kept = self.changes[:count]
        return Page(kept, kept[-1].position, self.limit, _texts=self.texts()[:count])


# The fence of the snapshot ``snap.s`` (a CTE of the statement), for this
# database: the oldest transaction of it still running then (see below). The
# snapshot pages (pubsubpull.publisher.snapshot) take their feed_position
# from the same expression, so a snapshot and the feed agree on "now".
FENCE_SQL = """coalesce(
               (SELECT min(running.x::text::bigint)
                FROM (
                    SELECT x FROM pg_snapshot_xip(snap.s) AS x
                    WHERE x::xid NOT IN (
                        SELECT a.backend_xid FROM pg_stat_activity AS a
                        WHERE a.backend_xid IS NOT NULL
                          AND a.datid IS DISTINCT FROM
                              (SELECT oid FROM pg_database WHERE datname = current_database())
                    )
                    -- The reader's own uncommitted changes are not news yet.
                    UNION ALL SELECT pg_current_xact_id_if_assigned()
                ) AS running (x)),
               pg_snapshot_xmax(snap.s)::text::bigint
           )"""

# Everything in one statement, so one snapshot decides: the fence, the
# horizon (how far the log has been pruned), the page, and whether committed
# changes wait behind the fence.
#
# The fence is the oldest transaction still running when the snapshot was
# taken: nothing before it can change any more. Transaction ids are
# cluster-wide, so a long transaction in another database on the same server
# would hold every feed back; a running xid that pg_stat_activity shows
# belonging to another database is skipped. Only positive proof skips one:
# an xid it cannot place (ended meanwhile, a prepared transaction, stats
# hidden from this role) still fences. The proof holds because the activity
# is read after the snapshot was taken (see read_changes), and xids are never
# reused nor backends moved between databases.
_PAGE_SQL = """
WITH snap AS MATERIALIZED (
    SELECT pg_current_snapshot() AS s
),
fence AS MATERIALIZED (
    SELECT {fence} AS xmin,
           coalesce(h.txid, 0) AS horizon_txid,
           coalesce(h.change_id, 0) AS horizon_id
    FROM snap
    LEFT JOIN pubsubpull_horizon AS h ON h.id = 1
),
start AS MATERIALIZED (
    -- One start position (the later of the cursor and the horizon) and one
    -- for the held-back check, so each scan is one index range.
    SELECT fence.*,
           CASE WHEN (%(txid)s, %(id)s) >= (horizon_txid, horizon_id)
                THEN %(txid)s ELSE horizon_txid END AS from_txid,
           CASE WHEN (%(txid)s, %(id)s) >= (horizon_txid, horizon_id)
                THEN %(id)s ELSE horizon_id END AS from_id
    FROM fence
),
bounds AS MATERIALIZED (
    SELECT start.*,
           CASE WHEN (from_txid, from_id) > (xmin - 1, 9223372036854775807)
                THEN from_txid ELSE xmin - 1 END AS held_txid,
           CASE WHEN (from_txid, from_id) > (xmin - 1, 9223372036854775807)
                THEN from_id ELSE 9223372036854775807 END AS held_id
    FROM start
),
held_back AS MATERIALIZED (
    -- Not EXISTS: the planner would drop the ORDER BY that keeps this a
    -- short walk of the (txid, id) index instead of a scan of the table.
    SELECT (
        SELECT c.id FROM pubsubpull_log AS c
        WHERE {held_after}
          AND c.model = ANY(%(models)s)
        ORDER BY c.txid, c.id
        LIMIT 1
    ) IS NOT NULL AS held_back
    FROM bounds
),
-- A filtered page looks at no more than %(scan)s changes (of any model): up
-- to this one, or to the fence when fewer are left (cut: false). From the
-- cursor itself, not from_txid/from_id: the same rows (none are left before
-- the horizon), and the planner sees the start, so it walks the index for a
-- long range rather than sort it.
scan_end AS MATERIALIZED (
    SELECT coalesce(s.txid, 9223372036854775807) AS end_txid,
           coalesce(s.id, 9223372036854775807) AS end_id,
           s.id IS NOT NULL AS cut
    FROM bounds
    LEFT JOIN LATERAL ({scan_end_row}) AS s ON true
){more_ctes}
-- The page's figures once, in a row of their own (its id is NULL): repeated
-- on every change row they cost a tenth of the page's transfer. Five columns
-- in all, the rest of the figures as one JSON array: each column of 5,000
-- rows costs psycopg a value to make, NULL or not (19 columns made fetching
-- the page take 60%% longer). The last figure: which log tables there were.
SELECT NULL, bounds.xmin, NULL, NULL,
       json_build_array(bounds.horizon_txid, bounds.horizon_id, held_back.held_back,
                        {scan_end}, {members})::text
FROM bounds
CROSS JOIN held_back{scan_join}
UNION ALL
(SELECT c.id, c.txid, c.model,
        -- The whole item as as_json_text() gives it, when the stored values
        -- hold only published columns (always, unless the registration was
        -- narrowed since): serving the page then costs no Python per change.
        -- As UTF-8 bytes in binary results: no decoding and encoding again.
        CASE WHEN c.published THEN convert_to({change_item}, 'UTF8') END,
        -- Only for a change Python has to filter: what it needs, as one
        -- JSON array (old and new as stored).
        CASE WHEN NOT c.published THEN json_build_array(
            c.op, to_jsonb(c.at) #>> '{}', r.user_id, r.method, r.path,
            r.traceparent, r.tracestate, {fallback_images})::text END
 -- The changes read the bounds as subqueries (not as a lateral join to
 -- them) and the request in a lateral lookup that cannot become a hash
 -- join: both keep the order of the index walk, so the ORDER BY costs no
 -- sort (it was a tenth of the statement).
 FROM ({changes}) AS c
 LEFT JOIN LATERAL (
     SELECT r.* FROM pubsubpull_request AS r
     WHERE c.request_id IS NOT NULL AND r.id = c.request_id OFFSET 0
 ) AS r ON true
 ORDER BY c.txid, c.id{outer_limit})
"""

# Where a filtered page's scan ends, on pubsubpull_change alone: its
# %(scan)s-th change after the cursor.
_SCAN_END_ROW = """
        SELECT c.txid, c.id FROM pubsubpull_change AS c
        WHERE (c.txid, c.id) > (%(txid)s, %(id)s)
          AND c.txid < bounds.xmin
        ORDER BY c.txid, c.id
        OFFSET %(scan)s - 1
        LIMIT 1"""

# The same over the whole log, whose rows may hold many changes: the row
# where the running count of changes after the cursor reaches %(scan)s, and
# the change in it that does (at most %(scan)s rows hold that many).
_LOG_SCAN_END_ROW = f"""
        SELECT w.txid, w.last_id - (w.upto - %(scan)s) AS id FROM (
            SELECT c.txid, c.last_id,
                   sum({changes_after_sql("%(txid)s, %(id)s", "%(id)s")})
                       OVER (ORDER BY c.txid, c.id) AS upto
            FROM (SELECT c.txid, c.id, c.rows, {LAST_ID_SQL} AS last_id
                  FROM pubsubpull_log AS c
                  WHERE {after_sql("%(txid)s, %(id)s")} AND c.txid < bounds.xmin
                  ORDER BY c.txid, c.id
                  LIMIT %(scan)s) AS c
        ) AS w
        WHERE w.upto >= %(scan)s
        ORDER BY w.txid, w.last_id
        LIMIT 1"""

# The changes of a page: the next ones of the models in feed order, on the
# (txid, id) index range from the start to the fence.
_CHANGES_SQL = """
    SELECT c.*,
           -- Every stored column still published ({columns_of}: the model's
           -- published columns, a constant per model): removing them leaves
           -- nothing (an eighth of the cost of testing each key). old and new
           -- of a change were written at once, with the same columns.
           coalesce((coalesce(c.new, c.old) - {columns_of}) = '{}', true) AS published
    FROM pubsubpull_change AS c
    WHERE (c.txid, c.id) > ((SELECT from_txid FROM bounds), (SELECT from_id FROM bounds))
      AND c.txid < (SELECT xmin FROM bounds)
      AND c.model = ANY(%(models)s)
    ORDER BY c.txid, c.id
    LIMIT %(limit)s
"""

# A filtered page (pubsubpull.protocol.filters, compiled by _filter_sql): the
# same index range, cut at the scan's end (the %(scan)s-th change after the
# start, see scan_end in _PAGE_SQL), of which the first %(limit)s matching
# changes are served. So a filter that matches little costs at most a scan's
# worth of rows per page, and the page's next cursor moves past every change
# it looked at and skipped.
#
# {where_old}/{where_new} judge the old and the new row; a change is served
# on its new row for inserts, its old row for deletes, and an update when
# either matches (and, if both do, when a "changed" field changed). An update
# whose old row matches and new row does not left the filtered set: it is
# served as a delete (its old row, new null), so a mirror of the set drops
# it; one that enters the set is an update with its new row, which a mirror
# upserts. old and new keep the "fields" asked for ({drop_of}: the published
# columns not asked for, a constant per model).
_FILTERED_CHANGES_SQL = """
    SELECT f.id, f.txid, f.model, f.object_pk, f.at, f.request_id, f.published,
           CASE WHEN f.moved_out THEN 'delete' ELSE f.op END AS op,
           f.old - {drop_of} AS old,
           CASE WHEN NOT f.moved_out THEN f.new - {drop_of} END AS new
    FROM (
        SELECT c.*, judged.moved_out,
               coalesce((coalesce(c.new, c.old) - {columns_of}) = '{}', true) AS published
        FROM pubsubpull_change AS c
        CROSS JOIN LATERAL (
            SELECT {where_old} AS old_in, {where_new} AS new_in, {changed} AS changed
        ) AS w
        CROSS JOIN LATERAL (
            SELECT CASE c.op WHEN 'insert' THEN w.new_in
                             WHEN 'delete' THEN w.old_in
                             WHEN 'update' THEN (w.old_in AND w.new_in AND w.changed)
                                                OR w.old_in <> w.new_in
                             ELSE true END AS matched,
                   c.op = 'update' AND w.old_in AND NOT w.new_in AS moved_out
        ) AS judged
        WHERE (c.txid, c.id) > ((SELECT from_txid FROM bounds), (SELECT from_id FROM bounds))
          AND (c.txid, c.id) <= ((SELECT end_txid FROM scan_end), (SELECT end_id FROM scan_end))
          AND c.txid < (SELECT xmin FROM bounds)
          AND c.model = ANY(%(models)s)
          AND judged.matched
        ORDER BY c.txid, c.id
        LIMIT %(limit)s
    ) AS f
    ORDER BY f.txid, f.id
"""


# Position.encode() of change c, in SQL: base64url of c1.<txid>.<id>, unpadded.
# Only the padding to drop: the bytes are "c", "1", "." and digits, whose 6-bit
# groups never reach 62 or 63 ("+" and "/", which base64url spells "-" and
# "_"), and at most 42 of them, short of encode()'s 76-character lines.
# translate() of the same cost a fifth of the page's rendering.
CURSOR_SQL = "rtrim(encode(textsend('c1.' || c.txid || '.' || c.id), 'base64'), '=')"

# The change item (pubsubpull.protocol.items.CHANGE), rendered by PostgreSQL:
# the same text change_item_json() gives.
_CHANGE_ITEM_SQL = items.change_item_sql(
    id="c.id::text",
    cursor=(items.Text('"'), "{cursor}", items.Text('"')),
    # A model label is app_label.model_name: nothing to escape.
    model=(items.Text('"'), "c.model", items.Text('"')),
    pk="{pk}",
    op=(items.Text('"'), "c.op", items.Text('"')),
    at="to_json(c.at)::text",
    sequence="c.id::text",
    old="coalesce(c.old::text, 'null')",
    new="coalesce(c.new::text, 'null')",
    request=(
        "CASE WHEN r.method IS NULL THEN 'null' ELSE "
        "'{\"user\":' || coalesce(to_jsonb(r.user_id)::text, 'null') "
        "|| ',\"method\":' || to_jsonb(r.method)::text "
        "|| ',\"path\":' || to_jsonb(r.path)::text "
        # The trace context only when the request had one (items.request_item).
        "|| CASE WHEN r.traceparent = '' THEN '' ELSE "
        "',\"traceparent\":' || to_jsonb(r.traceparent)::text "
        "|| CASE WHEN r.tracestate = '' THEN '' ELSE "
        "',\"tracestate\":' || to_jsonb(r.tracestate)::text END END "
        "|| '}' END"
    ),
)
_PAGE_SQL = (
    _PAGE_SQL.replace("{change_item}", _CHANGE_ITEM_SQL.replace("{cursor}", CURSOR_SQL))
    .replace("{fence}", FENCE_SQL)
    .replace("{held_after}", after_sql("bounds.held_txid, bounds.held_id"))
)
_PAGE_SQL = _PAGE_SQL.replace("{members}", MEMBERS_SIGNATURE_SQL)
_UNFILTERED_TEMPLATE = _PAGE_SQL.replace("{scan_join}", "").replace("{scan_end}", "NULL, NULL")
_FILTERED_TEMPLATE = _PAGE_SQL.replace("{scan_join}", "\nCROSS JOIN scan_end").replace(
    "{scan_end}",
    "CASE WHEN scan_end.cut THEN scan_end.end_txid END, "
    "CASE WHEN scan_end.cut THEN scan_end.end_id END",
)


def _fill(template: str, **values: str) -> str:
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


# Pages of pubsubpull_change alone (no other log table holds the models').
_V3 = {"scan_end_row": _SCAN_END_ROW, "more_ctes": "", "outer_limit": "",
       "fallback_images": "c.old, c.new"}  # fmt: skip
_UNFILTERED_PAGE_SQL = _fill(_UNFILTERED_TEMPLATE, changes=_CHANGES_SQL, **_V3)
_FILTERED_PAGE_SQL = _fill(_FILTERED_TEMPLATE, **_V3)

# Pages whose models have log tables of capture v4 too. Their changes are
# pubsubpull_change's next ones (as above) and the changes of the next log
# rows of those tables, merged in feed order. The log rows come first, from
# every table at once in (txid, id) order (chunks): up to %(limit)s of them
# hold at least %(limit)s changes after the cursor. Each is then read from
# its table, its images unnested and rendered (row_to_json: the composite's
# attributes are the published columns); the page is sorted and cut once.
_FROM = "(SELECT from_txid FROM bounds), (SELECT from_id FROM bounds)"
_V3_BESIDE_SQL = f"""
    SELECT c.id, c.txid, c.model, c.op, c.at, c.request_id,
           c.old::text AS old, c.new::text AS new, {{pk}} AS pk_json, c.published
    FROM ({_CHANGES_SQL}) AS c"""
# The log rows the chunks name, each read from its table ({table}, {oid}).
_CHUNK_ROWS = """FROM chunks AS k
    CROSS JOIN LATERAL (
        SELECT t.* FROM {table} AS t
        WHERE k.tableoid = {oid}::oid AND t.txid = k.txid AND t.id = k.id
    ) AS t"""
_MEMBER_CHANGES_SQL = f"""
    SELECT t.id + u.ordinal - 1, t.txid, t.model, t.op, t.at, t.request_id,
           row_to_json(u.o)::text, row_to_json(u.n)::text,
           coalesce(to_json(u.k)::text, 'null'), {{published}}
    {_CHUNK_ROWS}
    CROSS JOIN LATERAL (
        SELECT generate_series(1, greatest(t.rows, 1)) AS ordinal,
               unnest(t.keys) AS k, unnest(t.old) AS o, unnest(t.new) AS n
    ) AS u
    WHERE (t.txid, t.id + u.ordinal - 1) > ({_FROM})"""
# The same of a table of one change a row: nothing to unnest.
_SINGLE_CHANGES_SQL = f"""
    SELECT t.id, t.txid, t.model, t.op, t.at, t.request_id,
           row_to_json(t.old)::text, row_to_json(t.new)::text,
           coalesce(to_json(t.key)::text, 'null'), {{published}}
    {_CHUNK_ROWS}
    WHERE (t.txid, t.id) > ({_FROM})"""


def _chunks_cte(members: list[LogMember]) -> str:
    """The next log rows of ``members``, as few as hold %(limit)s changes after the cursor.

    At most %(limit)s rows (each holds a change), and no row after the one
    where the running count of changes after the cursor reaches %(limit)s:
    a page of 5,000 from inside a statement of a million changes reads 6
    rows, not 5,000 (every one of them unnested, 3,050 changes/s at a million).
    """
    rows = " UNION ALL ".join(
        f"SELECT t.tableoid, t.id, t.txid, t.rows FROM {quote_name(m.name)} AS t "
        f"WHERE {after_sql(_FROM, 't')} AND t.txid < (SELECT xmin FROM bounds)"
        for m in members
    )
    after = changes_after_sql(_FROM, "(SELECT from_id FROM bounds)", "k")
    return f""",
chunks AS MATERIALIZED (
    SELECT k.tableoid, k.id, k.txid FROM (
        SELECT k.tableoid, k.id, k.txid, {after} AS n,
               sum({after}) OVER (ORDER BY k.txid, k.id) AS upto
        FROM (SELECT k.* FROM ({rows}) AS k ORDER BY k.txid, k.id LIMIT %(limit)s) AS k
    ) AS k
    WHERE k.upto - k.n < %(limit)s
)"""


def _members_page_sql(members: list[LogMember], chosen: dict[str, Registration]) -> str:
    """The unfiltered page statement over pubsubpull_change and ``members``."""
    parts = [_V3_BESIDE_SQL]
    for m in members:
        # Images of columns no longer published go through Python, which drops them.
        published = set(m.columns) <= set(chosen[m.label].published_columns)
        parts.append(
            _fill(_SINGLE_CHANGES_SQL if m.single else _MEMBER_CHANGES_SQL,
                  table=quote_name(m.name), oid=str(m.oid),
                  published="true" if published else "false")
        )  # fmt: skip
    template = _UNFILTERED_TEMPLATE.replace("{pk}", "c.pk_json")
    return _fill(
        template,
        changes="\n    UNION ALL".join(parts),
        scan_end_row=_LOG_SCAN_END_ROW,
        more_ctes=_chunks_cte(members),
        outer_limit="\n LIMIT %(limit)s",
        fallback_images="c.old::json, c.new::json",
    )


def _members_filtered_source(members: list[LogMember]) -> str:
    """pubsubpull_change and ``members`` as rows of one change each (jsonb images).

    For a filtered page, whose filters judge jsonb: the log rows of the
    members within the scan's range, unnested.
    """
    columns = "c.id, c.txid, c.model, c.object_pk, c.op, c.at, c.old, c.new, c.request_id"
    within = (
        f"{after_sql(_FROM)} AND c.txid < (SELECT xmin FROM bounds) "
        "AND (c.txid, c.id) <= ((SELECT end_txid FROM scan_end), (SELECT end_id FROM scan_end))"
    )
    parts = [f"SELECT {columns} FROM pubsubpull_change AS c"]
    parts += [statement_log.changes_sql(m.name, where=within, single=m.single) for m in members]
    return "(" + "\n    UNION ALL ".join(parts) + ")"


def _database(using: str | None) -> str:
    """The database whose change log is read when no model says otherwise."""
    from pubsubpull.capture.models import Change

    return using or router.db_for_read(Change) or DEFAULT_DB_ALIAS


def log_database(registration: Registration) -> str:
    """The database whose change log records ``registration``'s changes.

    The capture trigger writes each change to the log of the database that
    holds the table, the one Django's routers read the model from.
    """
    return router.db_for_read(registration.model) or DEFAULT_DB_ALIAS


def feed_models(models: Iterable[str] | None = None) -> list[Registration]:
    """The registrations named by ``models`` (labels; None: all).

    Raises ``LookupError`` naming a label that is not a published model.
    """
    if models is None:
        return registrations()
    chosen = []
    for label in models:
        registration = get_registration(label)
        if registration is None:
            raise LookupError(label)
        chosen.append(registration)
    return chosen


def feed_source(
    models: Iterable[str] | None = None, using: str | None = None
) -> tuple[str, list[Registration]]:
    """The database a feed over ``models`` reads, and the registrations it serves.

    ``models=None`` is every published model recorded in ``using`` (by
    default the database Django's routers read ``pubsubpull.Change`` from).
    Named models must all be recorded in one database (``using``, if given):
    otherwise :class:`SeveralDatabases`. ``LookupError`` names a label that is
    not a published model.
    """
    if models is None:
        alias = _database(using)
        return alias, [r for r in registrations() if log_database(r) == alias]
    chosen = feed_models(models)
    by_database: dict[str, list[str]] = {}
    for registration in chosen:
        by_database.setdefault(log_database(registration), []).append(registration.label)
    if using is not None and set(by_database) - {using}:
        by_database.setdefault(using, [])
    if len(by_database) > 1:
        raise SeveralDatabases([sorted(labels) for labels in by_database.values() if labels])
    alias = next(iter(by_database), _database(using))
    return alias, chosen


def fence_position(xmin: int) -> Position:
    """The feed position just before transaction ``xmin``: all older ones have ended."""
    return Position(max(xmin - 1, 0), MAX_ID)


def current_fence(using: str | None = None) -> int:
    """The oldest transaction of this database still running: every older one has ended.

    Transactions of other databases on the same server do not count (see the
    page query above).
    """
    return read_changes(None, limit=1, using=using).fence


def current_position(using: str | None = None) -> Position:
    """A cursor from which the feed serves only changes committed from now on.

    Some changes committed just before may follow too (at least once, never
    fewer): those of transactions that were still open. It is the same
    per-database fence as the page read's, so a change the feed already
    serves is never after it; a server-wide ``pg_snapshot_xmin`` would let a
    long transaction in another database put "now" before changes that every
    reader has already been served.
    """
    return fence_position(current_fence(using))


# The last change of one request or job: the partial index on request_id
# finds its rows (a handful for most requests), the sort keeps the greatest.
_REQUEST_POSITION_SQL = (
    f"SELECT c.txid, {LAST_ID_SQL} FROM pubsubpull_log AS c WHERE c.request_id = %s "
    "ORDER BY c.txid DESC, c.id DESC LIMIT 1"
)
_HEAD_SQL = (
    f"SELECT c.txid, {LAST_ID_SQL} FROM pubsubpull_log AS c ORDER BY c.txid DESC, c.id DESC LIMIT 1"
)


def request_position(request_id: str, using: str) -> Position | None:
    """The feed position of the last change request (or job) ``request_id`` made in ``using``.

    None when it made none there (that this connection can see: its own
    transaction's, and committed ones). Read-your-writes: a reader at or past
    it has read every change of the request (docs/read-your-writes.rst).
    """
    with connections[using].cursor() as cursor:
        cursor.execute(_REQUEST_POSITION_SQL, [request_id])
        row = cursor.fetchone()
    return None if row is None else Position(row[0], row[1])


def head_position(using: str | None = None) -> Position | None:
    """The position of the newest change this connection can see (None: the log is empty).

    A reader at or past it has read every change committed before this call
    (and, inside a transaction, the transaction's own so far, once it commits).
    """
    with connections[_database(using)].cursor() as cursor:
        cursor.execute(_HEAD_SQL)
        row = cursor.fetchone()
    return None if row is None else Position(row[0], row[1])


def _published(values: dict[str, Any] | None, columns: frozenset[str]) -> dict[str, Any] | None:
    """The published part of a stored old/new value."""
    # A registration narrowed since the change was written: serve what it
    # publishes now, nothing more.
    if values is None or columns.issuperset(values):
        return values
    return {k: v for k, v in values.items() if k in columns}


# -- Filters -------------------------------------------------------------------
#
# pubsubpull.protocol.filters parses a filter into a tree; here it becomes SQL
# on a stored row (jsonb: c.new or c.old), judged when a page is read. Field
# names and values are bound parameters, never SQL text. Every lookup reads
# the value only when its JSON type is the field's (a number as numeric, a
# string as text, ...), so a stored value of another type (a column whose
# type changed) compares false instead of failing the page; and every lookup
# is false on a null or missing value (coalesce), so "not" of it is true.

_NUMBERS = {
    "AutoField", "BigAutoField", "SmallAutoField", "IntegerField", "BigIntegerField",
    "SmallIntegerField", "PositiveIntegerField", "PositiveBigIntegerField",
    "PositiveSmallIntegerField", "FloatField", "DecimalField",
}  # fmt: skip
_STRINGS = {
    "CharField", "TextField", "SlugField", "EmailField", "URLField", "UUIDField",
    "GenericIPAddressField", "IPAddressField", "FilePathField", "FileField", "ImageField",
}  # fmt: skip
_KINDS = {"BooleanField": "boolean", "DateField": "date", "DateTimeField": "datetime"}
_KINDS["TimeField"] = "time"

# The value of a field as its kind, or NULL when the stored JSON is of another type.
_TYPED = {
    "number": "CASE WHEN jsonb_typeof({row} -> {f}) = 'number' THEN ({row} -> {f})::numeric END",
    "string": "CASE WHEN jsonb_typeof({row} -> {f}) = 'string' THEN {row} ->> {f} END",
    "boolean": "CASE WHEN jsonb_typeof({row} -> {f}) = 'boolean' THEN ({row} -> {f})::boolean END",
    "date": "CASE WHEN jsonb_typeof({row} -> {f}) = 'string' THEN ({row} ->> {f})::date END",
    "datetime": "CASE WHEN jsonb_typeof({row} -> {f}) = 'string' "
    "THEN ({row} ->> {f})::timestamptz END",
    "time": "CASE WHEN jsonb_typeof({row} -> {f}) = 'string' THEN ({row} ->> {f})::time END",
    "json": "({row} -> {f})",
}
_SQL_TYPE = {"number": "numeric", "string": "text", "boolean": "boolean", "date": "date"}
_SQL_TYPE.update(datetime="timestamptz", time="time", json="jsonb")
_COMPARE = {"exact": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def _kind(field: Any) -> str:
    while field.is_relation and getattr(field, "target_field", None) is not None:
        field = field.target_field
    internal = field.get_internal_type()
    if internal in _NUMBERS:
        return "number"
    if internal in _STRINGS:
        return "string"
    return _KINDS.get(internal, "json")


def filter_schema(registration: Registration) -> filtering.Schema:
    """What a filter on ``registration`` may name: its published columns and their kinds."""
    published = registration.published_fields
    kinds = {str(field.column): _kind(field) for field in published}
    aliases = {f.name: str(f.column) for f in published if f.name != f.column}
    return filtering.Schema(pk=registration.pk_column, kinds=kinds, aliases=aliases)


def parse_filters(data: Any, models: Iterable[str], path: str = "filters") -> filtering.Filters:
    """Check filters (label -> filter JSON) for a reader of ``models``; InvalidFilter if bad."""
    schemas = {r.label: filter_schema(r) for r in feed_models(models)}
    return filtering.parse(data, schemas, path)


class _Binder:
    """Names for the parameters of a filter's SQL: %(f0)s, %(f1)s, ..."""

    def __init__(self, params: dict[str, Any]):
        self.params = params

    def __call__(self, value: Any) -> str:
        name = f"f{len(self.params)}"
        self.params[name] = value
        return f"%({name})s"


def page_sql(
    chosen: dict[str, Registration],
    filters: filtering.Filters,
    params: dict[str, Any],
    members: list[LogMember] | None = None,
) -> str:
    """The page statement for the models ``chosen`` (label -> registration).

    ``filters`` (label -> filter, for some of them) makes it a filtered page;
    the values it needs are added to ``params``. ``members``: the log tables
    of capture v4 that hold changes of these models (besides pubsubpull_change).
    """
    bind = _Binder(params)
    if filters:
        # The published columns a filter's "fields" leave out of old and new.
        drop: dict[str, list[str]] = {label: [] for label in chosen}
        for label, model_filter in filters.items():
            if model_filter.fields is not None:
                drop[label] = sorted(
                    set(chosen[label].published_columns) - set(model_filter.fields)
                )
        changes = _filter_sql(filters, params)
        changes = changes.replace("{drop_of}", _per_model(bind, drop, "text[]", "f.model"))
        if members:
            changes = changes.replace(
                "FROM pubsubpull_change AS c", f"FROM {_members_filtered_source(members)} AS c"
            )
            template = _fill(_FILTERED_TEMPLATE, **{**_V3, "scan_end_row": _LOG_SCAN_END_ROW})
        else:
            template = _FILTERED_PAGE_SQL
        sql = template.replace("{changes}", changes)
    elif members:
        sql = _members_page_sql(members, chosen)
    else:
        sql = _UNFILTERED_PAGE_SQL
    columns = {label: list(r.published_columns) for label, r in chosen.items()}
    # An integer key's JSON is the text object_pk holds already; any other
    # is read from the stored row, as JSON (a string, quoted and escaped).
    connection = connections[DEFAULT_DB_ALIAS]  # every alias is PostgreSQL: same types
    numbered = {label for label, r in chosen.items() if key_type(r, connection) in INTEGER_TYPES}
    read = "coalesce((coalesce(c.new, c.old) -> {pk_of})::text, 'null')"
    if len(numbered) == len(chosen):
        pk = "coalesce(c.object_pk, 'null')"
    elif not numbered:
        pk = read
    else:
        pk = (
            f"CASE WHEN c.model = ANY({bind(sorted(numbered))}::text[]) "
            f"THEN coalesce(c.object_pk, 'null') ELSE {read} END"
        )
    pks = {label: r.pk_column for label, r in chosen.items() if label not in numbered}
    sql = sql.replace("{pk}", pk).replace("{columns_of}", _per_model(bind, columns, "text[]"))
    return sql.replace("{pk_of}", _per_model(bind, pks)) if pks else sql


INTEGER_TYPES = ("smallint", "integer", "bigint")


def key_type(registration: Registration, connection: Any) -> str:
    """The database type of the model's key column, without modifiers (``varchar``).

    A key that is a relation (a parent link) has its target's type.
    """
    field = registration.model._meta.pk
    return (field.db_type(connection) or "").split("(")[0].strip().lower()


def _per_model(
    bind: _Binder, values: dict[str, Any], cast: str = "text", model: str = "c.model"
) -> str:
    """A SQL expression of ``model`` (a label) giving ``values[label]``, bound as constants.

    Per row it costs a comparison of the label or nothing (one model), where
    looking the value up in a JSON parameter and parsing it cost a tenth of
    the page statement.
    """
    if len(values) == 1:
        return f"{bind(next(iter(values.values())))}::{cast}"
    whens = [f"WHEN {bind(label)} THEN {bind(value)}::{cast}" for label, value in values.items()]
    return f"(CASE {model} {' '.join(whens)} END)"


@dataclass(frozen=True)
class _Figures:
    """The page statement's own row: the bounds it read the page within."""

    xmin: int
    horizon: Position
    held_back: bool
    scan_end: Position | None  # where a filtered page's scan stopped, if it did
    members: tuple[int, ...]  # the log tables besides pubsubpull_change, by oid


def _page_rows(cursor: psycopg.Cursor, sql: str, params: dict[str, Any]) -> tuple[_Figures, list]:
    """The page statement's figures (the bounds) and its change rows, in feed order."""
    cursor.execute(sql, params, binary=True)
    rows = cursor.fetchall()
    if rows[0][0] is not None:
        # UNION ALL gives the figures first; should a plan ever not, find them.
        rows.sort(key=lambda row: row[0] is not None)
    horizon_txid, horizon_id, held_back, end_txid, end_id, members = json.loads(rows[0][4])
    figures = _Figures(
        rows[0][1],
        Position(horizon_txid, horizon_id),
        held_back,
        None if end_txid is None else Position(end_txid, end_id),
        tuple(members),
    )
    return figures, rows[1:]


T = TypeVar("T")


def guarded(cursor: psycopg.Cursor, names_members: bool, read: Callable[[], T]) -> T | None:
    """``read()``, or None if a log table its SQL names was dropped since it was made.

    The SQL of a process that has not looked at the log's tables since names
    the ones it saw. In a savepoint inside a transaction when it names any, so
    that the error (UndefinedTable) leaves the transaction usable for a read
    made again with the tables there are now.
    """
    try:
        if names_members and cursor.connection.info.transaction_status != 0:  # not idle
            with cursor.connection.transaction():
                return read()
        return read()
    except psycopg.errors.UndefinedTable:
        if not names_members:
            raise
        return None


def _sql_value(value: Any, kind: str) -> Any:
    if kind == "number":
        return repr(value) if isinstance(value, float) else str(value)
    if kind == "json":
        return json.dumps(value)
    return value


def _leaf_sql(leaf: filtering.Leaf, row: str, bind: _Binder, names: dict[str, str]) -> str:
    field = names.get(leaf.field) or names.setdefault(leaf.field, bind(leaf.field))
    if leaf.lookup == "isnull":
        test = "=" if leaf.value else "<>"
        return f"coalesce(jsonb_typeof({row} -> {field}), 'null') {test} 'null'"
    typed = _TYPED[leaf.kind].replace("{row}", row).replace("{f}", field)
    sql_type = _SQL_TYPE[leaf.kind]
    if leaf.lookup == "in":
        values = bind([_sql_value(v, leaf.kind) for v in leaf.value])
        test = f"{typed} = ANY({values}::text[]::{sql_type}[])"
    elif leaf.lookup in _COMPARE:
        value = bind(_sql_value(leaf.value, leaf.kind))
        test = f"{typed} {_COMPARE[leaf.lookup]} {value}::{sql_type}"
    else:
        value = bind(leaf.value) + "::text"
        test = {
            "startswith": f"starts_with({typed}, {value})",
            "endswith": f"right({typed}, char_length({value})) = {value}",
            "contains": f"strpos({typed}, {value}) > 0",
        }[leaf.lookup]
    return f"coalesce({test}, false)"


def _where_sql(node: filtering.Node, row: str, bind: _Binder, names: dict[str, str]) -> str:
    if isinstance(node, filtering.Leaf):
        return _leaf_sql(node, row, bind, names)
    if isinstance(node, filtering.Not):
        return f"(NOT {_where_sql(node.child, row, bind, names)})"
    joiner = " AND " if isinstance(node, filtering.All) else " OR "
    return "(" + joiner.join(_where_sql(child, row, bind, names) for child in node.children) + ")"


def where_sql(node: filtering.Node, row: str, params: dict[str, Any]) -> str:
    """SQL true when the jsonb ``row`` matches ``node``; its values added to ``params``.

    (The snapshot's filtered pages judge each row with it.)
    """
    return _where_sql(node, row, _Binder(params), {})


def _filter_sql(chosen: filtering.Filters, params: dict[str, Any]) -> str:
    """The filtered changes' SQL for ``chosen`` (label -> filter), its values in ``params``."""
    bind = _Binder(params)
    where_old, where_new, changed = [], [], []
    for label in sorted(chosen):
        model_filter = chosen[label]
        model = bind(label)
        names: dict[str, str] = {}
        if model_filter.where is not None:
            # The same parameters for the old and the new row.
            old = _where_sql(model_filter.where, "c.old", bind, names)
            new = old.replace("c.old", "c.new")
            where_old.append(f"WHEN {model} THEN {old}")
            where_new.append(f"WHEN {model} THEN {new}")
        if model_filter.changed is not None:
            tests = []
            for name in model_filter.changed:
                field = names.get(name) or names.setdefault(name, bind(name))
                tests.append(f"(c.old -> {field}) IS DISTINCT FROM (c.new -> {field})")
            changed.append(f"WHEN {model} THEN ({' OR '.join(tests)})")

    def case(whens: list[str]) -> str:
        return f"CASE c.model {' '.join(whens)} ELSE true END" if whens else "true"

    return (
        _FILTERED_CHANGES_SQL.replace("{where_old}", case(where_old))
        .replace("{where_new}", case(where_new))
        .replace("{changed}", case(changed))
    )


def read_changes(
    after: Position | str | None = None,
    limit: int = 100,
    models: Iterable[str] | None = None,
    *,
    using: str | None = None,
    whole_transactions: bool = False,
    filters: filtering.Filters | None = None,
) -> Page:
    """Read the next page of the feed after ``after`` (a Position or cursor string).

    ``after=None`` starts at the oldest retained change. ``models`` limits the
    feed to these model labels (by default every published model recorded in
    ``using``'s change log); the page is read from the change log of the
    database they are recorded in. ``filters`` (label -> a parsed filter, see
    :func:`parse_filters`) serves only the matching changes, with the fields
    asked for; such a page looks at no more than FILTER_SCAN changes, and its
    ``next`` moves past every change it looked at (``page.more`` when it
    stopped there, before the fence). Raises :class:`InvalidCursor` for a
    malformed cursor string, :class:`CursorExpired` when the log has been
    pruned past ``after``, ``LookupError`` for a label that is not published,
    :class:`SeveralDatabases` for models recorded in different databases.

    ``whole_transactions`` never splits a transaction's changes across two
    pages (see :func:`read_whole_transactions`).
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if whole_transactions:
        return read_whole_transactions(after, limit, models, using=using, filters=filters)
    explicit = Position.coerce(after)
    start = explicit or START
    alias, served = feed_source(models, using)
    chosen = {r.label: r for r in served}
    filters = {label: f for label, f in (filters or {}).items() if label in chosen}
    columns = {label: frozenset(r.published_columns) for label, r in chosen.items()}
    for label, model_filter in filters.items():
        if model_filter.fields is not None:
            columns[label] = columns[label] & frozenset(model_filter.fields)
    base_params: dict[str, Any] = {
        "txid": start.txid,
        "id": start.id,
        "models": sorted(chosen),
        "limit": limit,
        "scan": max(conf.filter_scan(), limit),
    }
    params = dict(base_params)
    members = log_members(alias)
    sql = page_sql(chosen, filters, params, members.of(chosen))
    connection = connections[alias]
    # Binary results give each item as the bytes the response is made of
    # (as the snapshot reads its pages): psycopg's own cursor on Django's
    # connection, same transaction.
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        if not connection.get_autocommit() or connection.in_atomic_block:
            # pg_stat_activity is cached for the rest of a transaction: drop
            # the cache so the page statement reads it after its snapshot.
            cursor.execute("SELECT pg_stat_clear_snapshot()")
        read = guarded(cursor, bool(members.of(chosen)), lambda: _page_rows(cursor, sql, params))
        figures, rows = read if read is not None else (None, [])
        if figures is None or figures.members != members.oids:
            # A log table was made or dropped since this process looked:
            # read the page again with the tables there are now.
            members = log_members(alias, refresh=True)
            params = dict(base_params)
            sql = page_sql(chosen, filters, params, members.of(chosen))
            figures, rows = _page_rows(cursor, sql, params)
        if figures.held_back and len(rows) < limit and figures.scan_end is None:
            # Held back. Often by a transaction of another database that
            # ended between the snapshot and the activity check, so could not
            # be placed: a fresh snapshot usually serves the page.
            figures, rows = _page_rows(cursor, sql, params)

    xmin, horizon, held_back, scan_end = (
        figures.xmin,
        figures.horizon,
        figures.held_back,
        figures.scan_end,
    )
    if explicit is not None and explicit < horizon:
        raise CursorExpired(explicit, horizon)

    # Usually PostgreSQL rendered every change whole: the body is their bytes
    # joined, and each change object is made with as little Python as can be
    # (from the row as it is: a row is id, txid, model, item, fallback).
    rendered = [row[3] for row in rows]
    if None not in rendered:
        return _page(
            list(starmap(_RenderedChange, rows)), rendered,
            start, horizon, xmin, held_back, scan_end, limit,
        )  # fmt: skip
    changes: list[FeedChange] = []
    for row in rows:
        if row[3] is not None:
            changes.append(_RenderedChange(*row))
            continue
        id_, txid, label, _, fallback = row
        op, at, user_id, method, path, trace, state, old, new = json.loads(fallback)
        # Stored values with columns no longer published: drop them here.
        old, new = _published(old, columns[label]), _published(new, columns[label])
        values = new if new is not None else old
        pk = None if values is None else values.get(chosen[label].pk_column)
        change = FeedChange(
            id_, txid, label, pk, op, at, old, new, user_id, method, path, trace, state
        )  # fmt: skip
        changes.append(change)

    return _page(changes, None, start, horizon, xmin, held_back, scan_end, limit)


def _page(
    changes: list[FeedChange],
    rendered: list[bytes] | None,
    start: Position,
    horizon: Position,
    xmin: int,
    held_back: bool,
    scan_end: Position | None,
    limit: int,
) -> Page:
    """The page of ``changes`` read from ``start``, and where the next one starts."""
    following = max(start, horizon)
    if changes:
        following = max(following, changes[-1].position)
    if len(changes) < limit and scan_end is not None:
        # The scan stopped at its bound: every match up to it is on this
        # page, and the rest of the range is still to look at.
        following = max(following, scan_end)
    elif len(changes) < limit:
        # Every matching change before the fence was on this page, and no
        # transaction older than the fence can write again: skip to it, so a
        # filtered feed does not rescan other models' changes on every poll.
        following = max(following, fence_position(xmin))
    return Page(
        changes,
        following,
        limit,
        held_back=held_back and not changes and scan_end is None,
        fence=xmin,
        # None: the count tells (see caught_up).
        more=True if scan_end is not None and len(changes) < limit else None,
        _item_bytes=rendered,
    )


# How many changes each further read of a transaction larger than the page
# limit takes (it is served whole however large it is).
WHOLE_TRANSACTION_CHUNK = 1000


def read_whole_transactions(
    after: Position | str | None = None,
    limit: int = 100,
    models: Iterable[str] | None = None,
    *,
    using: str | None = None,
    filters: filtering.Filters | None = None,
) -> Page:
    """:func:`read_changes` that never splits a transaction's changes across pages.

    A page ends at a transaction boundary: it holds the whole transactions
    that fit in ``limit`` changes, or, when the first one is larger than
    ``limit``, that transaction alone and complete. Order, fence and cursors
    are the feed's: every transaction served has ended, so all its changes
    are in the log (the changes of ``models`` only, when the feed is
    narrowed). ``next`` follows the page's last change, and ``caught_up``
    says whether more is waiting: a page may end short of ``limit`` at a
    transaction boundary and still not be the last.

    Reads ``limit + 1`` changes (the one past the limit tells whether the
    last transaction goes on), and a transaction larger than ``limit`` in
    further reads of :data:`WHOLE_TRANSACTION_CHUNK` after it.
    """
    page = read_changes(after, limit + 1, models, using=using, filters=filters)
    changes = page.changes
    if len(changes) > limit:
        last = changes[limit].txid  # the first change past the limit goes on with it
        position = changes[-1].position
    elif page.more and changes and page.next.txid <= changes[-1].txid:
        # A filtered read stopped at its scan bound inside its last
        # transaction: that one's further matching changes are still ahead.
        last = changes[-1].txid
        position = page.next
    else:  # every transaction on the page is complete
        return Page(changes, page.next, limit, held_back=page.held_back, fence=page.fence,
                    more=bool(page.more))  # fmt: skip
    kept = [c for c in changes[:limit] if c.txid != last]
    if not kept:
        # The first transaction is larger than the page (or the scan): all of it, alone.
        kept = [c for c in changes if c.txid == last]
        while True:
            chunk = read_changes(position, WHOLE_TRANSACTION_CHUNK, models, using=using,
                                 filters=filters)  # fmt: skip
            rest = [c for c in chunk.changes if c.txid == last]
            kept += rest
            if len(rest) < len(chunk.changes) or chunk.caught_up or chunk.next.txid > last:
                break
            # A filtered chunk may stop at its scan bound: go on from there.
            position = chunk.next
    return Page(kept, kept[-1].position, limit, fence=page.fence, more=True)


def read_from(
    position: Position,
    limit: int,
    models: Iterable[str],
    filters: filtering.Filters | None = None,
    *,
    whole_transactions: bool = False,
) -> Page:
    """:func:`read_changes` for a stored position (a subscription's).

    ``START`` (a subscription that started at the beginning) follows the
    oldest retained change instead of expiring when the log is pruned.
    """
    return read_changes(
        None if position == START else position,
        limit,
        models,
        whole_transactions=whole_transactions,
        filters=filters,
    )


def transaction_ends(changes: list[FeedChange]) -> list[int]:
    """How many of ``changes`` each whole-transaction prefix holds (the last: all of them).

    ``[t1, t1, t2, t3, t3]`` gives ``[2, 3, 5]``: a batch or page cut after
    2, 3 or 5 changes splits no transaction.
    """
    ends = [n for n in range(1, len(changes)) if changes[n].txid != changes[n - 1].txid]
    return [*ends, len(changes)] if changes else []


def pending_sql(position: str, models: str, *, jsonb: bool = False) -> str:
    """SQL that is true when the log holds a change of ``models`` past ``position``.

    For statements that must decide in one snapshot (delivery lets go of a
    caught-up subscription in the statement that records its last batch).
    ``position`` is SQL of a ``txid, id`` pair, ``models`` of a text array
    (``jsonb``: a JSON array of labels). Committed changes count whether or
    not they are behind the fence yet.
    """
    match = f"({models}) ? c.model" if jsonb else f"c.model = ANY({models})"
    return f"EXISTS (SELECT 1 FROM pubsubpull_log AS c WHERE {after_sql(position)} AND {match})"


# A row holding the position's change counts only the changes after it.
_BACKLOG_SQL = f"""
SELECT coalesce(sum({changes_after_sql("%(txid)s, %(id)s", "%(id)s")}), 0)::bigint,
       min(c.at)
FROM pubsubpull_log AS c
WHERE {after_sql("%(txid)s, %(id)s")} AND c.model = ANY(%(models)s)
"""


def backlog(after: Position, models: Iterable[str]) -> tuple[int, datetime.datetime | None]:
    """How many changes of ``models`` the log holds past ``after``, and the oldest's time."""
    with connections[_database(None)].cursor() as cursor:
        cursor.execute(_BACKLOG_SQL, {"txid": after.txid, "id": after.id, "models": list(models)})
        count, oldest = cursor.fetchone()
    return count, oldest


def position_since(since: datetime.datetime, models: Iterable[str]) -> Position:
    """The position just before the first change of ``models`` made at or after ``since``.

    With none since then, the current position (only changes from now on).
    """
    with connections[_database(None)].cursor() as cursor:
        cursor.execute(
            "SELECT txid, id FROM pubsubpull_log WHERE at >= %s AND model = ANY(%s) "
            "ORDER BY txid, id LIMIT 1",
            [since, list(models)],
        )
        row = cursor.fetchone()
    if row is None:
        return current_position()
    return Position(row[0], row[1] - 1)


# The oldest log rows in feed order up to ``keep`` that no running
# transaction of this database can precede, up to the first one that is not
# old enough or holds a change past ``keep`` (a prefix, so the pruned range
# has no holes), deleted from whichever log table holds them; how many rows
# went, and how many changes they held.
_PRUNE_SQL = f"""
WITH batch AS (
    SELECT c.id, c.txid, c.at, {LAST_ID_SQL} AS last_id FROM pubsubpull_log AS c
    WHERE (c.txid, c.id) <= (%(keep_txid)s, %(keep_id)s)
      AND c.txid < %(fence)s
    ORDER BY c.txid, c.id
    LIMIT %(batch)s
),
prefix AS (
    SELECT txid, id FROM (
        SELECT txid, id,
               bool_and(at < %(cutoff)s AND (txid, last_id) <= (%(keep_txid)s, %(keep_id)s))
                   OVER (ORDER BY txid, id) AS old
        FROM batch
    ) AS b
    WHERE old
),
gone AS (
    DELETE FROM pubsubpull_log AS c USING prefix
    WHERE (c.txid, c.id) = (prefix.txid, prefix.id)
    RETURNING greatest(c.rows, 1) AS changes
)
SELECT count(*), coalesce(sum(changes), 0)::bigint FROM gone
"""


def delete_oldest(
    keep: Position | None, older_than: datetime.datetime, limit: int, using: str
) -> tuple[int, int]:
    """Delete up to ``limit`` of the oldest log rows, in feed order.

    Returns how many rows went (fewer than ``limit``: nothing more to delete
    now) and how many changes they held (a row may hold many).

    Only changes at or before ``keep`` (None: any), made before
    ``older_than``, and of transactions older than every running one (a
    prefix of the log: the horizon follows the deletes, sql/log_v1.sql),
    in a short transaction of its own, so no long lock is held.
    """
    from django.db import transaction

    keep = keep or END
    params: dict[str, Any] = {
        "keep_txid": keep.txid,
        "keep_id": keep.id,
        "fence": current_fence(using),
        "cutoff": older_than,
        "batch": limit,
    }
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(_PRUNE_SQL, params)
        rows, changes = cursor.fetchone()
        return rows, changes


def newest_change_id(using: str | None = None) -> int:
    """The id of the latest change recorded (0 before the first)."""
    with connections[_database(using)].cursor() as cursor:
        cursor.execute(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM pubsubpull_change_id_seq"
        )
        return cursor.fetchone()[0]


def notify(labels: Iterable[str], using: str | None = None) -> None:
    """Notify listeners (workers, long polls) on :data:`CHANNEL` as a commit of ``labels`` does."""
    with connections[_database(using)].cursor() as cursor:
        for label in labels:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, label])


# -- Long polling ------------------------------------------------------------

# A process that listens all the time (pubsubpull_worker) runs this every few
# seconds: writers notify while its stamp is under 30 s old (see the end of
# sql/capture_v1.sql; long polls arm instead, pubsubpull.publisher.listener).
STAY_AWAKE_SQL = "SELECT pubsubpull_wakeup_stay_awake()"
STAY_AWAKE_EVERY = 5.0
