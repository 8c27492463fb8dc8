"""Candidate capture designs for issue 13, built in the benchmark database only.

Each design is a trigger function and a change table for one of the
``bench_writes_design*`` tables (benchmarks/writes/models.py). Everything
around the write of the change rows is the shipped function's
(``pubsubpull/sql/capture_v2.sql``): the context parsed once, the request row
written by the first change of a request, the wake-up gate, zero-row
statements recording nothing, ``SET enable_nestloop = off`` against the
cached-plan trap. Only what is stored, and how, differs:

``typed``
    A per-model change table whose ``old`` and ``new`` columns are of a
    composite type of the published columns: the trigger copies typed
    values (no ``to_jsonb``), the reader renders them with ``row_to_json``.
    UPDATE pairs old and new rows by position (exact when the key changes)
    and skips no-op rows. Indexes: ``(txid, id)`` for the feed, ``(pk, id)``
    bigint for the object history, the partial request index.
``typed new only``
    The same table, UPDATE storing only the new image and pairing nothing:
    a bound on what leaving out the old image saves (it gives up no-op
    skipping, and the old values of rows whose previous change was pruned
    or predates capture).
``per statement``
    One change-log row per statement: the rows as one ``json`` array
    (``json_agg``), old and new arrays side by side for UPDATE. One index
    entry per statement; no per-object index (the snapshot's ``sequence``
    probe and the audit trail's per-object history would have to read
    every statement's array).
``typed flat``
    Like ``typed`` but the images as plain typed columns (``o_name``,
    ``n_name``, ...), as django-pghistory's event tables hold them: no
    composite value built per row.
``statement typed``
    One row per statement like ``per statement``, the rows as arrays of a
    composite type (``array_agg``, stored uncompressed): no JSON at write time.
``statement keyed``
    ``statement typed`` with a per-object index: a ``keys`` column (the
    statement's primary keys as ``bigint[]``: the new ones for UPDATE, the
    old ones for DELETE) under a GIN index (``fastupdate`` on), and the rows
    in chunks of at most 1,024 per log row, so no array nears the 1 GB limit
    and a reader of one page or one object detoasts one chunk. A change's id
    is ``(log row id << 10) | ordinal in the chunk``. UPDATE pairs old and
    new rows without a join: each side ``array_agg``-ed once, both unnested
    in one select list (they advance in lockstep), no-op rows dropped, so the
    function needs no ``SET enable_nestloop``; it sets ``work_mem`` instead
    (the grouping by chunk is a hash aggregate of the whole statement).
    Variants measured beside it: ``keyed 64k`` (chunks of 65,536, 16 bits),
    ``keyed join`` (capture v2's row-number join), ``keyed chunk pairs``
    (each side aggregated by chunk and the chunks joined, so no array of the
    whole statement is built) and ``keyed fu off`` (GIN ``fastupdate`` off).
    ``pages()`` holds their read side: a feed page from a cursor inside a
    statement, the snapshot's ``sequence`` of a page of keys, one object's
    history.
``json``
    The shared log as today but ``json`` images (``row_to_json``, no
    jsonb conversion) and the key as ``bigint`` in the object index.

None of these is installed by pubsubpull; they are measured to decide.
"""

from __future__ import annotations

COLUMNS = ("id", "name", "email", "country", "newsletter", "score", "created", "updated")

