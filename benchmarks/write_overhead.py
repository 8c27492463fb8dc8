"""What change capture costs writers: rows/s with and without a trigger.

Run from the repository root, after ``pip install -e '.[bench]'``::

    python benchmarks/write_overhead.py            # the full run (several minutes)
    python benchmarks/write_overhead.py --quick    # a smoke run (well under a minute)

It creates a database (``--db-name``, default ``bench_write``) on the server named
by ``DATABASE_URL`` (default ``postgres://postgres@127.0.0.1:5432/postgres``),
builds identical tables with Django's ``migrate`` exactly as users get them
(``benchmarks/settings.py``), measures, and drops the database.

Variants, interleaved within every round (the order rotates each round):

- ``no trigger``: the baseline table;
- ``pubsubpull``: the same table registered with ``pubsubpull.register``;
- ``pubsubpull v4``: a registered table with capture version 4
  (``pubsubpull.capture.statement_log``) in place of the migration's triggers:
  its own log table, composite type and capture functions, made by that
  module's SQL after migrate, and the change id sequence stepping by its chunk
  (shared with ``pubsubpull``, whose ids then step by it too);
- ``pghistory``: the same table with ``pghistory.track()`` (default trackers:
  insert and update; deletes are not recorded), and for the DELETE figure also
  ``pghistory+del``, tracked with ``DeleteEvent`` as well;
- ``pghistory stmt``: ``pghistory.track(InsertEvent(), UpdateEvent(),
  DeleteEvent(), level=pghistory.Statement)``, pghistory at its best for bulk
  writes (statement-level triggers copying typed columns);
- with ``--designs``, the candidate capture designs of ``benchmarks/designs.py``
  (``typed``, ``typed new only``, ``per statement``, ``json``), each on its own
  table with its own trigger function and change table;
- ``jsonb floor`` (bulk only): not a design but a bound. The statement itself
  (a CTE) writes ``to_jsonb()`` of every row it touched into an index-free copy
  of the change log, with no trigger. No capture that stores each row as jsonb
  can cost less.

Measures, all through SQL on psycopg connections in autocommit mode (one
statement, one transaction), so the client's own cost does not dilute the ratio:

- ``insert 1``/``update 1``: single-row INSERT / UPDATE-by-primary-key
  transactions from 2 concurrent clients for a fixed time (in slices that
  alternate between the variants), committed with the server's own
  fsync/synchronous_commit settings;
- ``INSERT``/``UPDATE``/``DELETE``: one statement over ``--rows`` rows
  (``INSERT ... SELECT generate_series``, ``UPDATE`` of every row, ``DELETE`` of
  every row), after a CHECKPOINT, on an empty table and change log.

The same through Django's ORM (``--no-orm`` leaves it out), since that is what
users write: ``create 1`` (``Model.objects.create()``) and ``save 1``
(``instance.save()`` of an existing row) from the same concurrent clients,
``bulk_create``, ``update()`` (``queryset.update()`` of every row) and
``delete()`` (``queryset.delete()`` of every row), each timed around the one
call (building the instances for ``bulk_create`` is not timed).

The ratio is variant rows/s over no-trigger rows/s of the same round; the
median of those per-round ratios is printed. Finally the cached-plan trap of
DESIGN.md section 5, for every variant: an UPDATE of ``--trap-rows`` rows on a
fresh connection, and on a connection whose ten earlier UPDATEs touched one row
each (cancelled after ``--trap-timeout`` seconds). With ``--designs`` the read
side too: each design's change rows of the bulk INSERT rendered as the feed
would (one JSON text per change, in feed order), in rows/s.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # benchmarks.settings and scripts.postgres

from benchmarks import designs  # noqa: E402

TABLES = {
    "no trigger": "bench_writes_plain",
    "pubsubpull": "bench_writes_published",
    "pubsubpull v4": "bench_writes_publishedv4",
    "pghistory": "bench_peer_tracked",
    "pghistory+del": "bench_peer_trackedwithdeletes",
    "pghistory stmt": "bench_peer_trackedbystatement",
    "jsonb floor": "bench_floor",
}
# The ORM models of the variants (the floor has none: it is a SQL statement).
MODELS = {
    "no trigger": "bench_writes.Plain",
    "pubsubpull": "bench_writes.Published",
    "pubsubpull v4": "bench_writes.PublishedV4",
    "pghistory": "bench_peer.Tracked",
    "pghistory+del": "bench_peer.TrackedWithDeletes",
    "pghistory stmt": "bench_peer.TrackedByStatement",
    "typed": "bench_writes.DesignTyped",
    "typed new only": "bench_writes.DesignTypedNew",
    "per statement": "bench_writes.DesignStatement",
    "typed flat": "bench_writes.DesignFlat",
    "statement typed": "bench_writes.DesignStatementTyped",
    "json": "bench_writes.DesignJson",
}
# What each variant writes besides the table, emptied before each measure.
LOGS = {
    "no trigger": [],
    "pubsubpull": ["pubsubpull_change", "pubsubpull_request"],
    # "pubsubpull v4": its log table, named by its registration (install_v4).
    "pghistory": ["bench_peer_trackedevent", "pghistory_context"],
    "pghistory+del": ["bench_peer_trackedwithdeletesevent", "pghistory_context"],
    "pghistory stmt": ["bench_peer_trackedbystatementevent", "pghistory_context"],
    "jsonb floor": ["bench_floor_log"],
}
V4 = "pubsubpull v4"
# Bulk-only variants: no single-row figure.
BULK_ONLY = {"pghistory+del", "jsonb floor"}
# Not a design but a bound: the statement itself writes to_jsonb() of every
# row it touched into a copy of the change log without indexes, no trigger.
# Any capture that stores each row as jsonb costs at least this much.
FLOOR_SETUP = [
    "CREATE TABLE bench_floor (LIKE bench_writes_plain INCLUDING ALL)",
    "CREATE TABLE bench_floor_log (LIKE pubsubpull_change INCLUDING DEFAULTS INCLUDING IDENTITY)",
]
FLOOR_LOG = (
    "INSERT INTO bench_floor_log (txid, model, object_pk, op, at, old, new) "
    "SELECT pg_current_xact_id()::text::bigint, 'bench.floor', w.id::text, '{op}', "
    "statement_timestamp(), {old}, {new} FROM w"
)
COLUMNS = "name, email, country, newsletter, score, created, updated"
BULK_INSERT = (
    "INSERT INTO {table} (" + COLUMNS + ") "
    "SELECT 'Customer ' || i, 'customer' || i || '@example.com', 'fr', i %% 2 = 0, i, "
    "statement_timestamp(), statement_timestamp() FROM generate_series(1, %(rows)s) AS i"
)
BULK_UPDATE = "UPDATE {table} SET score = score + 1, updated = statement_timestamp()"
BULK_DELETE = "DELETE FROM {table}"
ONE_INSERT = (
    "INSERT INTO {table} (" + COLUMNS + ") "
    "VALUES (%s, %s, 'fr', false, 0, statement_timestamp(), statement_timestamp())"
)
ONE_UPDATE = "UPDATE {table} SET score = score + 1, updated = statement_timestamp() WHERE id = %s"
# Each measure starts from a checkpoint, so none pays for another's dirty
# pages; --quick skips them (they are slow on a busy server).
CHECKPOINTS = True
SQL_MEASURES = ["insert 1", "update 1", "INSERT", "UPDATE", "DELETE"]
ORM_MEASURES = ["create 1", "save 1", "bulk_create", "update()", "delete()"]
SINGLE = {"insert 1", "update 1", "create 1", "save 1"}
MEASURES = SQL_MEASURES + ORM_MEASURES
CPU_MEASURES = ["INSERT cpu", "UPDATE cpu", "DELETE cpu"]
# Issue 13: bulk at least 1.2x pghistory stmt's rows/s; single-row at least
# both pghistory modes'.
PEER_TARGETS = {
    "insert 1": 1.0,
    "update 1": 1.0,
    "INSERT": 1.2,
    "UPDATE": 1.2,
    "DELETE": 1.2,
    "create 1": 1.0,
    "save 1": 1.0,
    "bulk_create": 1.2,
    "update()": 1.2,
    "delete()": 1.2,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 round: a smoke run")
    parser.add_argument("--rounds", type=int, help="rounds (default 5; 1 with --quick)")
    parser.add_argument("--rows", type=int, help="rows per bulk statement (default 100,000)")
    parser.add_argument("--seconds", type=float, help="seconds per single-row measure (default 5)")
    parser.add_argument("--clients", type=int, default=2, help="single-row clients (default 2)")
    parser.add_argument(
        "--slices", type=int, help="alternating slices per single-row measure (default 5)"
    )
    parser.add_argument("--db-name", default=os.environ.get("BENCH_DB_NAME", "bench_write"))
    parser.add_argument(
        "--designs", action="store_true", help="also the candidate designs of benchmarks/designs.py"
    )
    parser.add_argument("--no-orm", action="store_true", help="leave out the ORM measures")
    parser.add_argument(
        "--trap-rows", type=int, help="rows of the cached-plan trap's UPDATE (default 5,000)"
    )
    parser.add_argument(
        "--trap-timeout", type=float, default=120.0, help="seconds before cancelling"
    )
    parser.add_argument("--only", nargs="+", help="only these variants (and no trigger)")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 5)
    args.rows = args.rows or (5_000 if quick else 100_000)
    args.seconds = args.seconds or (0.5 if quick else 5.0)
    args.slices = args.slices or (1 if quick else 5)
    # pghistory stmt's trap is quadratic: 5,000 rows took 24 s here, 1,000 ~1 s.
    args.trap_rows = args.trap_rows or (1_000 if quick else 5_000)
    return args


def server_url() -> str:
    return os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def conninfo(dbname: str) -> str:
    from scripts.postgres import django_database

    params = django_database(server_url())
    return psycopg.conninfo.make_conninfo(
        **{
            key: str(params[name])
            for key, name in [
                ("host", "HOST"),
                ("port", "PORT"),
                ("user", "USER"),
                ("password", "PASSWORD"),
            ]
            if params.get(name)
        },
        dbname=dbname,
    )


def choose_variants(args) -> None:
    """Add the designs if asked for; keep only ``--only``'s variants if given."""
    if args.designs:
        floor = TABLES.pop("jsonb floor")
        for variant, (table, _) in designs.DESIGNS.items():
            TABLES[variant] = table
            LOGS[variant] = [designs.log_table(variant), "pubsubpull_request"]
        TABLES["jsonb floor"] = floor
    if args.only:
        unknown = set(args.only) - set(TABLES)
        if unknown:
            raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {list(TABLES)}")
        for variant in list(TABLES):
            if variant != "no trigger" and variant not in args.only:
                TABLES.pop(variant)


