"""Capture version 4: each published model's own log table, one row per statement chunk.

Version 3 writes one row per changed row into the shared ``pubsubpull_change``,
each image converted to jsonb on the write path. Version 4 copies the
statement's rows as values of a composite type of the model's published
columns, up to :data:`CHUNK` to a row of the model's log table (a member of
``pubsubpull_log``, ``sql/log_v1.sql``): no JSON at write time, one heap row
and a few index entries per chunk instead of per changed row
(``benchmarks/README.rst``, "statement keyed"). Readers render the images to
JSON.

A statement of one row (most of an application's writes) is one change:
it goes to a second table of the version, one change a row, its key and
images as plain values (:attr:`LogTable.single`). That table has btree
indexes only and no CHECK constraint, because each index a one-row
transaction opens, a GIN above all, and each CHECK (parsed again by every
statement) is what such a statement pays most for (callgrind, one-row INSERT
transactions: 388,000 instructions with the chunk table, 343,000 with this
one; django-pghistory's row trigger 364,000; benchmarks/README.rst).

A :class:`LogTable` describes one version of a model's log: the published
table, its key, and the published columns with their database types. Its
names carry a hash of all that, so a registration whose columns or types
change gets a new type and tables beside the old ones, whose rows stay
readable. :func:`create_sql` is the SQL that makes it and points the
table's triggers at it (what a migration freezes); :func:`changes_sql` reads
a log table back as one row per change, in ``pubsubpull_change``'s columns.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from pubsubpull.capture.registry import Registration
from pubsubpull.capture.triggers import TRIGGERS, quote_literal, quote_name, sql_file

# The most changes one log row holds (sql/log_v1.sql); the change id
# sequence steps by it, so a row's changes have ids of their own.
CHUNK = 1024

# What migrations going back to where pubsubpull_change was the only log
# table run first: a refusal, naming the tables, while there are others.
ONLY_THE_FIRST_CHILD = """
DO $$
DECLARE
    others text := (
        SELECT string_agg(i.inhrelid::regclass::text, ', ')
        FROM pg_inherits AS i
        WHERE i.inhparent = 'pubsubpull_log'::regclass
          AND i.inhrelid <> 'pubsubpull_change'::regclass
    );
BEGIN
    IF others IS NOT NULL THEN
        RAISE EXCEPTION 'pubsubpull_log still has the log tables %: migrate back the '
                        'migrations that created them first', others;
    END IF;
END $$
"""

# Prefixes of the names a log version is made of.
LOG_PREFIX = "pubsubpull_log_"
IMAGE_PREFIX = "pubsubpull_image_"
FUNCTION_PREFIX = "pubsubpull_capture_"


@dataclass(frozen=True)
class LogTable:
    """One version of a published model's log: where its changes go, and their shape."""

    label: str
    table: str
    key: str
    key_type: str
    columns: tuple[tuple[str, str], ...]  # (column, database type), in model order

    @property
    def version(self) -> str:
        """A hash of the label, table and columns: a new one for any change of them."""
        text = "\n".join([self.label, self.table, *(f"{c} {t}" for c, t in self.columns)])
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def _name(self, prefix: str, suffix: str = "") -> str:
        # Within PostgreSQL's 63 bytes: the table's name, shortened, then the version.
        slug = re.sub(r"[^a-z0-9_]", "_", self.table.lower())[: 63 - len(prefix) - 11]
        return f"{prefix}{slug}_{self.version}{suffix}"

    @property
    def name(self) -> str:
        """The table of the chunks of statements of many rows (and TRUNCATEs)."""
        return self._name(LOG_PREFIX)

    @property
    def single(self) -> str:
        """The table of the changes of one-row statements, one a row."""
        return self._name(LOG_PREFIX, "_1")

    @property
    def image(self) -> str:
        return self._name(IMAGE_PREFIX)

    @property
    def function(self) -> str:
        """Capture of INSERT, DELETE and TRUNCATE (UPDATE: ``update_function``)."""
        return self._name(FUNCTION_PREFIX)

    @property
    def update_function(self) -> str:
        return self._name(FUNCTION_PREFIX, "_u")

    def names(self) -> dict[str, Any]:
        """What going back from this version drops (:func:`drop_sql`), as migrations freeze it."""
        return {
            "table": self.name,
            "single": self.single,
            "type": self.image,
            "functions": [self.function, self.update_function],
        }

    @property
    def text_keys(self) -> bool:
        """Whether the GIN index is of the keys as text (see :data:`TEXT_KEY_TYPES`)."""
        return self.key_type.split("(")[0].strip().lower() in TEXT_KEY_TYPES

    def describe(self, single: bool = False) -> dict[str, Any]:
        """What a log table's comment says of it (:data:`DESCRIPTION` marks it).

        ``single``: of the table of one change a row (:attr:`single`).
        """
        return {
            DESCRIPTION: 1,
            "model": self.label,
            "key": self.key,
            "key_type": self.key_type,
            "text_keys": self.text_keys,
            "columns": [column for column, _ in self.columns],
            "single": single,
        }


