"""Delivery benchmark: commit → receiver latency, and sustained delivery throughput.

    .venv/bin/python benchmarks/delivery.py            # about 2 minutes
    .venv/bin/python benchmarks/delivery.py --quick    # about 30 seconds

One publisher database (``PUBLISHER_DB_NAME``, default
pubsubpull_bench_delivery, on ``DATABASE_URL``; dropped and created anew), one ``pubsubpull_worker``
process (default settings: django-tasks-db jobs, 4 threads), and an HTTP
receiver on 127.0.0.1 in this process.

(a) Latency: one change per transaction at a steady 200 changes/s (from 4
    connections, so a slow commit does not lower the offered rate); for each
    change, the time from its commit returning to the receiver having it.
(b) Throughput: a backlog of changes written while the subscriptions are
    paused, then resumed; changes delivered per second until the receiver has
    all of them, to 1 and to 10 subscriptions (batch_size 1000).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PUBLISHER = ROOT / "test-projects" / "publisher"
sys.path[:0] = [str(PUBLISHER), str(ROOT)]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "publisher.settings")
os.environ.setdefault("PUBLISHER_DB_NAME", "pubsubpull_bench_delivery")


def create_database() -> None:
    import psycopg
    from django.conf import settings

    db = settings.DATABASES["default"]
    params = {
        "host": db["HOST"],
        "port": db["PORT"],
        "user": db["USER"],
        "password": db["PASSWORD"],
        "dbname": "postgres",
    }
    params = {k: str(v) for k, v in params.items() if v}
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db["NAME"]}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db["NAME"]}"')


class Receiver:
    """Counts changes per path and notes when each customer name arrived."""

    def __init__(self):
        self.arrived: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.last_at = 0.0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_PUT(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                now = time.perf_counter()
                # Inserts only: a TRUNCATE of a previous round may come along.
                changes = [c for c in json.loads(body)["data"]["changes"] if c["op"] == "insert"]
                with receiver.lock:
                    receiver.counts[self.path] = receiver.counts.get(self.path, 0) + len(changes)
                    receiver.last_at = now
                    for change in changes:
                        name = (change["new"] or {}).get("name")
                        if name is not None:
                            receiver.arrived.setdefault(name, now)
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def total(self) -> int:
        with self.lock:
            return sum(self.counts.values())


def reset() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE customers_customer, pubsubpull_change, pubsubpull_request, "
            "pubsubpull_subscription, pubsubpull_attempt CASCADE"
        )


def subscribe(receiver: Receiver, count: int, batch_size: int) -> None:
    from pubsubpull.models import ServiceToken
    from pubsubpull.publisher.api.auth import create_token
    from pubsubpull.publisher.delivery.subscriptions import subscribe

    # Delivery re-checks the owner's access before each batch: a real token.
    token = ServiceToken.objects.filter(name="bench").first()
    if token is None:
        token, _ = create_token("bench", ["customers.customer"])
    for n in range(count):
        subscribe(
            f"token:{token.pk}",
            f"s{n}",
            {
                "callback": receiver.url(f"/s{n}/"),
                "models": ["customers.customer"],
                "batch_size": batch_size,
            },
        )


LOG = Path(os.environ.get("TMPDIR", "/tmp")) / "pubsubpull-bench-worker.log"


def start_worker() -> subprocess.Popen:
    with open(LOG, "w") as log:
        worker = subprocess.Popen(
            [sys.executable, str(PUBLISHER / "manage.py"), "pubsubpull_worker"],
            env=os.environ.copy(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 20
    while "listening" not in LOG.read_text():
        if worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the worker did not start:\n{LOG.read_text()}")
        time.sleep(0.05)
    return worker


def _writer_connection():
    import psycopg
    from django.db import connection

    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    return psycopg.connect(**params, autocommit=True)


def latency(receiver: Receiver, seconds: float, rate: int, writers: int = 4) -> dict[str, float]:
    """Commit ``rate`` single-row transactions a second, spread over ``writers``
    connections so that a slow commit does not lower the offered rate."""
    subscribe(receiver, 1, 100)
    time.sleep(0.5)
    committed: dict[str, float] = {}
    total = int(seconds * rate)
    start = time.perf_counter() + 0.2

    def write(first: int) -> None:
        with _writer_connection() as conn:
            for n in range(first, total, writers):
                pause = start + n / rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                name = f"lat{n}"
                conn.execute(
                    "INSERT INTO customers_customer (name, email, newsletter, notes, created,"
                    " updated) VALUES (%s, '', false, '', now(), now())",
                    [name],
                )
                committed[name] = time.perf_counter()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    deadline = time.perf_counter() + 10
    while len(receiver.arrived) < total and time.perf_counter() < deadline:
        time.sleep(0.01)
    delays = sorted(
        max(receiver.arrived[name] - at, 0.0) * 1000
        for name, at in committed.items()
        if name in receiver.arrived
    )
    return {
        "changes": total,
        "rate": total / elapsed,
        "delivered": len(delays),
        "p50_ms": statistics.median(delays),
        "p99_ms": delays[int(len(delays) * 0.99) - 1],
        "max_ms": delays[-1],
    }


def throughput(receiver: Receiver, subscriptions: int, backlog: int) -> dict[str, float]:
    from django.db import connection

    from customers.models import Customer
    from pubsubpull.publisher.delivery import subscriptions as api
    from pubsubpull.publisher.delivery.models import Subscription

    reset()
    receiver.counts.clear()
    subscribe(receiver, subscriptions, 1000)
    Subscription.objects.update(state="paused")
    for start in range(0, backlog, 5000):
        Customer.objects.bulk_create(
            [Customer(name=f"b{n}") for n in range(start, min(start + 5000, backlog))]
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE pubsubpull_change")
    began = time.perf_counter()
    for subscription in Subscription.objects.all():
        api.resume(subscription)
    expected = backlog * subscriptions
    deadline = began + 300
    while receiver.total() < expected and time.perf_counter() < deadline:
        time.sleep(0.01)
    elapsed = receiver.last_at - began
    return {
        "subscriptions": subscriptions,
        "backlog": backlog,
        "delivered": receiver.total(),
        "seconds": elapsed,
        "changes_per_s": receiver.total() / elapsed,
        "per_subscription_per_s": receiver.total() / elapsed / subscriptions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (about 30 s)")
    args = parser.parse_args()
    seconds, backlog = (5, 10_000) if args.quick else (30, 50_000)

    import django

    django.setup()
    create_database()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    reset()
    receiver = Receiver()
    worker = start_worker()
    try:
        a = latency(receiver, seconds, 200)
        print(
            f"(a) latency at {a['rate']:.0f} changes/s for {seconds} s, one change per "
            f"transaction: {a['delivered']}/{a['changes']} delivered; p50 {a['p50_ms']:.1f} ms, "
            f"p99 {a['p99_ms']:.1f} ms, max {a['max_ms']:.1f} ms (target p50 <= 25, p99 <= 150)"
        )
        for count in (1, 10):
            b = throughput(receiver, count, backlog)
            print(
                f"(b) throughput, {count} subscription(s), batch_size 1000, backlog "
                f"{b['backlog']}: {b['delivered']} changes in {b['seconds']:.2f} s = "
                f"{b['changes_per_s']:,.0f} changes/s ({b['per_subscription_per_s']:,.0f} "
                "per subscription; target >= 10,000/s to one)"
            )
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()


if __name__ == "__main__":
    main()