# What every design shares with capture_v2.sql; {writes} is the design's
# INSERT statements for TG_OP, {log} its change table.
_FUNCTION = """
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql
{settings}SET jit = off
AS $function$
DECLARE
    model_label text := TG_ARGV[0];
    xid bigint := pg_current_xact_id()::text::bigint;
    happened timestamptz := statement_timestamp();
    context jsonb := nullif(current_setting('pubsubpull.context', true), '')::jsonb;
    request uuid := (context ->> 'id')::uuid;
    user_pk pubsubpull_request.user_id%TYPE;
    recorded bigint;
    ignored text;
BEGIN
{writes}
    GET DIAGNOSTICS recorded = ROW_COUNT;
    IF recorded = 0 THEN
        RETURN NULL;
    END IF;
    IF request IS NOT NULL
       AND current_setting('pubsubpull.request_written', true) IS DISTINCT FROM request::text THEN
        user_pk := context ->> 'user_id';
        INSERT INTO pubsubpull_request
            (id, user_id, method, path, query_string, remote_addr, user_agent, request_id,
             started, metadata)
        VALUES (
            request, user_pk,
            coalesce(context ->> 'method', ''), coalesce(context ->> 'path', ''),
            coalesce(context ->> 'query_string', ''), (context ->> 'remote_addr')::inet,
            coalesce(context ->> 'user_agent', ''), coalesce(context ->> 'request_id', ''),
            coalesce((context ->> 'started')::timestamptz, happened),
            coalesce(context -> 'metadata', '{{}}')
        )
        ON CONFLICT (id) DO NOTHING;
        ignored := set_config('pubsubpull.request_written', request::text, true);
    END IF;
    IF pg_sequence_last_value('pubsubpull_wakeup_always_at') > extract(epoch FROM now()) - 30
       OR (pg_sequence_last_value('pubsubpull_wakeup_armed')
               > coalesce(pg_sequence_last_value('pubsubpull_wakeup_disarmed'), 1)
           AND pg_sequence_last_value('pubsubpull_wakeup_armed_at')
               > extract(epoch FROM now()) - 30) THEN
        PERFORM pg_notify('pubsubpull', model_label);
    END IF;
    RETURN NULL;
END;
$function$;
"""

_TRIGGERS = """
CREATE TRIGGER capture_insert AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {function}('{label}');
CREATE TRIGGER capture_update AFTER UPDATE ON {table}
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {function}('{label}');
CREATE TRIGGER capture_delete AFTER DELETE ON {table} REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {function}('{label}');
CREATE TRIGGER capture_truncate AFTER TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {function}('{label}');
"""

_IMAGE = ", ".join(f"r.{c}" for c in COLUMNS)


def _typed(table: str, new_only: bool) -> tuple[list[str], str]:
    log = f"{table}_change"
    image = f"{table}_image"
    setup = [
        f"CREATE TYPE {image} AS (id bigint, name varchar(200), email varchar(254), "
        "country varchar(2), newsletter boolean, score integer, created timestamptz, "
        "updated timestamptz)",
        # Ids from the shared change sequence: one order across the models.
        f"CREATE TABLE {log} (id bigint NOT NULL DEFAULT nextval('pubsubpull_change_id_seq'), "
        'txid bigint NOT NULL, object_pk bigint, op "char" NOT NULL, '
        f"at timestamptz NOT NULL, request_id uuid, old {image}, new {image})",
        f"CREATE INDEX {log}_feed ON {log} (txid, id)",
        f"CREATE INDEX {log}_object ON {log} (object_pk, id)",
        f"CREATE INDEX {log}_request ON {log} (request_id) WHERE request_id IS NOT NULL",
    ]
    cast = f"ROW({_IMAGE})::{image}"
    if new_only:
        update = f"""
        INSERT INTO {log} (txid, object_pk, op, at, request_id, new)
        SELECT xid, r.id, 'u', happened, request, {cast} FROM new_rows AS r;"""
    else:
        update = f"""
        INSERT INTO {log} (txid, object_pk, op, at, request_id, old, new)
        SELECT xid, (n.r).id, 'u', happened, request, o.r, n.r
        FROM (SELECT row_number() OVER () AS i, {cast} AS r FROM old_rows AS r) AS o
        JOIN (SELECT row_number() OVER () AS i, {cast} AS r FROM new_rows AS r) AS n USING (i)
        WHERE o.r IS DISTINCT FROM n.r;"""
    writes = f"""
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {log} (txid, object_pk, op, at, request_id, new)
        SELECT xid, r.id, 'i', happened, request, {cast} FROM new_rows AS r;
    ELSIF TG_OP = 'UPDATE' THEN{update}
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO {log} (txid, object_pk, op, at, request_id, old)
        SELECT xid, r.id, 'd', happened, request, {cast} FROM old_rows AS r;
    ELSE
        INSERT INTO {log} (txid, op, at, request_id) VALUES (xid, 't', happened, request);
    END IF;"""
    return setup, writes


_TYPES = (
    "bigint",
    "varchar(200)",
    "varchar(254)",
    "varchar(2)",
    "boolean",
    "integer",
    "timestamptz",
    "timestamptz",
)