# The key of a log table's comment that says it is one of these.
DESCRIPTION = "pubsubpull_log"

# Key types whose text is an immutable function of the value, the same text
# version 3 stored as object_pk: their log's GIN index is of TEXT_KEYS_SQL
# (the single table's btree of TEXT_KEY_SQL), so a lookup by object_pk (the
# audit trail's, the snapshot's sequence) uses it.
# Other keys (dates, timestamps: their text depends on settings) are indexed
# as they are, and found by object_pk only by reading the whole table.
# The keys as the GIN index has them (sql/changes_v1.sql's view the same):
# text compared as bytes, three times cheaper to index than by the locale.
TEXT_KEYS_SQL = '(keys::text[] COLLATE "C")'
TEXT_KEY_SQL = '(key::text COLLATE "C")'
TEXT_KEY_TYPES = frozenset(
    ["smallint", "integer", "bigint", "uuid", "varchar", "character varying", "text", "char",
     "character", "numeric", "decimal"]
)  # fmt: skip


def log_table(registration: Registration, connection: Any) -> LogTable:
    """The log version ``registration`` writes to, with the types ``connection`` gives."""
    columns = tuple(
        (str(field.column), str(field.db_type(connection)))
        for field in registration.published_fields
    )
    key_type = dict(columns)[registration.pk_column]
    return LogTable(
        registration.label, registration.table, registration.pk_column, key_type, columns
    )


# The writing transaction's id, in the statements (a DECLARE initialiser is
# one more expression to set up in every transaction).
_TXID = "pg_current_xact_id()::text::bigint"


def _insert(log: LogTable, op: str, columns: str, rows: str | None) -> str:
    """The start of an INSERT of log rows of ``op``: its columns, then a SELECT's first ones.

    ``rows``: SQL of the changes each row holds, into the chunk table; None
    into the single table (one each, the column's default).
    """
    table, counted = (log.single, "") if rows is None else (log.name, "rows, ")
    return (
        f"INSERT INTO {quote_name(table)} (txid, model, op, at, request_id, {counted}{columns})\n"
        f"            SELECT {_TXID}, {quote_literal(log.label)}, '{op}', statement_timestamp(), "
        f"request,{'' if rows is None else f' {rows},'}"
    )


def _values(log: LogTable, row: str) -> str:
    """The image of transition row ``row``, as a value of the log's composite type."""
    values = ", ".join(f"{row}.{quote_name(column)}" for column, _ in log.columns)
    return f"ROW({values})::{quote_name(log.image)}"


def _chunked(log: LogTable, op: str, side: str, rows: str) -> str:
    """An INSERT of ``rows`` (SQL of k, i: key and image) as log rows of up to CHUNK."""
    return f"""
            {_insert(log, op, f"keys, {side}", "count(*)")}
                   array_agg(s.k), array_agg(s.i)
            FROM (SELECT (row_number() OVER () - 1) / {CHUNK} AS chunk, p.k, p.i
                  FROM ({rows}) AS p) AS s
            GROUP BY s.chunk;"""


# The test a statement's rows take the one-row path by (none or one row): a
# one-row statement's plan is a scan of its row, no window, aggregate or join
# to start and end (callgrind, one-row INSERTs in a DO loop: 256,000
# instructions each with the chunked statement, 214,000 this way;
# django-pghistory's row trigger 206,000; benchmarks/README.rst). It reads at
# most two rows of a transition table.
_AT_MOST_ONE = "NOT EXISTS (SELECT FROM {rows} OFFSET 1)"