def create_database(args) -> None:
    """A fresh database, with the tables and triggers made by ``migrate``."""
    with psycopg.connect(conninfo("postgres"), autocommit=True) as conn:
        name = sql.Identifier(args.db_name)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    os.environ["BENCH_DB_NAME"] = args.db_name
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    import django
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    django.setup()
    call_command("migrate", verbosity=0)
    connections.close_all()
    with psycopg.connect(conninfo(args.db_name), autocommit=True) as conn:
        for statement in FLOOR_SETUP:
            conn.execute(statement)
        if args.designs:
            for variant in designs.DESIGNS:
                for statement in designs.setup_sql(variant):
                    conn.execute(statement)
        if V4 in TABLES:
            install_v4(conn)
    if not settings.PGHISTORY_INSTALLED:
        for variant in ("pghistory", "pghistory+del", "pghistory stmt"):
            TABLES.pop(variant)
            LOGS.pop(variant)


def v4_log():
    """PublishedV4's log (``statement_log.LogTable``), as its registration gives it."""
    from django.db import connection

    from pubsubpull.capture import statement_log
    from pubsubpull.capture.registry import get_registration

    return statement_log.log_table(get_registration(MODELS[V4]), connection)


def install_v4(conn) -> None:
    """Capture version 4 on PublishedV4's table, as tests/test_capture_v4.py installs it.

    Nothing installs version 4 in migrations yet: its own SQL
    (``statement_log.create_sql``) in place of the triggers, after the
    sequence step it requires.
    """
    from pubsubpull.capture import statement_log, triggers

    log = v4_log()
    with conn.transaction():
        conn.execute(f"ALTER SEQUENCE pubsubpull_change_id_seq INCREMENT BY {statement_log.CHUNK}")
        for statement in triggers.install_sql(log.table, statement_log.create_sql(log)):
            conn.execute(statement)
    LOGS[V4] = [log.name, log.single, "pubsubpull_request"]