def _flat(table: str) -> tuple[list[str], str]:
    log = f"{table}_change"
    typed = ", ".join(
        f"{side}{c} {t}" for side in ("o_", "n_") for c, t in zip(COLUMNS, _TYPES, strict=True)
    )
    setup = [
        f"CREATE TABLE {log} (id bigint NOT NULL DEFAULT nextval('pubsubpull_change_id_seq'), "
        'txid bigint NOT NULL, object_pk bigint, op "char" NOT NULL, '
        f"at timestamptz NOT NULL, request_id uuid, {typed})",
        f"CREATE INDEX {log}_feed ON {log} (txid, id)",
        f"CREATE INDEX {log}_object ON {log} (object_pk, id)",
        f"CREATE INDEX {log}_request ON {log} (request_id) WHERE request_id IS NOT NULL",
    ]
    old = ", ".join(f"o_{c}" for c in COLUMNS)
    new = ", ".join(f"n_{c}" for c in COLUMNS)
    o_values = ", ".join(f"o.{c}" for c in COLUMNS)
    n_values = ", ".join(f"n.{c}" for c in COLUMNS)
    writes = f"""
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {log} (txid, object_pk, op, at, request_id, {new})
        SELECT xid, r.id, 'i', happened, request, {_IMAGE} FROM new_rows AS r;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO {log} (txid, object_pk, op, at, request_id, {old}, {new})
        SELECT xid, n.id, 'u', happened, request, {o_values}, {n_values}
        FROM (SELECT row_number() OVER () AS i, r.* FROM old_rows AS r) AS o
        JOIN (SELECT row_number() OVER () AS i, r.* FROM new_rows AS r) AS n USING (i)
        WHERE ({o_values}) IS DISTINCT FROM ({n_values});
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO {log} (txid, object_pk, op, at, request_id, {old})
        SELECT xid, r.id, 'd', happened, request, {_IMAGE} FROM old_rows AS r;
    ELSE
        INSERT INTO {log} (txid, op, at, request_id) VALUES (xid, 't', happened, request);
    END IF;"""
    return setup, writes


def _statement_typed(table: str) -> tuple[list[str], str]:
    log = f"{table}_change"
    image = f"{table}_image"
    setup = [
        f"CREATE TYPE {image} AS ("
        + ", ".join(f"{c} {t}" for c, t in zip(COLUMNS, _TYPES, strict=True))
        + ")",
        f"CREATE TABLE {log} (id bigint NOT NULL DEFAULT nextval('pubsubpull_change_id_seq'), "
        'txid bigint NOT NULL, op "char" NOT NULL, at timestamptz NOT NULL, '
        f"request_id uuid, rows integer NOT NULL, old {image}[], new {image}[])",
        # Arrays of a statement's rows: not worth compressing on the write path.
        f"ALTER TABLE {log} ALTER COLUMN old SET STORAGE EXTERNAL",
        f"ALTER TABLE {log} ALTER COLUMN new SET STORAGE EXTERNAL",
        f"CREATE INDEX {log}_feed ON {log} (txid, id)",
        f"CREATE INDEX {log}_request ON {log} (request_id) WHERE request_id IS NOT NULL",
    ]
    cast = f"ROW({_IMAGE})::{image}"
    writes = f"""
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {log} (txid, op, at, request_id, rows, new)
        SELECT xid, 'i', happened, request, count(*), array_agg({cast}) FROM new_rows AS r
        HAVING count(*) > 0;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO {log} (txid, op, at, request_id, rows, old, new)
        SELECT xid, 'u', happened, request, count(*), array_agg(o.r), array_agg(n.r)
        FROM (SELECT row_number() OVER () AS i, {cast} AS r FROM old_rows AS r) AS o
        JOIN (SELECT row_number() OVER () AS i, {cast} AS r FROM new_rows AS r) AS n USING (i)
        WHERE o.r IS DISTINCT FROM n.r
        HAVING count(*) > 0;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO {log} (txid, op, at, request_id, rows, old)
        SELECT xid, 'd', happened, request, count(*), array_agg({cast}) FROM old_rows AS r
        HAVING count(*) > 0;
    ELSE
        INSERT INTO {log} (txid, op, at, request_id, rows)
        VALUES (xid, 't', happened, request, 0);
    END IF;"""
    return setup, writes


