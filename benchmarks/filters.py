"""Filters benchmark: a subscription filtered to 1% of a backlog against an unfiltered one.

    .venv/bin/python benchmarks/filters.py             # 100,000 changes, about a minute
    .venv/bin/python benchmarks/filters.py --changes 20000   # shorter

One publisher database (``PUBLISHER_DB_NAME``, default
pubsubpull_bench_filters, on ``DATABASE_URL``; dropped and created anew), one
``pubsubpull_worker`` process (default settings), and an HTTP receiver on
127.0.0.1 in this process (the one of benchmarks/delivery.py). The database
is dropped at the end unless ``--keep``.

A backlog of ``--changes`` inserts of customers, one in a hundred with an
e-mail address at vip.example, is written while the subscriptions are paused.
Then, one at a time, a subscription is resumed and timed until its receiver
has every change it is due and its position is past the last change:

- ``all``: every change (the unfiltered baseline);
- ``vip``: ``{"where": {"email__endswith": "@vip.example"}}``, 1% of them.

Both with the default batch_size. It prints both times and their ratio
(target: the filtered one at least 10x faster), and the plan of one filtered
page read at the start of the backlog (EXPLAIN ANALYZE), to show that it is
one range of the (txid, id) index, cut after FILTER_SCAN changes.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "test-projects" / "publisher"), str(ROOT)]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "publisher.settings")
os.environ.setdefault("PUBLISHER_DB_NAME", "pubsubpull_bench_filters")

from benchmarks import delivery  # noqa: E402  (after the settings above)

CUSTOMER = "customers.customer"
VIP = {CUSTOMER: {"where": {"email__endswith": "@vip.example"}}}


def write_backlog(changes: int) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for start in range(0, changes, 10_000):
            cursor.execute(
                "INSERT INTO customers_customer (name, email, newsletter, notes, created, updated) "
                "SELECT 'b' || n, CASE WHEN n %% 100 = 0 THEN 'c' || n || '@vip.example' "
                "ELSE '' END, false, '', now(), now() FROM generate_series(%s, %s) AS n",
                [start, min(start + 10_000, changes) - 1],
            )
        cursor.execute("VACUUM ANALYZE pubsubpull_change")


def subscribe(receiver: delivery.Receiver, name: str, filters: dict | None) -> None:
    from pubsubpull.models import ServiceToken
    from pubsubpull.publisher.api.auth import create_token
    from pubsubpull.publisher.delivery.subscriptions import subscribe as put

    token = ServiceToken.objects.filter(name="bench").first()
    if token is None:
        token, _ = create_token("bench", [CUSTOMER])
    data = {"callback": receiver.url(f"/{name}/"), "models": [CUSTOMER], "start": "beginning"}
    if filters:
        data["filters"] = filters
    put(f"token:{token.pk}", name, data)


def deliver(receiver: delivery.Receiver, name: str, due: int) -> float:
    """Resume ``name``; seconds until the receiver has ``due`` changes and it is at the end."""
    from pubsubpull.models import Change
    from pubsubpull.publisher.delivery import subscriptions as api
    from pubsubpull.publisher.delivery.models import Subscription

    last = Change.objects.order_by("txid", "id").values_list("txid", "id").last()
    subscription = Subscription.objects.get(name=name)
    began = time.perf_counter()
    api.resume(subscription)
    deadline = began + 600
    while time.perf_counter() < deadline:
        position = Subscription.objects.values_list("position_txid", "position_id").get(name=name)
        if receiver.counts.get(f"/{name}/", 0) >= due and position >= last:
            return time.perf_counter() - began
        time.sleep(0.005)
    raise SystemExit(f"{name} was not delivered within 600 s")


def filtered_page_plan() -> str:
    """EXPLAIN ANALYZE of the first filtered page of the backlog (what delivery reads)."""
    from django.db import connection

    from pubsubpull import conf, get_registration
    from pubsubpull.publisher import feed

    filters = feed.parse_filters(VIP, [CUSTOMER])
    params = {
        "txid": 0,
        "id": 0,
        "models": [CUSTOMER],
        "limit": 100,
        "scan": conf.filter_scan(),
    }
    sql = feed.page_sql({CUSTOMER: get_registration(CUSTOMER)}, filters, params)
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) " + sql, params)
        lines = [row[0] for row in cursor.fetchall()]
    keep = ("Scan", "Index Cond", "Rows Removed", "Limit", "Sort", "Execution Time")
    return "\n".join("    " + line.strip() for line in lines if any(k in line for k in keep))


def drop_database() -> None:
    import psycopg
    from django.conf import settings
    from django.db import connections

    connections.close_all()
    db = settings.DATABASES["default"]
    params = {k: str(db[k.upper()]) for k in ("host", "port", "user", "password") if db[k.upper()]}
    with psycopg.connect(**params, dbname="postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db["NAME"]}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=100_000, help="backlog (100,000)")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()

    import django

    django.setup()
    delivery.create_database()
    from django.core.management import call_command

    from pubsubpull.publisher.delivery.models import Subscription

    call_command("migrate", verbosity=0)
    delivery.reset()
    receiver = delivery.Receiver()
    subscribe(receiver, "all", None)
    subscribe(receiver, "vip", VIP)
    Subscription.objects.update(state="paused")
    write_backlog(args.changes)
    print(f"backlog: {args.changes:,} inserts, {args.changes // 100:,} of them at vip.example")
    print("one filtered page read at the start of the backlog:\n" + filtered_page_plan())
    worker = delivery.start_worker()
    try:
        vip = deliver(receiver, "vip", args.changes // 100)
        unfiltered = deliver(receiver, "all", args.changes)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
        if not args.keep:
            drop_database()
    print(
        f"unfiltered: {args.changes:,} changes delivered in {unfiltered:.2f} s; "
        f"filtered to 1%: {args.changes // 100:,} changes in {vip:.2f} s, its position past "
        f"all {args.changes:,}; ratio {unfiltered / vip:.1f}x (target >= 10x)"
    )


if __name__ == "__main__":
    main()