def drop_database(args) -> None:
    with psycopg.connect(conninfo("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(args.db_name))
        )


def connect(args) -> psycopg.Connection:
    return psycopg.connect(conninfo(args.db_name), autocommit=True)


def q(template: str, variant: str) -> sql.Composed:
    return sql.SQL(template).format(table=sql.Identifier(TABLES[variant]))


def reset(conn, variant: str) -> None:
    """Empty the table and what its trigger writes, and start from a checkpoint."""
    conn.execute(q("TRUNCATE {table} RESTART IDENTITY", variant))
    for table in dict.fromkeys(LOGS[variant]):
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
    if CHECKPOINTS:
        conn.execute("CHECKPOINT")


def timed(conn, statement, params=None) -> tuple[float, int]:
    started = time.perf_counter()
    cursor = conn.execute(statement, params)
    return time.perf_counter() - started, cursor.rowcount


def bulk_statements(variant: str) -> list[tuple[str, str]]:
    statements = [("INSERT", BULK_INSERT), ("UPDATE", BULK_UPDATE), ("DELETE", BULK_DELETE)]
    if variant != "jsonb floor":
        return statements
    logs = {
        "INSERT": FLOOR_LOG.format(op="insert", old="NULL", new="to_jsonb(w)"),
        "UPDATE": FLOOR_LOG.format(op="update", old="to_jsonb(w)", new="to_jsonb(w)"),
        "DELETE": FLOOR_LOG.format(op="delete", old="to_jsonb(w)", new="NULL"),
    }
    return [
        (measure, f"WITH w AS ({template} RETURNING *) {logs[measure]}")
        for measure, template in statements
    ]


def read_rate(conn, variant: str) -> float | None:
    """Change rows/s rendered as the feed would, for the variants that have a reader."""
    if variant not in designs.READS:
        return None
    query = designs.READS[variant]
    if variant in designs.DESIGNS:
        query = query.format(log=designs.log_table(variant))
    elif variant == V4:
        from pubsubpull.capture import statement_log

        query = query.format(changes=statement_log.changes_sql(v4_log().name))
    started = time.perf_counter()
    count = conn.execute(f"SELECT count(*), sum(length(s.j)) FROM ({query}) AS s").fetchone()[0]
    return count / (time.perf_counter() - started) if count else None


PAGE_MEASURES = ["feed page ms", "sequence ms", "history ms"]
# What each read-side query returns: change rows of the page, pks, changes.
PAGE_COUNTS = {"feed page": designs.PAGE, "sequence": designs.PAGE, "history": 2}


def read_pages(conn, variant: str, rows: int) -> dict[str, float]:
    """Milliseconds of the read-side queries of ``designs.pages``, median of 5.

    Run after the bulk INSERT and UPDATE (two changes per row): a feed page of
    5,000 changes from the middle of the INSERT, the snapshot's ``sequence``
    of 5,000 pks there, one object's history.
    """
    queries = designs.pages(variant)
    if not queries:
        return {}
    # As on a log of many statements: its indexes, not a scan of these few log rows.
    conn.execute("SET enable_seqscan = off")
    label = None
    if variant == "pubsubpull":
        label = conn.execute("SELECT model FROM pubsubpull_change LIMIT 1").fetchone()[0]
    middle = rows // 2
    txid, id_, ordinal = conn.execute(queries["cursor"], {"position": middle}).fetchone()
    params = {
        "txid": txid,
        "id": id_,
        "ordinal": ordinal,
        "pks": list(range(middle + 1, min(middle + designs.PAGE, rows) + 1)),
        "pk": middle + 1,
        "label": label,
    }
    result = {}
    for name, count in PAGE_COUNTS.items():
        value = "s.sequence" if name == "sequence" else "length(s.j)"
        query = f"SELECT count(*), count({value}), sum({value}) FROM ({queries[name]}) AS s"
        times = []
        for _ in range(5):
            started = time.perf_counter()
            got, values, _ = conn.execute(query, params).fetchone()
            times.append(time.perf_counter() - started)
            expected = len(params["pks"]) if name == "sequence" else count
            assert got == values == expected, (variant, name, got, values)
        result[f"{name} ms"] = statistics.median(times) * 1e3
    conn.execute("RESET enable_seqscan")
    return result


def backend_cpu(conn) -> float | None:
    """Seconds of CPU the connection's server process has used (a local server only)."""
    try:
        with open(f"/proc/{conn.info.backend_pid}/schedstat") as stat:
            return int(stat.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def bulk(args, variant: str) -> dict[str, float]:
    """Rows/s of one INSERT, one UPDATE and one DELETE of ``args.rows`` rows.

    Also the server process's CPU time per row (``INSERT cpu`` ...), in µs,
    when the server runs on this machine: less sensitive than wall time to
    what else runs on a shared machine.
    """
    result = {}
    with connect(args) as conn:
        reset(conn, variant)
        for measure, template in bulk_statements(variant):
            cpu = backend_cpu(conn)
            seconds, rows = timed(conn, q(template, variant), {"rows": args.rows})
            assert rows == args.rows, (variant, measure, rows)
            result[measure] = rows / seconds
            if cpu is not None:
                result[f"{measure} cpu"] = (backend_cpu(conn) - cpu) / rows * 1e6
            if measure == "UPDATE" and args.designs:
                result.update(read_pages(conn, variant, rows))
            if measure == "INSERT" and args.designs:
                rate = read_rate(conn, variant)
                if rate:
                    result["feed read"] = rate
    return result


def model_of(variant: str):
    from django.apps import apps

    return apps.get_model(MODELS[variant])


def orm_bulk(args, variant: str) -> dict[str, float]:
    """Rows/s of bulk_create, queryset.update() and queryset.delete() of ``args.rows`` rows."""
    from django.db import connections
    from django.db.models import F
    from django.db.models.functions import Now
    from django.utils import timezone

    model = model_of(variant)
    result = {}
    with connect(args) as conn:
        reset(conn, variant)
    now = timezone.now()
    rows = [
        model(
            name=f"Customer {i}",
            email=f"customer{i}@example.com",
            country="fr",
            newsletter=i % 2 == 0,
            score=i,
            created=now,
            updated=now,
        )
        for i in range(args.rows)
    ]
    try:
        started = time.perf_counter()
        model.objects.bulk_create(rows)
        result["bulk_create"] = args.rows / (time.perf_counter() - started)
        started = time.perf_counter()
        done = model.objects.update(score=F("score") + 1, updated=Now())
        result["update()"] = done / (time.perf_counter() - started)
        started = time.perf_counter()
        done, _ = model.objects.all().delete()
        result["delete()"] = done / (time.perf_counter() - started)
        assert done == args.rows, (variant, done)
    finally:
        connections.close_all()
    return result


def prepare_single_rows(args, variant: str, measure: str) -> None:
    with connect(args) as conn:
        reset(conn, variant)
        if measure in ("update 1", "save 1"):
            conn.execute(q(BULK_INSERT, variant), {"rows": 10_000})
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(TABLES[variant])))