def _statement_keyed(
    table: str, chunk: int, pairing: str = "arrays", fastupdate: bool = True
) -> tuple[list[str], str]:
    """``statement typed`` with a GIN-indexed ``keys`` array, in chunks of ``chunk`` rows."""
    log = f"{table}_change"
    image = f"{table}_image"
    setup = [
        # Not a Django model: the same columns as the baseline table.
        f"CREATE TABLE IF NOT EXISTS {table} (LIKE bench_writes_plain INCLUDING ALL)",
        f"CREATE TYPE {image} AS ("
        + ", ".join(f"{c} {t}" for c, t in zip(COLUMNS, _TYPES, strict=True))
        + ")",
        f"CREATE TABLE {log} (id bigint NOT NULL DEFAULT nextval('pubsubpull_change_id_seq'), "
        'txid bigint NOT NULL, op "char" NOT NULL, at timestamptz NOT NULL, '
        f"request_id uuid, rows integer NOT NULL, keys bigint[], old {image}[], new {image}[])",
        f"ALTER TABLE {log} ALTER COLUMN keys SET STORAGE EXTERNAL",
        f"ALTER TABLE {log} ALTER COLUMN old SET STORAGE EXTERNAL",
        f"ALTER TABLE {log} ALTER COLUMN new SET STORAGE EXTERNAL",
        f"CREATE INDEX {log}_feed ON {log} (txid, id)",
        f"CREATE INDEX {log}_keys ON {log} USING gin (keys) "
        f"WITH (fastupdate = {'on' if fastupdate else 'off'})",
        f"CREATE INDEX {log}_request ON {log} (request_id) WHERE request_id IS NOT NULL",
    ]
    cast = f"ROW({_IMAGE})::{image}"
    columns = f"INSERT INTO {log} (txid, op, at, request_id, rows, keys, old, new)"
    # Chunk number of each row: GROUP BY it, one log row per chunk (the log
    # rows' ids in the aggregate's output order, not the chunks': a
    # statement's rows have no order of their own).
    numbered = f"(row_number() OVER () - 1) / {chunk} AS chunk"
    if pairing == "join":
        # Pairing as capture v2 does: a hash join on the row numbers.
        pairs = f"""
            SELECT {numbered}, o.r AS o, n.r AS n
            FROM (SELECT row_number() OVER () AS i, {cast} AS r FROM old_rows AS r) AS o
            JOIN (SELECT row_number() OVER () AS i, {cast} AS r FROM new_rows AS r) AS n
                USING (i)
            WHERE o.r IS DISTINCT FROM n.r"""
    elif pairing == "chunks":
        # Each side aggregated by chunk (no array of the whole statement),
        # the chunks joined on their number and unnested side by side.
        sides = [
            f"""(SELECT s.chunk, array_agg(s.r) AS a
                  FROM (SELECT {numbered}, {cast} AS r FROM {side} AS r) AS s
                  GROUP BY s.chunk)"""
            for side in ("old_rows", "new_rows")
        ]
        pairs = f"""
            SELECT {numbered}, q.o, q.n
            FROM (SELECT unnest(o.a) AS o, unnest(n.a) AS n
                  FROM {sides[0]} AS o JOIN {sides[1]} AS n USING (chunk)) AS q
            WHERE q.o IS DISTINCT FROM q.n"""
    else:
        # No join: each side aggregated once, then unnested side by side
        # (set-returning functions in one select list advance in lockstep).
        pairs = f"""
            SELECT {numbered}, q.o, q.n
            FROM (SELECT unnest(o.a) AS o, unnest(n.a) AS n
                  FROM (SELECT array_agg({cast}) AS a FROM old_rows AS r) AS o,
                       (SELECT array_agg({cast}) AS a FROM new_rows AS r) AS n) AS q
            WHERE q.o IS DISTINCT FROM q.n"""
    writes = f"""
    IF TG_OP = 'INSERT' THEN
        {columns}
        SELECT xid, 'i', happened, request, count(*), array_agg(r.id), NULL, array_agg({cast})
        FROM (SELECT {numbered}, r.* FROM new_rows AS r) AS r
        GROUP BY r.chunk;
    ELSIF TG_OP = 'UPDATE' THEN
        {columns}
        SELECT xid, 'u', happened, request, count(*), array_agg((p.n).id), array_agg(p.o),
               array_agg(p.n)
        FROM ({pairs}) AS p
        GROUP BY p.chunk;
    ELSIF TG_OP = 'DELETE' THEN
        {columns}
        SELECT xid, 'd', happened, request, count(*), array_agg(r.id), array_agg({cast}), NULL
        FROM (SELECT {numbered}, r.* FROM old_rows AS r) AS r
        GROUP BY r.chunk;
    ELSE
        INSERT INTO {log} (txid, op, at, request_id, rows)
        VALUES (xid, 't', happened, request, 0);
    END IF;"""
    return setup, writes


