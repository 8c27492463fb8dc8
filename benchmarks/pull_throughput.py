"""How fast a whole table can be pulled over HTTP, and whether memory stays flat.

For each size (100,000 and 1,000,000 customers by default) it fills the
publisher's customers table (the trigger records one insert change per row),
starts the publisher as a real server process (gunicorn, two sync workers,
or ``--parts`` if more, on 127.0.0.1), and reads every row with an HTTP client
(httpx, in its own process, parsing every page with orjson as pubsubpull's
pull client does, and asking for the next page while it parses one):

- through the instances endpoint (``snapshot``: one page after another),
- through the instances endpoint split into ``--parts`` key ranges, each
  followed by its own thread (``snapshot x2``: as many pages served at once),
- through the change feed (``feed``: every insert change),

beside ``COPY (SELECT ...) TO STDOUT`` of the same rows in the same run, the
physical limit. It prints rows/s, the ratio to COPY, and the peak RSS of the
server worker and of the client.

Run it (needs the bench extra: pip install -e ".[bench]")::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        python benchmarks/pull_throughput.py [--sizes 100000 1000000] [--limit 5000] [--parts 2]
        [--capture 4]

``--capture 4`` publishes customers with capture version 4 (its own log
table, a row per 1,024 changes) instead of version 3 (a row per change in
``pubsubpull_change``): the feed line then reads that log.
``--one-row-statements`` fills the table with one INSERT a row instead of one
for all (each its own change, as an application's writes are; capture
version 4 keeps them in its table of one change a row): the feed then reads
that shape of log. A loop of a million statements takes minutes; use it with
``--sizes 100000``.

It uses its own database, PUBLISHER_DB_NAME (default bench_pull), dropped and
created anew.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PUBLISHER = ROOT / "test-projects" / "publisher"

os.environ.setdefault("PUBLISHER_DB_NAME", "bench_pull")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
os.environ["DJANGO_SETTINGS_MODULE"] = "publisher.settings"
os.environ["DJANGO_DEBUG"] = "0"
sys.path[:0] = [str(PUBLISHER), str(ROOT)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- The client: a separate process, so its peak RSS is its own ---------------------------


def client(url: str, token: str, key: str, parts: str = "1") -> None:
    """Follow ``url`` page by page; print rows and peak RSS as JSON.

    Pipelined as pubsubpull's pull client is: the next page (its URL is in
    the Link header) is fetched on a second connection while this one is
    parsed, with the pull client's parser (orjson). Every row is parsed.
    With ``parts`` above 1 the first page asks for that many key ranges, and
    each range is followed by its own thread, so as many pages are served at
    once.
    """
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from pubsubpull.client.source import parse_json

    def fetch(url: str) -> tuple[bytes, str | None]:
        response = http.get(url)
        response.raise_for_status()
        return response.content, response.links.get("next", {}).get("url")

    def follow(url: str) -> int:
        rows = 0
        with ThreadPoolExecutor(1) as fetcher:
            pending = fetcher.submit(fetch, url)
            while pending is not None:
                content, following = pending.result()
                pending = fetcher.submit(fetch, following) if following else None
                items = parse_json(content)[key]
                rows += len(items)
                if key == "changes" and not items:
                    pending = None  # caught up (the page asked for after it is not counted)
        return rows

    started = time.perf_counter()
    limits = httpx.Limits(max_connections=2 * int(parts) + 2)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(headers=headers, timeout=120, limits=limits) as http:
        if parts == "1":
            rows = follow(url)
        else:
            first = parse_json(fetch(f"{url}&parts={parts}")[0])
            starts = [first["next"], *first["parts"]]
            rows = len(first[key])
            with ThreadPoolExecutor(len(starts)) as readers:
                rows += sum(readers.map(follow, [s for s in starts if s]))
        elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"rows": rows, "seconds": elapsed, "peak_rss": peak}))


# -- The driver ---------------------------------------------------------------------------


def setup_database() -> None:
    import django
    import psycopg

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    db = settings.DATABASES["default"]
    name = db["NAME"]
    admin = psycopg.connect(
        host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname="postgres",
        password=db["PASSWORD"] or None, autocommit=True,
    )  # fmt: skip
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    call_command("migrate", verbosity=0)


_ROW = """'Customer ' || i || ' Müller-Łukasiewicz', 'customer' || i || '@example.com',
           i % 3 = 0, repeat('internal ', 10), now(), now()"""
_COLUMNS = "customers_customer (name, email, newsletter, notes, created, updated)"


def fill(rows: int, one_row_statements: bool = False) -> None:
    """``rows`` customers: one INSERT of them all, or (``one_row_statements``) one a row.

    One a row, in a loop in one transaction, is how an application's own
    writes reach the log: one change a statement (capture v4: its table of
    one change a row, statement_log.LogTable.single).
    """
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE customers_customer CASCADE")
        cursor.execute("TRUNCATE pubsubpull_log, pubsubpull_request")  # every log table
        if one_row_statements:
            cursor.execute(
                f"DO $$ BEGIN FOR i IN 1..{int(rows)} LOOP "
                f"INSERT INTO {_COLUMNS} VALUES ({_ROW}); END LOOP; END $$"
            )
        else:
            cursor.execute(
                f"INSERT INTO {_COLUMNS} SELECT {_ROW.replace('%', '%%')} "
                "FROM generate_series(1, %s) AS i",
                [rows],
            )
    connection.close()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE customers_customer")
        cursor.execute("VACUUM ANALYZE pubsubpull_change")
        for table in log_tables():
            cursor.execute(f'VACUUM ANALYZE "{table}"')


def log_tables() -> list[str]:
    """Capture version 4's log tables (``--capture 4``)."""
    from pubsubpull.publisher import feed

    return [m.name for m in feed.log_members("default", refresh=True).tables]