def sql_writer(args, variant: str, measure: str, number: int):
    conn = connect(args)
    statement = q(ONE_INSERT if measure == "insert 1" else ONE_UPDATE, variant)

    def write(done: int) -> None:
        if measure == "insert 1":
            params = (f"Customer {number}-{done}", f"c{number}-{done}@example.com")
        else:
            # Disjoint rows per client: no lock waits between them.
            params = (1 + (done * args.clients + number) % 10_000,)
        conn.execute(statement, params, prepare=True)

    return write, conn.close


def orm_writer(args, variant: str, measure: str, number: int):
    from django.db import connections
    from django.utils import timezone

    model = model_of(variant)
    created = timezone.now()

    def write(done: int) -> None:
        if measure == "create 1":
            model.objects.create(
                name=f"Customer {number}-{done}",
                email=f"c{number}-{done}@example.com",
                country="fr",
                created=timezone.now(),
                updated=timezone.now(),
            )
        else:
            row = model(
                id=1 + (done * args.clients + number) % 10_000,
                name="Customer",
                email="customer@example.com",
                country="fr",
                score=done,
                created=created,
                updated=timezone.now(),
            )
            row._state.adding = False  # as if read from the database: save() UPDATEs
            row.save()

    return write, connections.close_all


def _client(args, variant: str, measure: str, number: int, counts, start, stop) -> None:
    """One single-row client: warm up, wait for the others, write until told to stop."""
    writer = orm_writer if measure in ORM_MEASURES else sql_writer
    write, close = writer(args, variant, measure, number)
    try:
        # Like a long-lived application connection: the trigger function
        # and the statement are compiled before the clock starts.
        for warm in range(3):
            write(-1 - warm)
        start.wait(timeout=120)
        done = 0
        while not stop.is_set():
            write(done)
            done += 1
        counts[number] = done
    finally:
        close()