def _one_or_chunked(log: LogTable, op: str, side: str, transition: str) -> str:
    """INSERT's or DELETE's writes: a row of one change, or the chunked statement."""
    key = quote_name(log.key)
    one = f"""
            {_insert(log, op, f"key, {side}", None)}
                   r.{key}, {_values(log, "r")}
            FROM {transition} AS r;"""
    chunked = _chunked(
        log, op, side, f"SELECT r.{key} AS k, {_values(log, 'r')} AS i FROM {transition} AS r"
    )
    return f"""
        IF {_AT_MOST_ONE.format(rows=transition)} THEN{one}
        ELSE{chunked}
        END IF;
        GET DIAGNOSTICS recorded = ROW_COUNT;"""


def _writes(log: LogTable) -> str:
    truncate = (
        f"INSERT INTO {quote_name(log.name)} (txid, model, op, at, request_id, rows) VALUES "
        f"({_TXID}, {quote_literal(log.label)}, 'truncate', statement_timestamp(), request, 0);"
    )
    return f"""    IF TG_OP = 'INSERT' THEN{_one_or_chunked(log, "insert", "new", "new_rows")}
    ELSIF TG_OP = 'DELETE' THEN{_one_or_chunked(log, "delete", "old", "old_rows")}
    ELSE
        {truncate}
        GET DIAGNOSTICS recorded = ROW_COUNT;
    END IF;"""


# What the chunked UPDATE runs under, set for it alone (set_config(..., true)
# and back to the values before; an error ends the transaction or rolls back
# the savepoint, and the settings with it), not as the function's SET clause,
# which every one-row UPDATE would pay for:
# - hash joins whatever the plan cached for a first UPDATE of two rows was
#   (DESIGN.md, the cached-plan trap);
# - no JIT: the join's estimate (no statistics on transition tables) made
#   PostgreSQL compile it, 0.38 s of a 1.2 s UPDATE of 100,000 rows (backend
#   CPU 11-12.7 -> 8.7-9.9 us a row). INSERT and DELETE plans cost too little
#   to be compiled below ~1.7 million rows.
_CHUNKED_UPDATE_SETTINGS = (("enable_nestloop", "off"), ("jit", "off"))


def _update_writes(log: LogTable) -> str:
    # A one-row UPDATE: its old and new row, if they differ. Else paired by
    # position: row_number() over each transition table numbers old and new
    # rows of the same row alike. The pairs are chunked in the join's order;
    # keys are the new ones.
    key = quote_name(log.key)
    before = "".join(
        f"\n            saved_{name} := current_setting('{name}');"
        f"\n            ignored := set_config('{name}', '{value}', true);"
        for name, value in _CHUNKED_UPDATE_SETTINGS
    )
    after = "".join(
        f"\n            ignored := set_config('{name}', saved_{name}, true);"
        for name, _ in _CHUNKED_UPDATE_SETTINGS
    )
    return f"""
        IF {_AT_MOST_ONE.format(rows="new_rows")} THEN
            {_insert(log, "update", "key, old, new", None)}
                   (n.i).{key}, o.i, n.i
            FROM (SELECT {_values(log, "r")} AS i FROM old_rows AS r) AS o,
                 (SELECT {_values(log, "r")} AS i FROM new_rows AS r) AS n
            WHERE o.i IS DISTINCT FROM n.i;
            GET DIAGNOSTICS recorded = ROW_COUNT;
        ELSE{before}
            {_insert(log, "update", "keys, old, new", "count(*)")}
                   array_agg((s.n).{key}), array_agg(s.o), array_agg(s.n)
            FROM (SELECT (row_number() OVER () - 1) / {CHUNK} AS chunk, p.o, p.n
                  FROM (SELECT o.i AS o, n.i AS n
                        FROM (SELECT row_number() OVER () AS number, {_values(log, "r")} AS i
                              FROM old_rows AS r) AS o
                        JOIN (SELECT row_number() OVER () AS number, {_values(log, "r")} AS i
                              FROM new_rows AS r) AS n USING (number)
                        WHERE o.i IS DISTINCT FROM n.i) AS p) AS s
            GROUP BY s.chunk;
            GET DIAGNOSTICS recorded = ROW_COUNT;{after}
        END IF;"""


