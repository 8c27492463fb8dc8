"""How fast a mirror copies a table, and how far behind it follows: ``pubsubpull.mirror``.

Run from the repository root, after ``pip install -e '.[bench]'``::

    python benchmarks/mirror.py            # 1,000,000 rows, 20 s of updates
    python benchmarks/mirror.py --quick    # 100,000 rows, 5 s of updates

Two real services on the server named by ``DATABASE_URL`` (default
``postgres://postgres@127.0.0.1:5432/postgres``), each on a database of its own
that the script creates and drops: the publisher test project ("customers",
served by gunicorn, or by ``runserver`` without the bench extra) and the
subscriber test project ("billing", whose ``billing.mirrors.customers`` mirrors
each customer's name and country).

1. ``--rows`` customers are inserted at the publisher (captured by the trigger
   like any write).
2. Full copy: ``manage.py pubsubpull_pull`` runs billing's mirror in the
   foreground (snapshot pages of 5,000, then the feed) until caught up; the
   copy is checked row for row. Beside it, in the same run, the same table is
   copied with ``pg_dump -t customers_customer | psql`` into an empty database
   (the limit for a full copy), and the snapshot is read over HTTP by a plain
   httpx loop that writes nothing (the ceiling for any pull-based copy).
3. Lag: billing's worker follows the feed (long poll) while one client commits
   ``--rate`` single-row UPDATEs a second for ``--seconds``; each update's
   commit time is compared with the moment the mirrored row shows it (billing's
   table is polled every 10 ms), and the p50/p99/max lag printed.

Targets (issue 6): the full mirror within 5x of dump/restore; lag p99 < 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PUBLISHER = ROOT / "test-projects" / "publisher"
WRITERS = 8
SUBSCRIBER = ROOT / "test-projects" / "subscriber"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bench:
    def __init__(self, args):
        self.args = args
        url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
        server = psycopg.conninfo.conninfo_to_dict(url)
        server.pop("dbname", None)
        self.server = {k: str(v) for k, v in server.items()}
        self.pub_db = f"{args.db_prefix}_pub"
        self.sub_db = f"{args.db_prefix}_sub"
        self.dump_db = f"{args.db_prefix}_dump"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/pubsubpull/"
        self.processes: list[subprocess.Popen] = []
        self.token = ""

    def dsn(self, db: str) -> str:
        return psycopg.conninfo.make_conninfo(**{**self.server, "dbname": db})

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": os.environ.get(
                "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"
            ),
            "PUBLISHER_DB_NAME": self.pub_db,
            "SUBSCRIBER_DB_NAME": self.sub_db,
            "CUSTOMERS_URL": self.url,
            "CUSTOMERS_TOKEN": self.token,
            "DJANGO_DEBUG": "0",
            "PYTHONPATH": str(ROOT),
            **extra,
        }

    def manage(self, project: Path, *args: str, **env: str) -> str:
        done = subprocess.run(
            [sys.executable, str(project / "manage.py"), *args],
            env=self.env(**env),
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise SystemExit(f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def sql(self, db: str, query: str, params=None):
        with psycopg.connect(self.dsn(db), autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    # -- setup -------------------------------------------------------------------

    def create_databases(self) -> None:
        for db in (self.pub_db, self.sub_db, self.dump_db):
            self.sql("postgres", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            self.sql("postgres", f'CREATE DATABASE "{db}"')
        self.manage(PUBLISHER, "migrate", "-v", "0")
        self.manage(SUBSCRIBER, "migrate", "-v", "0")

    def drop_databases(self) -> None:
        for db in (self.pub_db, self.sub_db, self.dump_db):
            self.sql("postgres", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    def fill(self) -> float:
        started = time.monotonic()
        self.sql(self.pub_db, "INSERT INTO customers_country VALUES ('FR', 'France'), ('DE', 'D')")
        self.sql(
            self.pub_db,
            """
            INSERT INTO customers_customer (name, email, country_id, newsletter, notes,
                                            created, updated)
            SELECT 'customer ' || n, 'c' || n || '@example.com',
                   CASE WHEN n %% 2 = 0 THEN 'FR' ELSE 'DE' END, false, 'private',
                   now(), now()
            FROM generate_series(1, %s) AS n
            """,
            [self.args.rows],
        )
        self.sql(self.pub_db, "VACUUM ANALYZE customers_customer")
        self.sql(self.pub_db, "VACUUM ANALYZE pubsubpull_change")
        return time.monotonic() - started

    def serve(self) -> None:
        threads = str(self.args.server_workers * 2)
        if shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or _has("gunicorn"):
            command = [
                sys.executable, "-m", "gunicorn", "django.core.wsgi:get_wsgi_application()",
                "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.args.server_workers),
                "--threads", threads, "--worker-class", "gthread", "--timeout", "120",
                "--chdir", str(PUBLISHER), "--log-level", "warning",
            ]  # fmt: skip
        else:
            command = [
                sys.executable, str(PUBLISHER / "manage.py"), "runserver", "--noreload",
                f"127.0.0.1:{self.port}",
            ]  # fmt: skip
        self.start(command, DJANGO_SETTINGS_MODULE="publisher.settings")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("the publisher did not start")

    def start(self, command: list[str], **env: str) -> subprocess.Popen:
        process = subprocess.Popen(
            command, env=self.env(**env), stdout=subprocess.DEVNULL, stderr=sys.stderr
        )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        # The worker first, so it does not log the publisher's going away.
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()

    # -- measures -----------------------------------------------------------------

    def mirror(self) -> float:
        started = time.monotonic()
        done = subprocess.run(
            [
                sys.executable, str(SUBSCRIBER / "manage.py"), "pubsubpull_pull",
                self.url + "models/customers.customer/instances/",
                "--handler", "billing.mirrors.customers",
                "--name", "mirror:billing.customercountry",
                "--page-size", "5000", "--token", self.token,
            ],
            env=self.env(DJANGO_SETTINGS_MODULE="subscriber.settings"),
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        if done.returncode:
            raise SystemExit(f"the mirror failed:\n{done.stdout}")
        return elapsed

    def read_only(self) -> float:
        """The snapshot read over HTTP and parsed, nothing written: the mirror's ceiling."""
        import httpx

        started = time.monotonic()
        headers = {"authorization": f"Bearer {self.token}"}
        url = self.url + "models/customers.customer/instances/?limit=5000"
        rows = 0
        with httpx.Client(timeout=60) as client:
            while url:
                page = client.get(url, headers=headers).json()
                rows += len(page["instances"])
                url = page["next"]
        if rows != self.args.rows:
            raise SystemExit(f"read {rows} rows")
        return time.monotonic() - started

    def check(self) -> None:
        query = (
            "SELECT count(*), md5(string_agg({id} || ':' || {name} || ':' || "
            "coalesce({country}, '-'), ',' ORDER BY {id})) FROM {table}"
        )
        source = self.sql(
            self.pub_db,
            query.format(id="id", name="name", country="country_id", table="customers_customer"),
        )
        copy = self.sql(
            self.sub_db,
            query.format(
                id="remote_id", name="name", country="country", table="billing_customercountry"
            ),
        )
        if source != copy:
            raise SystemExit(f"the mirror differs from the source: {source} != {copy}")

    def dump_restore(self) -> float:
        args = ["-h", self.server.get("host", "127.0.0.1"), "-p", self.server.get("port", "5432"),
                "-U", self.server.get("user", "postgres")]  # fmt: skip
        env = {**os.environ}
        if self.server.get("password"):
            env["PGPASSWORD"] = self.server["password"]
        started = time.monotonic()
        dump = subprocess.Popen(
            ["pg_dump", *args, "--no-owner", "--no-privileges", "-t", "customers_customer",
             "-d", self.pub_db],
            stdout=subprocess.PIPE, env=env,
        )  # fmt: skip
        restore = subprocess.run(
            ["psql", *args, "-q", "-d", self.dump_db],
            stdin=dump.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        dump.wait()
        elapsed = time.monotonic() - started
        count = self.sql(self.dump_db, "SELECT count(*) FROM customers_customer")[0][0]
        if dump.returncode or restore.returncode or count != self.args.rows:
            raise SystemExit(f"pg_dump | psql failed ({count} rows copied)")
        return elapsed

    def lag(self) -> list[float]:
        """Commit-to-visible lag of single-row updates at --rate a second."""
        self.start(
            [sys.executable, str(SUBSCRIBER / "manage.py"), "pubsubpull_worker", "--threads", "2"],
            DJANGO_SETTINGS_MODULE="subscriber.settings",
            PUBSUBPULL_OVERRIDES=json.dumps({"PULL_WAIT": 10.0, "SWEEP_INTERVAL": 0.5}),
        )
        self.manage(
            SUBSCRIBER,
            "shell",
            "-c",
            "from billing.mirrors import customers; customers.pull(page_size=5000)",
            DJANGO_SETTINGS_MODULE="subscriber.settings",
        )
        time.sleep(2.0)  # the worker takes the cursor and starts its long poll
        total = int(self.args.rate * self.args.seconds)
        committed: dict[int, float] = {}
        seen: dict[int, float] = {}
        finished = threading.Event()

        # A commit waits for its WAL flush (a few ms here), so one connection
        # cannot make 500 a second: WRITERS connections share the schedule.
        started = time.monotonic() + 0.5

        def write(first: int):
            with psycopg.connect(self.dsn(self.pub_db), autocommit=True) as conn:
                for n in range(first, total + 1, WRITERS):
                    pause = started + n / self.args.rate - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    conn.execute(
                        "UPDATE customers_customer SET name = %s WHERE id = %s", [f"lag {n}", n]
                    )
                    committed[n] = time.monotonic()

        writers = [threading.Thread(target=write, args=(w + 1,)) for w in range(WRITERS)]
        for writer in writers:
            writer.start()

        def join_all():
            for writer in writers:
                writer.join()
            finished.set()

        threading.Thread(target=join_all, daemon=True).start()
        deadline = None
        with psycopg.connect(self.dsn(self.sub_db), autocommit=True) as conn:
            low = 1
            while len(seen) < total:
                high = max(committed, default=0)
                if high >= low:
                    rows = conn.execute(
                        "SELECT remote_id FROM billing_customercountry "
                        "WHERE remote_id BETWEEN %s AND %s AND name LIKE 'lag %%'",
                        [low, high],
                    ).fetchall()
                    now = time.monotonic()
                    for (remote_id,) in rows:
                        seen.setdefault(remote_id, now)
                    while low in seen:
                        low += 1
                if finished.is_set():
                    deadline = deadline or time.monotonic() + 30
                    if time.monotonic() > deadline:
                        break
                time.sleep(0.01)
        finished.wait()
        missing = total - len(seen)
        if missing:
            raise SystemExit(f"{missing} updates never reached the mirror")
        achieved = total / (max(committed.values()) - min(committed.values()) + 1e-9)
        self.achieved_rate = achieved
        return [seen[n] - committed[n] for n in range(1, total + 1)]


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * p), len(ordered) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rows, 5 s of updates")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--rate", type=float, default=500.0, help="updates a second")
    parser.add_argument("--seconds", type=float, default=None, help="of updates")
    parser.add_argument("--server-workers", type=int, default=2)
    parser.add_argument("--db-prefix", default="bench_mirror")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    args = parser.parse_args()
    args.rows = args.rows or (100_000 if args.quick else 1_000_000)
    args.seconds = args.seconds or (5.0 if args.quick else 20.0)

    bench = Bench(args)
    print(f"mirror benchmark: {args.rows:,} rows; lag at {args.rate:g} updates/s", flush=True)
    try:
        bench.create_databases()
        fill = bench.fill()
        print(f"  filled the publisher in {fill:.1f} s", flush=True)
        bench.token = bench.manage(
            PUBLISHER, "pubsubpull_token", "create", "billing", "--models", "customers.customer",
            DJANGO_SETTINGS_MODULE="publisher.settings",
        ).split()[-1]  # fmt: skip
        bench.serve()
        dump = bench.dump_restore()
        print(f"  pg_dump | psql       {dump:7.1f} s  {args.rows / dump:10,.0f} rows/s", flush=True)
        read = bench.read_only()
        print(
            f"  snapshot read only   {read:7.1f} s  {args.rows / read:10,.0f} rows/s"
            f"   {read / dump:.1f}x dump/restore (HTTP + JSON, nothing written)",
            flush=True,
        )
        mirror = bench.mirror()
        bench.check()
        print(
            f"  mirror (fresh)       {mirror:7.1f} s  {args.rows / mirror:10,.0f} rows/s"
            f"   {mirror / dump:.1f}x dump/restore (target <= 5x)",
            flush=True,
        )
        lags = bench.lag()
        p50, p99 = percentile(lags, 0.5) * 1000, percentile(lags, 0.99) * 1000
        print(
            f"  lag at {bench.achieved_rate:,.0f} updates/s for {args.seconds:g} s: "
            f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {max(lags) * 1000:.0f} ms "
            f"(target p99 < 1000 ms; mean {statistics.mean(lags) * 1000:.0f} ms)",
            flush=True,
        )
    finally:
        bench.stop()
        if not args.keep:
            bench.drop_databases()


if __name__ == "__main__":
    main()