def single_rows(args, variant: str, measure: str, seconds: float) -> tuple[int, float]:
    """Rows and seconds of single-row transactions from ``args.clients`` clients.

    Through SQL, a thread each. Through the ORM, a process each, as a web
    server's workers are: Django's own work per ``save()`` costs more CPU
    than the statement, and threads of one process would share one GIL, so
    the client would set the rate whatever the trigger cost (with threads,
    ``save 1`` ran 887 a second with no trigger and pghistory's row trigger
    measured 98.7% there, against 88.9% for the same UPDATE through SQL).
    """
    if measure in ORM_MEASURES:
        from django.db import connections

        connections.close_all()  # none may cross the fork
        context = multiprocessing.get_context("fork")
        counts, spawn = context.Array("q", args.clients), context.Process
    else:
        context, counts, spawn = threading, [0] * args.clients, threading.Thread
    start, stop = context.Barrier(args.clients + 1), context.Event()
    clients = [
        spawn(target=_client, args=(args, variant, measure, n, counts, start, stop))
        for n in range(args.clients)
    ]
    for client in clients:
        client.start()
    start.wait(timeout=120)
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    # Until the stop (a process takes a while to exit): each client's write
    # in flight then still counts, one in hundreds.
    elapsed = time.perf_counter() - started
    for client in clients:
        client.join()
    if any(getattr(c, "exitcode", 0) for c in clients):
        raise SystemExit(f"a {measure} client of {variant} failed")
    return sum(counts), elapsed


