"""Snapshots: a published model's rows, keyset page by keyset page, published fields only.

PostgreSQL renders each item whole, as the API serves it: the published
columns as JSON (the same values the capture trigger's ``to_jsonb`` stores, so
an instance and a change of it look alike), the pk, its URL and its sequence.
A page costs one query and no Python per row. Pages are bounded by ``limit``,
so memory stays flat however large the table.

The first page also gives ``feed_position``: a feed cursor from the same
statement's snapshot. Following the feed from there after the last page
misses nothing that changed while the pages were read::

    from pubsubpull.publisher import snapshot

    page = snapshot.read_instances("shop.customer", limit=1000)
    position = page.feed_position
    while True:
        for instance in page.instances:
            store(instance.pk, instance.fields)
        if page.next is None:
            break
        page = snapshot.read_instances("shop.customer", after=page.next, limit=1000)
"""

from __future__ import annotations

import base64
import binascii
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import psycopg
from django.core.exceptions import ValidationError
from django.db import connections, router

from pubsubpull.capture import statement_log
from pubsubpull.capture.registry import Registration, get_registration
from pubsubpull.capture.triggers import quote_name
from pubsubpull.exceptions import InvalidAfter
from pubsubpull.protocol import filters as filtering
from pubsubpull.protocol import items, jsonbody
from pubsubpull.protocol.cursor import Position
from pubsubpull.protocol.jsonbody import unstorable
from pubsubpull.publisher.feed import (
    FENCE_SQL,
    INTEGER_TYPES,
    MEMBERS_SIGNATURE_SQL,
    LogMember,
    fence_position,
    guarded,
    key_type,
    log_members,
    where_sql,
)

# One template for every model; {names} are quoted identifiers and SQL
# expressions made from the registration (see _query). PostgreSQL renders each
# item whole, as the API serves it, so a page costs the view no Python per row:
# {item} is the instance item as the protocol defines it
# (pubsubpull.protocol.items, made into SQL by _ITEM below). The pk text is
# what the trigger stores as object_pk (``to_jsonb(row) ->> pk``).
#
# feed_position comes from the feed's own fence (feed.FENCE_SQL): the oldest
# transaction of this database running at the page's snapshot. Not the
# server's pg_snapshot_xmin: a transaction of another database on the same
# server, open since before rows this page shows were written, would put
# feed_position behind them, and a pull would handle them twice (once here,
# once again from the feed).
_PAGE_SQL = """
WITH snap AS MATERIALIZED (
    SELECT pg_current_snapshot() AS s
),
fence AS MATERIALIZED (
    SELECT {fence} AS xmin,
           coalesce(h.txid, 0) AS horizon_txid, coalesce(h.change_id, 0) AS horizon_id
    FROM snap
    LEFT JOIN pubsubpull_horizon AS h ON h.id = 1
),
placed AS MATERIALIZED (
    -- Whether the fence is a transaction pg_stat_activity shows running (or
    -- none runs): one it could not place (of another database, ended between
    -- the snapshot and the activity check) may hold feed_position back.
    SELECT fence.*,
           fence.xmin >= pg_snapshot_xmax(snap.s)::text::bigint
           OR EXISTS (SELECT 1 FROM pg_stat_activity AS a
                      WHERE a.backend_xid = fence.xmin::text::xid) AS placed,
           -- Whether the log's tables are those the item's sequence reads.
           {members}::jsonb = %(members)s::jsonb AS members_known
    FROM fence, snap
)
SELECT fence.xmin, fence.horizon_txid, fence.horizon_id, page.pk_text, page.item, fence.placed,
       fence.members_known
FROM placed AS fence
LEFT JOIN LATERAL (
    __KEYED_OPEN__
        SELECT t.{pk} AS key, {pk_text} AS pk_text, {pk_json} AS pk_json,
               row_to_json(published)::text AS fields
        FROM {table} AS t
        CROSS JOIN LATERAL (SELECT {columns}) AS published
        WHERE {where}
        ORDER BY t.{pk}
        LIMIT %(limit)s
    __KEYED_CLOSE__
) AS page ON true
ORDER BY page.key
"""