def _statement(table: str) -> tuple[list[str], str]:
    log = f"{table}_change"
    setup = [
        f"CREATE TABLE {log} (id bigint NOT NULL DEFAULT nextval('pubsubpull_change_id_seq'), "
        'txid bigint NOT NULL, op "char" NOT NULL, at timestamptz NOT NULL, '
        "request_id uuid, rows integer NOT NULL, old json, new json)",
        f"CREATE INDEX {log}_feed ON {log} (txid, id)",
        f"CREATE INDEX {log}_request ON {log} (request_id) WHERE request_id IS NOT NULL",
    ]
    writes = f"""
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {log} (txid, op, at, request_id, rows, new)
        SELECT xid, 'i', happened, request, count(*), json_agg(r) FROM new_rows AS r
        HAVING count(*) > 0;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO {log} (txid, op, at, request_id, rows, old, new)
        SELECT xid, 'u', happened, request, count(*), json_agg(o.r), json_agg(n.r)
        FROM (SELECT row_number() OVER () AS i, r FROM old_rows AS r) AS o
        JOIN (SELECT row_number() OVER () AS i, r FROM new_rows AS r) AS n USING (i)
        WHERE o.r IS DISTINCT FROM n.r
        HAVING count(*) > 0;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO {log} (txid, op, at, request_id, rows, old)
        SELECT xid, 'd', happened, request, count(*), json_agg(r) FROM old_rows AS r
        HAVING count(*) > 0;
    ELSE
        INSERT INTO {log} (txid, op, at, request_id, rows)
        VALUES (xid, 't', happened, request, 0);
    END IF;"""
    return setup, writes


def _json(table: str) -> tuple[list[str], str]:
    log = f"{table}_change"
    setup = [
        f"CREATE TABLE {log} (id bigint PRIMARY KEY "
        "DEFAULT nextval('pubsubpull_change_id_seq'), txid bigint NOT NULL, "
        'model varchar(200) COLLATE "C" NOT NULL, object_pk bigint, op varchar(8) NOT NULL, '
        "at timestamptz NOT NULL, request_id uuid, old json, new json)",
        f"CREATE INDEX {log}_feed ON {log} (txid, id)",
        f"CREATE INDEX {log}_object ON {log} (model, object_pk, id)",
        f"CREATE INDEX {log}_request ON {log} (request_id) WHERE request_id IS NOT NULL",
    ]
    columns = f"INSERT INTO {log} (txid, model, object_pk, op, at, request_id, old, new)"
    writes = f"""
    IF TG_OP = 'INSERT' THEN
        {columns}
        SELECT xid, model_label, r.id, 'insert', happened, request, NULL, row_to_json(r)
        FROM new_rows AS r;
    ELSIF TG_OP = 'UPDATE' THEN
        {columns}
        SELECT xid, model_label, (n.r).id, 'update', happened, request,
               row_to_json(o.r), row_to_json(n.r)
        FROM (SELECT row_number() OVER () AS i, r FROM old_rows AS r) AS o
        JOIN (SELECT row_number() OVER () AS i, r FROM new_rows AS r) AS n USING (i)
        WHERE o.r IS DISTINCT FROM n.r;
    ELSIF TG_OP = 'DELETE' THEN
        {columns}
        SELECT xid, model_label, r.id, 'delete', happened, request, row_to_json(r), NULL
        FROM old_rows AS r;
    ELSE
        {columns} VALUES (xid, model_label, NULL, 'truncate', happened, request, NULL, NULL);
    END IF;"""
    return setup, writes