def single_row_round(args, order: list[str], measure: str) -> dict[str, float]:
    """Rows/s per variant, measured in short slices that alternate between them.

    Other work on the server comes and goes within seconds; alternating
    slices exposes every variant to the same mix of it.
    """
    order = [v for v in order if v not in BULK_ONLY and (measure in SQL_MEASURES or v in MODELS)]
    for variant in order:
        prepare_single_rows(args, variant, measure)
    done = dict.fromkeys(order, 0)
    spent = dict.fromkeys(order, 0.0)
    for number in range(args.slices):
        shift = number % len(order)
        for variant in order[shift:] + order[:shift]:
            rows, seconds = single_rows(args, variant, measure, args.seconds / args.slices)
            done[variant] += rows
            spent[variant] += seconds
    return {variant: done[variant] / spent[variant] for variant in order}


def cached_plan_trap(args) -> list[tuple[str, float | None, float | None]]:
    """Seconds of an UPDATE of ``--trap-rows`` rows on a fresh connection, and after 1-row UPDATEs.

    None: cancelled after ``--trap-timeout`` seconds.
    """
    results = []
    for variant in TABLES:
        times = []
        for warm in (False, True):
            with connect(args) as conn:
                reset(conn, variant)
                conn.execute(q(BULK_INSERT, variant), {"rows": args.trap_rows})
                conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(TABLES[variant])))
            with connect(args) as conn:
                if warm:
                    # More than 5 executions: PL/pgSQL may switch to a generic plan.
                    for pk in range(1, 11):
                        conn.execute(q(ONE_UPDATE, variant), (pk,))
                conn.execute(f"SET statement_timeout = {int(args.trap_timeout * 1000)}")
                try:
                    times.append(timed(conn, q(BULK_UPDATE, variant))[0])
                except psycopg.errors.QueryCanceled:
                    times.append(None)
        results.append((variant, *times))
    return results