def _function(log: LogTable, name: str, writes: str) -> str:
    text = sql_file("capture_v4", function_only=True)
    for placeholder, value in (
        ("{function}", quote_name(name)),
        ("{writes}", writes),
        ("{label}", quote_literal(log.label)),
    ):
        text = text.replace(placeholder, value)
    return text


def create_sql(log: LogTable) -> list[str]:
    """Make ``log`` (if it is not there yet) and point its table's triggers at it.

    Statements for :func:`pubsubpull.capture.triggers.install_sql`, which
    drops the table's previous triggers first.
    """
    name, single, image = quote_name(log.name), quote_name(log.single), quote_name(log.image)
    attributes = ", ".join(f"{quote_name(column)} {type_}" for column, type_ in log.columns)
    index = lambda suffix: quote_name(f"{log.name[:55]}_{suffix}")  # noqa: E731
    one = lambda suffix: quote_name(f"{log.name[:54]}_one_{suffix}")  # noqa: E731
    statements = [
        # A row's changes take the ids after its own (CHUNK): the sequence
        # steps by CHUNK, for version 3's rows too (their ids just have gaps).
        "DO $$ BEGIN IF (SELECT increment_by FROM pg_sequences "
        "WHERE schemaname = current_schema() AND sequencename = 'pubsubpull_change_id_seq') "
        f"<> {CHUNK} THEN ALTER SEQUENCE pubsubpull_change_id_seq INCREMENT BY {CHUNK}; "
        "END IF; END $$",
        # CREATE TYPE has no IF NOT EXISTS.
        f"DO $$ BEGIN IF to_regtype({quote_literal(image)}) IS NULL THEN "
        f"CREATE TYPE {image} AS ({attributes}); END IF; END $$",
        f"CREATE TABLE IF NOT EXISTS {name} ("
        "id bigint NOT NULL DEFAULT nextval('pubsubpull_change_id_seq'), "
        f"keys {log.key_type}[], old {image}[], new {image}[], "
        f"CHECK (model = {quote_literal(log.label)})"
        ") INHERITS (pubsubpull_log)",
        # A statement's arrays, stored out of line and not compressed: the
        # write path does not pay for compression, a reader of a few
        # columns does not read them.
        f"ALTER TABLE {name} ALTER COLUMN keys SET STORAGE EXTERNAL, "
        "ALTER COLUMN old SET STORAGE EXTERNAL, ALTER COLUMN new SET STORAGE EXTERNAL",
        f"CREATE INDEX IF NOT EXISTS {index('feed')} ON {name} (txid, id)",
        # One object's changes (the snapshot's sequence, the audit trail).
        # fastupdate off: a pending list would be scanned by every lookup.
        f"CREATE INDEX IF NOT EXISTS {index('keys')} ON {name} "
        f"USING gin ({TEXT_KEYS_SQL if log.text_keys else 'keys'}) WITH (fastupdate = off)",
        # One change by its id (the audit trail's page of it): one entry a row.
        f"CREATE INDEX IF NOT EXISTS {index('id')} ON {name} (id)",
        f"CREATE INDEX IF NOT EXISTS {index('request')} ON {name} (request_id) "
        "WHERE request_id IS NOT NULL",
        # One-row statements' changes, one a row (rows: 1, the default). No
        # CHECK: each statement would parse it again (19,000 instructions of
        # a one-row INSERT); readers choose the tables of a model by their
        # comments, the generic reads of pubsubpull_log filter by model.
        f"CREATE TABLE IF NOT EXISTS {single} ("
        "id bigint NOT NULL DEFAULT nextval('pubsubpull_change_id_seq'), "
        f"key {log.key_type}, old {image}, new {image}"
        ") INHERITS (pubsubpull_log)",
        f"CREATE INDEX IF NOT EXISTS {one('feed')} ON {single} (txid, id)",
        f"CREATE INDEX IF NOT EXISTS {one('key')} ON {single} "
        f"({TEXT_KEY_SQL if log.text_keys else 'key'})",
        f"CREATE INDEX IF NOT EXISTS {one('id')} ON {single} (id)",
        f"CREATE INDEX IF NOT EXISTS {one('request')} ON {single} (request_id) "
        "WHERE request_id IS NOT NULL",
        # What readers need to know of them (pubsubpull.publisher.feed.log_members).
        f"COMMENT ON TABLE {name} IS {quote_literal(json.dumps(log.describe()))}",
        f"COMMENT ON TABLE {single} IS {quote_literal(json.dumps(log.describe(single=True)))}",
        *(
            f"CREATE OR REPLACE TRIGGER horizon_follows_deletes AFTER DELETE ON {table} "
            "REFERENCING OLD TABLE AS old_rows "
            "FOR EACH STATEMENT EXECUTE FUNCTION pubsubpull_move_horizon()"
            for table in (name, single)
        ),
        _function(log, log.function, _writes(log)),
        # Its chunked statement's settings: _CHUNKED_UPDATE_SETTINGS.
        _function(log, log.update_function, _update_writes(log)),
        # The audit trail's view of the log, with these tables (sql/changes_v2.sql).
        "SELECT pubsubpull_log_view()",
    ]
    table = quote_name(log.table)
    for trigger, event, tables in TRIGGERS:
        function = log.update_function if event == "UPDATE" else log.function
        statements.append(
            f"CREATE TRIGGER {trigger} AFTER {event} ON {table} {tables}"
            f"FOR EACH STATEMENT EXECUTE FUNCTION {quote_name(function)}()"
        )
    return statements