# A primary key that is not plain URL text, percent-encoded as UTF-8 (what
# urllib.parse.quote(pk, safe="") gives).
_PERCENT_ENCODED = """
CASE WHEN keyed.pk_text ~ '^[A-Za-z0-9_.~-]+$' THEN keyed.pk_text
ELSE coalesce((
    SELECT string_agg(
        CASE WHEN ch ~ '[A-Za-z0-9_.~-]' THEN ch
        ELSE upper(regexp_replace(encode(convert_to(ch, 'UTF8'), 'hex'), '(..)', '%%\\1', 'g'))
        END, '' ORDER BY n)
    FROM regexp_split_to_table(keyed.pk_text, '') WITH ORDINALITY AS chars(ch, n)
), '') END
"""

# The item's values as JSON text: the pk; its URL (the prefix arrives escaped
# for a JSON string; the key's segment is plain or percent-encoded, by pk
# type); the sequence, the newest change of the row (_sequence_sql); and
# ``row_to_json`` of the published columns (half the cost of ``to_jsonb``,
# and the same values).
_ITEM = {
    plain: items.instance_item_sql(
        pk="keyed.pk_json",
        url=(
            items.Text('"'),
            "%(url_prefix)s",
            "keyed.pk_text" if plain else _PERCENT_ENCODED,
            items.Text('/"'),
        ),
        sequence="{sequence}",
        fields="keyed.fields",
    )
    for plain in (True, False)
}

# The newest change of the row in pubsubpull_change: one probe of the
# (model, object_pk, id) index.
_CHANGE_SEQUENCE = """(SELECT max(c.id) FROM pubsubpull_change AS c
                      WHERE c.model = %(label)s AND c.object_pk = keyed.pk_text)"""
# The page's rows, then their items (version 3's log only: a probe per item).
_KEYED = (
    "SELECT keyed.key, keyed.pk_text, convert_to({item}, 'UTF8') AS item FROM (",
    ") AS keyed",
)
# With log tables of capture v4 (rows of up to 1,024 changes): the page's
# rows first, then in one statement for the whole page the log rows whose
# keys hold any of the page's keys (their GIN index, once), unnested and
# joined to the page, the newest change of each row (logged). A probe per
# item detoasted a log row's keys for every item (16 us an item).
_KEYED_LOGGED = (
    "WITH keyed AS MATERIALIZED (",
    "), logged AS ({logged})\n"
    "    SELECT keyed.key, keyed.pk_text, convert_to({item}, 'UTF8') AS item\n"
    "    FROM keyed LEFT JOIN logged ON logged.pk_text = keyed.pk_text",
)
# One log table's newest change of each row of the page. {keys} and {key}:
# the keys and the page's, both as text or both as the log's key type, as
# its GIN index has them.
_LOG_SEQUENCE = """
        SELECT keyed.pk_text, m.id + u.ordinal - 1 AS seq
        FROM {table} AS m
        CROSS JOIN LATERAL unnest(m.keys) WITH ORDINALITY AS u(k, ordinal)
        JOIN keyed ON {key} = {element}
        WHERE {keys} && (SELECT array_agg({key}) FROM keyed)"""


# The same of a table of one change a row: a probe of its key index per row
# of the page.
_SINGLE_SEQUENCE = """
        SELECT keyed.pk_text, m.id AS seq
        FROM keyed JOIN {table} AS m ON {element} = {key}"""


def logged_sql(members: list[LogMember]) -> str:
    """The newest change of each row of the page (``keyed``) in ``members``."""
    parts = []
    for member in members:
        if member.single:
            element, key = (
                (statement_log.TEXT_KEY_SQL.replace("key", "m.key"), "keyed.pk_text")
                if member.text_keys
                else ("m.key", f"keyed.key::{member.key_type}")
            )
            parts.append(_SINGLE_SEQUENCE.format(table=quote_name(member.name), element=element,
                                                 key=key))  # fmt: skip
            continue
        if member.text_keys:
            keys, key, element = (
                statement_log.TEXT_KEYS_SQL.replace("keys", "m.keys"), "keyed.pk_text", "u.k::text"
            )  # fmt: skip
        else:
            keys, key, element = "m.keys", f"keyed.key::{member.key_type}", "u.k"
        parts.append(
            _LOG_SEQUENCE.format(table=quote_name(member.name), keys=keys, key=key,
                                 element=element)
        )  # fmt: skip
    rows = "\n        UNION ALL".join(parts)
    return f"SELECT l.pk_text, max(l.seq) AS seq FROM ({rows}) AS l GROUP BY l.pk_text"


def _sequence_sql(logged: bool) -> str:
    """The item's sequence: the newest change of the row in any table of the log."""
    newest = f"greatest({_CHANGE_SEQUENCE}, logged.seq)" if logged else _CHANGE_SEQUENCE
    return f"coalesce({newest}::text, 'null')"