def install_capture(version: int) -> None:
    """Publish customers with capture ``version`` in place of what the migrations installed."""
    from django.conf import settings

    from pubsubpull import get_registration
    from pubsubpull.capture import publishing

    settings.PUBSUBPULL = {**getattr(settings, "PUBSUBPULL", {}), "CAPTURE_VERSION": version}
    publishing.install(get_registration("customers.customer"))


def copy_rate(rows: int) -> dict:
    """COPY of the same published columns, and of the same JSON, to the client."""
    from django.db import connection

    from pubsubpull import get_registration

    registration = get_registration("customers.customer")
    columns = ", ".join(f't."{c}"' for c in registration.published_columns)
    results = {}
    for name, query in {
        "copy_columns": f"COPY (SELECT {columns} FROM customers_customer AS t ORDER BY t.id) "
        "TO STDOUT",
        "copy_json": "COPY (SELECT to_jsonb(p) FROM customers_customer AS t CROSS JOIN "
        f"LATERAL (SELECT {columns}) AS p ORDER BY t.id) TO STDOUT",
    }.items():
        connection.ensure_connection()
        started = time.perf_counter()
        count = 0
        with connection.connection.cursor() as cursor, cursor.copy(query) as copy:
            for data in copy:
                count += bytes(data).count(b"\n")
        elapsed = time.perf_counter() - started
        assert count == rows, (count, rows)
        results[name] = rows / elapsed
    connection.close()
    return results


class Server:
    """gunicorn serving the publisher, and a thread sampling its worker's peak RSS."""

    def __init__(self, workers: int):
        import psutil

        self.port = free_port()
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn", "--chdir", str(PUBLISHER),
                "--workers", str(workers), "--bind", f"127.0.0.1:{self.port}", "--timeout", "300",
                "--log-level", "warning", "django.core.wsgi:get_wsgi_application()",
            ],
            env={**os.environ, "PYTHONPATH": f"{PUBLISHER}:{ROOT}"},
        )  # fmt: skip
        self.peak = 0
        self._stop = threading.Event()
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self._parent = psutil.Process(self.process.pid)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                for worker in self._parent.children():
                    self.peak = max(self.peak, worker.memory_info().rss)
            except Exception:
                pass
            time.sleep(0.05)

    def reset_peak(self) -> None:
        self.peak = 0

    def stop(self) -> None:
        self._stop.set()
        self.process.terminate()
        self.process.wait(30)


def measure(server: Server, url: str, token: str, key: str, rows: int, parts: int = 1) -> dict:
    server.reset_peak()
    output = subprocess.run(
        [sys.executable, __file__, "--client", url, token, key, str(parts)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(output)
    assert result["rows"] == rows, (result, rows)
    return {
        "rate": rows / result["seconds"],
        "client_rss": result["peak_rss"],
        "server_rss": server.peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--limit", type=int, default=5000, help="items per page")
    parser.add_argument(
        "--parts", type=int, default=2, help="key ranges read at once (the snapshot xN line)"
    )
    parser.add_argument(
        "--capture", type=int, default=3, choices=[3, 4],
        help="the capture version customers are published with (the feed reads its log)",
    )  # fmt: skip
    parser.add_argument(
        "--one-row-statements", action="store_true",
        help="fill with one INSERT a row (the log as single-row writes make it)",
    )  # fmt: skip
    parser.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(*args.client)
        return

    setup_database()
    install_capture(args.capture)
    from django.db import connection

    from pubsubpull.publisher.api.auth import create_token

    token = create_token(f"bench-{time.time()}", ["*"])[1]
    connection.close()
    mb = 1024 * 1024
    print(f"{'rows':>9}  {'what':<10} {'rows/s':>9} {'÷ COPY':>7} {'server RSS':>11} "
          f"{'client RSS':>11}")  # fmt: skip
    for rows in args.sizes:
        fill(rows, args.one_row_statements)
        copies = copy_rate(rows)
        server = Server(max(2, args.parts))
        base = f"http://127.0.0.1:{server.port}/pubsubpull"
        instances = f"{base}/models/customers.customer/instances/?limit={args.limit}"
        try:
            results = {
                "snapshot": measure(server, instances, token, "instances", rows),
                f"snapshot x{args.parts}": measure(
                    server, instances, token, "instances", rows, args.parts
                ),
                "feed": measure(
                    server, f"{base}/changes/?limit={args.limit}", token, "changes", rows
                ),
            }
        finally:
            server.stop()
        for name, rate in copies.items():
            print(f"{rows:>9}  {name:<10} {rate:>9,.0f}")
        for name, result in results.items():
            ratio = result["rate"] / copies["copy_columns"]
            print(
                f"{rows:>9}  {name:<10} {result['rate']:>9,.0f} {ratio:>7.2f} "
                f"{result['server_rss'] / mb:>8.0f} MB {result['client_rss'] / mb:>8.0f} MB"
            )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