def server_notes(args) -> str:
    with connect(args) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        settings = [
            f"{name}={conn.execute(sql.SQL('SHOW {}').format(sql.Identifier(name))).fetchone()[0]}"
            for name in ("fsync", "synchronous_commit", "shared_buffers", "max_wal_size")
        ]
    return f"PostgreSQL {version}, {', '.join(settings)}, {os.cpu_count()} CPUs"


def median_ratio(got: list[float], base: list[float]) -> float:
    return statistics.median(g / b for g, b in zip(got, base, strict=True))


def print_results(args, variants: list[str], rates: dict) -> None:
    measures = [m for m in [*MEASURES, "feed read"] if any(rates.get(m, {}).values())]
    width = 12
    print()
    print("Median rows/s of no trigger; for the others, the median of the per-round ratios")
    print("to no trigger (feed read: change rows rendered per second, not a ratio)")
    header = f"{'variant':<16}" + "".join(f"{m:>{width}}" for m in measures)
    print(header)
    print("-" * len(header))
    for variant in variants:
        cells = []
        for measure in measures:
            got = rates[measure].get(variant) or []
            base = rates[measure].get("no trigger") or []
            if not got:
                cells.append("-")
            elif variant == "no trigger" or measure == "feed read":
                cells.append(f"{statistics.median(got):,.0f}")
            else:
                cells.append(f"{median_ratio(got, base):.1%}")
        print(f"{variant:<16}" + "".join(f"{c:>{width}}" for c in cells))
    if any(rates[m]["no trigger"] for m in CPU_MEASURES):
        print()
        print("Server CPU per row of the bulk statements, µs (median over rounds; in")
        print("brackets what capture adds over no trigger)")
        print(f"{'variant':<16}" + "".join(f"{m:>18}" for m in CPU_MEASURES))
        for variant in variants:
            cells = []
            for measure in CPU_MEASURES:
                got = rates[measure].get(variant) or []
                base = rates[measure].get("no trigger") or []
                if not got or not base:
                    cells.append("-")
                    continue
                mine, theirs = statistics.median(got), statistics.median(base)
                extra = "" if variant == "no trigger" else f" (+{mine - theirs:.2f})"
                cells.append(f"{mine:.2f}{extra}")
            print(f"{variant:<16}" + "".join(f"{c:>18}" for c in cells))
    if any(rates[m][v] for m in PAGE_MEASURES for v in variants):
        print()
        print("Read side after the bulk INSERT and UPDATE, ms (median over rounds): a feed")
        print(f"page of {designs.PAGE:,} changes from the middle of the INSERT, the sequence of")
        print(f"{designs.PAGE:,} pks, one object's history (2 changes)")
        print(f"{'variant':<20}" + "".join(f"{m:>16}" for m in PAGE_MEASURES))
        for variant in variants:
            if any(rates[m][variant] for m in PAGE_MEASURES):
                cells = [
                    f"{statistics.median(rates[m][variant]):.2f}" if rates[m][variant] else "-"
                    for m in PAGE_MEASURES
                ]
                print(f"{variant:<20}" + "".join(f"{c:>16}" for c in cells))
    peer = "pghistory stmt"
    if peer not in variants:
        return
    print()
    print(f"Against {peer} (median per-round rows/s ratio; issue 13 targets in brackets;")
    print("no trigger: the most any capture can reach):")
    for variant in variants:
        if variant == peer or variant in BULK_ONLY:
            continue
        parts = []
        for measure in MEASURES:
            got, theirs = rates[measure].get(variant), rates[measure].get(peer)
            if got and theirs:
                ratio = median_ratio(got, theirs)
                mark = "ok" if ratio >= PEER_TARGETS[measure] else "MISSED"
                parts.append(f"{measure} {ratio:.2f}x ({PEER_TARGETS[measure]:g}x {mark})")
        print(f"    {variant:<16} " + ", ".join(parts))
    row = "pghistory"
    if row in variants:
        print(f"Against {row} (row level), single-row (target 1x):")
        for variant in variants:
            if variant in ("no trigger", peer, row) or variant in BULK_ONLY:
                continue
            parts = []
            for measure in ("insert 1", "update 1", "create 1", "save 1"):
                got, theirs = rates[measure].get(variant), rates[measure].get(row)
                if got and theirs:
                    parts.append(f"{measure} {median_ratio(got, theirs):.2f}x")
            print(f"    {variant:<16} " + ", ".join(parts))