# Column types whose ::text is the text to_jsonb gives (so it matches
# object_pk and is cheaper), and the ones of those always plain in a URL.
_TEXT_AS_JSON = (*INTEGER_TYPES, "uuid", "varchar", "text")
_PLAIN_IN_URL = (*INTEGER_TYPES, "uuid")


# The most ranges a first page splits the keys into (``parts``): enough for
# every core of a big reader; each range is read by one reader.
MAX_PARTS = 16


@dataclass
class Instance:
    """One row: its primary key, the id of its newest change, its published fields.

    ``json`` is the item as the instances endpoint serves it
    (``{"pk": ..., "url": ..., "sequence": ..., "fields": {...}}``).
    """

    pk_text: str
    json: str

    @cached_property
    def _item(self) -> dict[str, Any]:
        return json.loads(self.json)

    @classmethod
    def _from_page(cls, pk_text: str, item: bytes) -> Instance:
        return cls(pk_text, item.decode())

    @property
    def pk(self) -> Any:
        return self._item["pk"]

    @property
    def sequence(self) -> int | None:
        return self._item["sequence"]

    @property
    def fields(self) -> dict[str, Any]:
        return self._item["fields"]


@dataclass
class InstancePage:
    items: list[bytes]
    """The page's items as UTF-8 JSON, as the instances endpoint serves them."""
    next: str | None
    """The ``after`` token of the next page; None on the last page."""
    feed_position: Position | None
    """On the first page: where to follow the feed from after the snapshot."""
    pk_texts: list[str] = field(default_factory=list, repr=False)
    parts: list[str] = field(default_factory=list)
    """With ``parts``: the ``after`` tokens of the first pages of the other ranges."""

    @cached_property
    def instances(self) -> list[Instance]:
        pairs = zip(self.pk_texts, self.items, strict=True)
        return [Instance._from_page(pk, item) for pk, item in pairs]


def _registration(model: Registration | str | type) -> Registration:
    if isinstance(model, Registration):
        return model
    registration = get_registration(model)
    if registration is None:
        raise LookupError(f"{model} is not a published model.")
    return registration


def encode_after(pk_text: str, until: str | None = None) -> str:
    """A page token: rows after ``pk_text``, up to and including ``until`` if given."""
    raw = f"k1.{pk_text}" if until is None else "k2." + json.dumps([pk_text, until])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_after(registration: Registration, token: str) -> tuple[Any, str | None]:
    """The primary key an ``after`` token starts after, and its part's last key's text.

    InvalidAfter if it is no token of this model.
    """
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("utf-8")
    except (binascii.Error, ValueError):
        raw = ""
    after, until = None, None
    if raw.startswith("k1."):
        after = raw[3:]
    elif raw.startswith("k2."):
        try:
            after, until = jsonbody.loads(raw[3:], max_depth=1)
        except (jsonbody.InvalidJSON, ValueError, TypeError):  # a forged token
            after = None
        if not isinstance(after, str) or not isinstance(until, str):
            after = None
    if after is None:
        raise InvalidAfter(
            f"{token!r} is not a page token: use the next link of the previous page."
        )
    return to_pk(registration, after, InvalidAfter), until


def to_pk(registration: Registration, text: str, error: type[Exception] = LookupError) -> Any:
    """Convert primary key text (from a URL or a token) to a database value."""
    field = registration.model._meta.pk
    try:
        value = field.to_python(text)
        field.run_validators(value)
    except (ValidationError, ValueError, TypeError, OverflowError) as exc:
        raise error(f"{text!r} is not a primary key of {registration.label}.") from exc
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise error(f"{text!r} is not a primary key of {registration.label}.")
    if isinstance(value, str) and unstorable(value):  # a NUL or a lone surrogate
        raise error(f"{text!r} is not a primary key of {registration.label}.")
    return value