def _tables(names: dict[str, Any]) -> list[tuple[str, bool]]:
    """A log's tables by :meth:`LogTable.names`, each with whether it is the single one."""
    return [(names["table"], False), (names["single"], True)]


def fold_sql(names: dict[str, Any]) -> str:
    """Copy a log's changes into pubsubpull_change, a row each (before :func:`drop_sql`).

    ``names``: :meth:`LogTable.names`. Going back to version 3 keeps every
    change, its id and its place in the feed.
    """
    copies = "".join(
        f"IF to_regclass({quote_literal(quote_name(table))}) IS NOT NULL THEN "
        "INSERT INTO pubsubpull_change "
        "(id, txid, model, object_pk, op, at, old, new, request_id) "
        f"SELECT * FROM ({changes_sql(table, single=single)}) AS c; END IF; "
        for table, single in _tables(names)
    )
    return f"DO $fold$ BEGIN {copies}END $fold$"


def drop_sql(names: dict[str, Any]) -> list[str]:
    """Remove a log: tables (rows and all: :func:`fold_sql` keeps them), functions and type.

    ``names``: :meth:`LogTable.names`. The published table's triggers, which
    call the functions, must be gone or replaced first.
    """
    tables = [table for table, _ in _tables(names)]
    leaving = ", ".join(f"to_regclass({quote_literal(quote_name(t))})" for t in tables)
    return [
        # Out of the audit trail's view first: the view depends on the tables.
        f"SELECT pubsubpull_log_view(ARRAY[{leaving}])",
        *(f"DROP TABLE IF EXISTS {quote_name(table)}" for table in tables),
        *(f"DROP FUNCTION IF EXISTS {quote_name(f)}()" for f in names["functions"]),
        f"DROP TYPE IF EXISTS {quote_name(names['type'])}",
    ]


def changes_sql(log_name: str, where: str = "", *, single: bool = False) -> str:
    """``log_name``'s rows as changes, one row each, in ``pubsubpull_change``'s columns.

    Keys as text and images as jsonb, as version 3 stores them; a TRUNCATE's
    row is one change of no key and no images. ``where``: SQL that chooses
    the log rows (of ``c``) to read. ``single``: of a table of one change a
    row (:attr:`LogTable.single`).
    """
    where = f"\n        WHERE {where}" if where else ""
    if single:
        return (
            f"""
        SELECT c.id, c.txid, c.model, c.key::text AS object_pk, c.op, c.at,
               to_jsonb(c.old) AS old, to_jsonb(c.new) AS new, c.request_id
        FROM {quote_name(log_name)} AS c"""
            + where
        )
    return (
        f"""
        SELECT c.id + u.ordinal - 1 AS id, c.txid, c.model, u.k::text AS object_pk, c.op, c.at,
               to_jsonb(u.o) AS old, to_jsonb(u.n) AS new, c.request_id
        FROM {quote_name(log_name)} AS c
        CROSS JOIN LATERAL (
            SELECT generate_series(1, greatest(c.rows, 1)) AS ordinal,
                   unnest(c.keys) AS k, unnest(c.old) AS o, unnest(c.new) AS n
        ) AS u"""
        + where
    )