def main(argv=None) -> int:
    global CHECKPOINTS
    args = parse_args(argv)
    CHECKPOINTS = not args.quick
    began = time.perf_counter()
    choose_variants(args)
    try:
        create_database(args)
        variants = list(TABLES)
        print(server_notes(args))
        print(
            f"{args.rounds} round(s); bulk statements of {args.rows:,} rows; single-row "
            f"transactions from {args.clients} clients for {args.seconds:g} s in "
            f"{args.slices} alternating slices; through SQL (psycopg, autocommit)"
            + ("" if args.no_orm else " and through the ORM")
            + "."
        )
        # rates[measure][variant] = [rows/s per round]
        rates = {
            m: {v: [] for v in variants}
            for m in [*MEASURES, *CPU_MEASURES, "feed read", *PAGE_MEASURES]
        }
        singles = ["insert 1", "update 1"] + ([] if args.no_orm else ["create 1", "save 1"])
        for number in range(args.rounds):
            shift = number % len(variants)
            order = variants[shift:] + variants[:shift]
            for measure in singles:
                for variant, rate in single_row_round(args, order, measure).items():
                    rates[measure][variant].append(rate)
            for variant in order:
                for measure, rate in bulk(args, variant).items():
                    rates[measure][variant].append(rate)
                if not args.no_orm and variant in MODELS:
                    for measure, rate in orm_bulk(args, variant).items():
                        rates[measure][variant].append(rate)
            line = "; ".join(
                f"{v} "
                + " ".join(
                    f"{m} {rates[m][v][-1] / rates[m]['no trigger'][-1]:.2f}"
                    for m in MEASURES
                    if rates[m][v] and rates[m]["no trigger"]
                )
                for v in variants[1:]
            )
            print(f"round {number + 1}/{args.rounds} ratios: {line}", flush=True)

        print_results(args, variants, rates)
        print()
        print("Median ratio to no trigger:")
        for variant in variants[1:]:
            parts = []
            for measure in MEASURES:
                got, base = rates[measure][variant], rates[measure]["no trigger"]
                if got and base:
                    parts.append(f"{measure} {median_ratio(got, base):.1%}")
            print(f"  {variant:<16} " + ", ".join(parts))
        print()
        print(
            f"Cached-plan trap: UPDATE of {args.trap_rows:,} rows, seconds "
            f"(cancelled after {args.trap_timeout:g} s)"
        )
        print(f"  {'variant':<16}{'fresh connection':>18}{'after 10 1-row UPDATEs':>26}")
        for variant, fresh, warm in cached_plan_trap(args):
            cells = [f"> {args.trap_timeout:g}" if t is None else f"{t:.3f}" for t in (fresh, warm)]
            print(f"  {variant:<16}{cells[0]:>18}{cells[1]:>26}", flush=True)
        print(f"\ndone in {time.perf_counter() - began:.0f} s")
    finally:
        if not args.keep:
            # WITH (FORCE) also ends Django's connections, if any are left.
            drop_database(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