# variant name: (table, builder)
DESIGNS = {
    "typed": ("bench_writes_designtyped", lambda t: _typed(t, new_only=False)),
    "typed new only": ("bench_writes_designtypednew", lambda t: _typed(t, new_only=True)),
    "typed flat": ("bench_writes_designflat", _flat),
    "per statement": ("bench_writes_designstatement", _statement),
    "statement typed": ("bench_writes_designstatementtyped", _statement_typed),
    "json": ("bench_writes_designjson", _json),
    # Chunks of 1,024 rows (ordinal: 10 bits of the change id), no join.
    "statement keyed": (
        "bench_design_keyed",
        lambda t: _statement_keyed(t, chunk=1024),
    ),
    "keyed 64k": ("bench_design_keyed64k", lambda t: _statement_keyed(t, chunk=65536)),
    "keyed join": (
        "bench_design_keyedjoin",
        lambda t: _statement_keyed(t, chunk=1024, pairing="join"),
    ),
    "keyed chunk pairs": (
        "bench_design_keyedchunks",
        lambda t: _statement_keyed(t, chunk=1024, pairing="chunks"),
    ),
    "keyed fu off": (
        "bench_design_keyednofu",
        lambda t: _statement_keyed(t, chunk=1024, fastupdate=False),
    ),
}
# The trigger function's SET clauses, if not capture v2's. The keyed designs
# group a statement's rows by chunk in memory (a hash aggregate of the whole
# statement: 16 MB for 100,000 rows, which spills to disk at the default
# 4 MB); only "keyed join" joins the transition tables and needs the
# nested-loop guard.
_WORK_MEM = "SET work_mem = '64MB'\n"
SETTINGS = {
    "statement keyed": _WORK_MEM,
    "keyed 64k": _WORK_MEM,
    "keyed join": _WORK_MEM + "SET enable_nestloop = off\n",
    "keyed fu off": _WORK_MEM,
    "keyed chunk pairs": _WORK_MEM + "SET enable_nestloop = off\n",
}
# Bits of the change id below the log row's id: the row's ordinal in its chunk.
KEYED_BITS = {
    "statement keyed": 10,
    "keyed 64k": 16,
    "keyed join": 10,
    "keyed fu off": 10,
    "keyed chunk pairs": 10,
}

# What the feed's reader would render per change, in feed order, for the
# read-side measure: one JSON text per change (per statement for "per
# statement", whose array holds them all).
READS = {
    "pubsubpull": "SELECT c.new::text AS j FROM pubsubpull_change AS c ORDER BY c.txid, c.id",
    # Version 4's own reader: its log rows as changes, jsonb images (write_overhead.py
    # fills in statement_log.changes_sql()).
    "pubsubpull v4": "SELECT c.new::text AS j FROM ({changes}) AS c ORDER BY c.txid, c.id",
    "typed": "SELECT row_to_json(c.new)::text AS j FROM {log} AS c ORDER BY c.txid, c.id",
    "typed new only": "SELECT row_to_json(c.new)::text AS j FROM {log} AS c ORDER BY c.txid, c.id",
    "per statement": (
        "SELECT e::text AS j FROM {log} AS c, json_array_elements(c.new) AS e ORDER BY c.txid, c.id"
    ),
    "json": "SELECT c.new::text AS j FROM {log} AS c ORDER BY c.txid, c.id",
    "typed flat": (
        "SELECT json_build_object("
        + ", ".join(f"'{c}', c.n_{c}" for c in COLUMNS)
        + ")::text AS j FROM {log} AS c ORDER BY c.txid, c.id"
    ),
    "statement typed": (
        "SELECT row_to_json(e)::text AS j FROM {log} AS c, unnest(c.new) AS e ORDER BY c.txid, c.id"
    ),
}
for _variant in KEYED_BITS:
    READS[_variant] = READS["statement typed"]


def setup_sql(variant: str) -> list[str]:
    table, build = DESIGNS[variant]
    function = f"{table}_capture"
    setup, writes = build(table)
    return [
        *setup,
        _FUNCTION.format(
            function=function,
            writes=writes,
            settings=SETTINGS.get(variant, "SET enable_nestloop = off\n"),
        ),
        _TRIGGERS.format(table=table, function=function, label=f"bench.{table}"),
    ]


def log_table(variant: str) -> str:
    return f"{DESIGNS[variant][0]}_change"