def _query(
    registration: Registration,
    where: str,
    params: dict,
    limit: int | None,
    using,
    url_prefix: str,
    model_filter: filtering.ModelFilter | None = None,
):
    alias = using or router.db_for_read(registration.model)
    connection = connections[alias]
    quote = connection.ops.quote_name
    pk_field = registration.model._meta.pk
    pk = quote(registration.pk_column)
    pk_type = key_type(registration, connection)
    pk_text = f"t.{pk}::text" if pk_type in _TEXT_AS_JSON else f"to_jsonb(t.{pk}) #>> '{{}}'"
    columns = registration.published_columns
    filter_params: dict[str, Any] = {}
    if model_filter is not None:
        if model_filter.fields is not None:
            columns = [c for c in columns if c in model_filter.fields]
        if model_filter.where is not None:
            # The feed's SQL for the where, on the row as the trigger stores
            # it (to_jsonb of the row; the where names published columns only).
            where += " AND " + where_sql(model_filter.where, "to_jsonb(t)", filter_params)
    item = _ITEM[pk_type in _PLAIN_IN_URL]
    template = _PAGE_SQL.format(
        fence=FENCE_SQL,
        members=MEMBERS_SIGNATURE_SQL,
        pk=pk,
        pk_text=pk_text,
        pk_json=f"t.{pk}::text" if pk_type in INTEGER_TYPES else f"to_json(t.{pk})::text",
        table=quote(registration.table),
        columns=", ".join(f"t.{quote(c)}" for c in columns),
        where=where,
    )
    if limit is None:
        template = template.replace("LIMIT %(limit)s", "")
    params = {
        **{k: pk_field.get_db_prep_value(v, connection) for k, v in params.items()},
        **filter_params,
        "label": registration.label,
        "limit": limit,
        # Inside a JSON string: escaped once here, not per row.
        "url_prefix": json.dumps(url_prefix, ensure_ascii=False)[1:-1],
    }
    # Binary results give each item as the bytes the response is made of:
    # no UTF-8 decoding and encoding again, half the view's CPU time for a
    # page of 5,000. Django's cursors are client-side (text results only), so
    # this one statement goes through psycopg's own cursor, on Django's
    # connection (same transaction, same adapters).
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        if not connection.get_autocommit() or connection.in_atomic_block:
            # pg_stat_activity is cached for the rest of a transaction (as in
            # feed.read_changes): the fence must read it after its snapshot.
            cursor.execute("SELECT pg_stat_clear_snapshot()")

        def read(refresh: bool = False) -> list | None:
            members = log_members(alias, refresh=refresh)
            chosen = members.of([registration.label])
            opening, closing = _KEYED_LOGGED if chosen else _KEYED
            closing = closing.replace("{logged}", logged_sql(chosen) if chosen else "")
            sql = (
                template.replace("__KEYED_OPEN__", opening)
                .replace("__KEYED_CLOSE__", closing)
                .replace("{item}", item)
                .replace("{sequence}", _sequence_sql(bool(chosen)))
            )
            params["members"] = json.dumps(list(members.oids))
            if not chosen:
                return _fetch(cursor, sql, params)
            # None when a log table was made or dropped since log_members looked.
            with _index_probes(cursor):
                return guarded(cursor, True, lambda: _fetch(cursor, sql, params))

        rows = read()
        if rows is None or not rows[0][6]:
            rows = read(refresh=True)
        if rows is None or not rows[0][6]:
            raise RuntimeError("the change log's tables changed twice during one page")
        if not rows[0][5] and not connection.in_atomic_block:
            # Usually a transaction of another database that ended in between:
            # a fresh snapshot places it (as feed.read_changes retries).
            rows = read() or rows
    xmin, horizon_txid, horizon_id = rows[0][:3]
    if rows[0][3] is None:
        pk_texts, items = [], []
    else:
        pk_texts = [row[3] for row in rows]
        items = [row[4] for row in rows]
    # The fence can lie behind changes that were pruned since (a long
    # transaction of this database, or one it could not place). This page
    # already shows what those changes did (they committed before the prune
    # this statement sees), so the feed may start after them.
    return max(fence_position(xmin), Position(horizon_txid, horizon_id)), pk_texts, items


@contextmanager
def _index_probes(cursor: psycopg.Cursor):
    """The statement planned with index scans of the log tables, and without JIT.

    A log table of capture v4 has few rows, each of up to 1,024 keys stored
    out of line: the planner takes a sequential scan of it for the cheaper
    plan, which detoasts and converts every row's keys (when the sequence was
    a probe per item, 10 ms an item at 100,000 changes; the GIN index took
    16 us). With sequential scans costed out, the statement's total cost then
    passed the JIT threshold. Both settings come back as they were (and with
    the transaction, should it fail).
    """
    cursor.execute(
        "SELECT current_setting('enable_seqscan'), current_setting('jit'), "
        "set_config('enable_seqscan', 'off', false), set_config('jit', 'off', false)"
    )
    seqscan, jit, _, _ = cursor.fetchall()[0]
    try:
        yield
    finally:
        if cursor.connection.info.transaction_status != 3:  # not in a failed transaction
            cursor.execute(
                "SELECT set_config('enable_seqscan', %s, false), set_config('jit', %s, false)",
                [seqscan, jit],
            )