# The read side of the keyed designs, against today's shared log, measured by
# write_overhead.py after the bulk INSERT and UPDATE (two changes per row):
# ``cursor`` finds the feed position %(position)s (its txid, id and ordinal);
# ``feed page`` renders the 5,000 changes after it; ``sequence`` gives the
# newest change id of each of a page of pks (%(pks)s, the snapshot's
# ``sequence``); ``history`` renders one object's changes, oldest first.
PAGE = 5_000
_V2 = {
    "cursor": (
        "SELECT c.txid, c.id, 0 FROM pubsubpull_change AS c ORDER BY c.txid, c.id "
        "OFFSET %(position)s LIMIT 1"
    ),
    "feed page": (
        "SELECT json_build_object('id', c.id, 'op', c.op, 'old', c.old, 'new', c.new)::text AS j "
        "FROM pubsubpull_change AS c WHERE (c.txid, c.id) > (%(txid)s, %(id)s) "
        f"ORDER BY c.txid, c.id LIMIT {PAGE}"
    ),
    # As the snapshot does it: one probe of the (model, object_pk, id) index per pk.
    "sequence": (
        "SELECT p.pk, (SELECT max(c.id) FROM pubsubpull_change AS c "
        "WHERE c.model = %(label)s AND c.object_pk = p.pk::text) AS sequence "
        "FROM unnest(%(pks)s::bigint[]) AS p(pk)"
    ),
    "history": (
        "SELECT json_build_object('id', c.id, 'op', c.op, 'old', c.old, 'new', c.new)::text AS j "
        "FROM pubsubpull_change AS c WHERE c.model = %(label)s AND c.object_pk = %(pk)s::text "
        "ORDER BY c.id"
    ),
}
_KEYED = {
    # The log row holding the change at %(position)s, and the ordinal in it.
    "cursor": """
        SELECT c.txid, c.id, %(position)s - c.before FROM (
            SELECT c.txid, c.id, c.rows, coalesce(sum(c.rows) OVER (ORDER BY c.txid, c.id
                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
            FROM {log} AS c) AS c
        WHERE c.before <= %(position)s AND %(position)s < c.before + c.rows""",
    # Log rows from the cursor's on, unnested (a TRUNCATE is one change of
    # no row); the JSON built for the page's rows only.
    "feed page": f"""
        SELECT json_build_object('id', (p.id << {{bits}}) | p.i, 'op', p.op,
                                 'old', row_to_json(p.o), 'new', row_to_json(p.n))::text AS j
        FROM (SELECT c.txid, c.id, c.op, u.i, u.o, u.n
              FROM {{log}} AS c,
                   LATERAL (SELECT generate_series(0, greatest(c.rows, 1) - 1) AS i,
                                   unnest(c.old) AS o, unnest(c.new) AS n) AS u
              WHERE (c.txid, c.id) >= (%(txid)s, %(id)s)
                AND (c.txid, c.id, u.i) > (%(txid)s, %(id)s, %(ordinal)s)
              ORDER BY c.txid, c.id, u.i LIMIT {PAGE}) AS p
        ORDER BY p.txid, p.id, p.i""",
    # The log rows whose keys overlap the page's (the GIN index), each one's
    # keys unnested once and joined with the page.
    "sequence": """
        SELECT p.pk, max((m.id << {bits}) | (m.i - 1)) AS sequence
        FROM unnest(%(pks)s::bigint[]) AS p(pk)
        LEFT JOIN (SELECT u.pk, c.id, u.i
                   FROM {log} AS c, unnest(c.keys) WITH ORDINALITY AS u(pk, i)
                   WHERE c.keys && %(pks)s::bigint[]) AS m ON m.pk = p.pk
        GROUP BY p.pk""",
    # The log rows holding the key (the GIN index), and the row at its position.
    "history": """
        SELECT json_build_object('id', (c.id << {bits}) | (u.i - 1), 'op', c.op,
                                 'old', row_to_json(c.old[u.i]),
                                 'new', row_to_json(c.new[u.i]))::text AS j
        FROM {log} AS c, unnest(c.keys) WITH ORDINALITY AS u(pk, i)
        WHERE c.keys @> ARRAY[%(pk)s::bigint] AND u.pk = %(pk)s
        ORDER BY c.txid, c.id""",
}


def pages(variant: str) -> dict[str, str] | None:
    """The read-side queries of ``variant`` (see ``PAGE``), or None if it has none."""
    if variant == "pubsubpull":
        return _V2
    if variant not in KEYED_BITS:
        return None
    log, bits = log_table(variant), KEYED_BITS[variant]
    return {name: query.format(log=log, bits=bits) for name, query in _KEYED.items()}