def _fetch(cursor: psycopg.Cursor, sql: str, params: dict[str, Any]) -> list:
    cursor.execute(sql, params, binary=True)
    return cursor.fetchall()


def read_instances(
    model: Registration | str | type,
    after: str | None = None,
    limit: int = 100,
    *,
    using: str | None = None,
    url_prefix: str = "",
    parts: int = 1,
    model_filter: filtering.ModelFilter | None = None,
) -> InstancePage:
    """One keyset page of a published model's rows, ordered by primary key.

    ``after`` is the ``next`` token of the previous page (None for the first
    page). Each item's ``url`` is ``url_prefix`` followed by its primary key
    and a slash. Raises ``InvalidAfter`` for a token that is not one,
    ``LookupError`` for a model that is not published.

    ``model_filter`` (``where`` and ``fields``, as the feed's ``filters``)
    serves only the matching rows, with those fields: a filtered mirror
    starts from the rows it will then follow.

    ``parts`` (first page only) splits the primary keys into up to that many
    ranges that can be read in parallel: this page and its ``next`` pages are
    the first range, ``page.parts`` holds the ``after`` tokens that start the
    others (fewer ranges when the table's statistics give fewer split keys).
    """
    registration = _registration(model)
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if parts < 1:
        raise ValueError("parts must be at least 1")
    pk = connections[using or "default"].ops.quote_name(registration.pk_column)
    conditions, params = [], {}
    until = None
    starts: list[str] = []
    if after is not None:
        if parts != 1:
            raise ValueError("parts is for the first page only")
        params["after"], until = decode_after(registration, after)
        conditions.append(f"t.{pk} > %(after)s")
    elif parts > 1:
        splits = _split_keys(registration, parts, using)
        if splits:
            until = splits[0]
            bounds = [*splits[1:], None]
            starts = [encode_after(s, u) for s, u in zip(splits, bounds, strict=True)]
    if until is not None:
        params["until"] = to_pk(registration, until, InvalidAfter)
        conditions.append(f"t.{pk} <= %(until)s")
    position, pk_texts, items = _query(
        registration,
        " AND ".join(conditions) or "true",
        params,
        limit,
        using,
        url_prefix,
        model_filter,
    )
    following = encode_after(pk_texts[-1], until) if len(items) == limit else None
    if following is not None and pk_texts[-1] == until:
        following = None  # the part ends exactly here
    return InstancePage(items, following, position if after is None else None, pk_texts, starts)


# The planner's histogram of the key column: up to 101 keys that split the
# table into parts of about equal row counts, for free (ANALYZE keeps it).
_HISTOGRAM_SQL = """
SELECT histogram_bounds::text::text[] FROM pg_stats
WHERE tablename = %(table)s AND attname = %(column)s
ORDER BY schemaname = current_schema() DESC
LIMIT 1
"""


def _split_keys(registration: Registration, parts: int, using) -> list[str]:
    """Up to ``parts - 1`` primary keys (as text), ascending, splitting the table evenly."""
    connection = connections[using or router.db_for_read(registration.model)]
    with connection.cursor() as cursor:
        cursor.execute(
            _HISTOGRAM_SQL, {"table": registration.table, "column": registration.pk_column}
        )
        row = cursor.fetchone()
    bounds = (row[0] if row else None) or []
    keys: list[str] = []
    for i in range(1, parts):
        text = bounds[round(i * (len(bounds) - 1) / parts)] if len(bounds) > 2 else None
        if text is None or (keys and keys[-1] == text):
            continue
        try:
            to_pk(registration, text)
        except LookupError:
            continue
        keys.append(text)
    return keys


def read_instance(
    model: Registration | str | type,
    pk: Any,
    *,
    using: str | None = None,
    url_prefix: str = "",
) -> Instance | None:
    """One row by primary key (a value, or its text as in a URL); None when there is none."""
    registration = _registration(model)
    if isinstance(pk, str):
        pk = to_pk(registration, pk)
    quote = connections[using or "default"].ops.quote_name
    where = f"t.{quote(registration.pk_column)} = %(pk)s"
    _, pk_texts, items = _query(registration, where, {"pk": pk}, None, using, url_prefix)
    return Instance._from_page(pk_texts[0], items[0]) if items else None
