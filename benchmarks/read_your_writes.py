"""How long a service waits to read its own write from its mirror: ``Mirror.wait_for``.

Run from the repository root, after ``pip install -e '.[bench]'``::

    python benchmarks/read_your_writes.py            # 300 waits a mode, pull and push
    python benchmarks/read_your_writes.py --quick    # 100 waits a mode

Two real services on the server named by ``DATABASE_URL`` (default
``postgres://postgres@127.0.0.1:5432/postgres``), each on a database of its own
that the script creates and drops: the publisher test project ("customers",
served by gunicorn, or by ``runserver`` without the bench extra) and the
subscriber test project ("billing", whose ``billing.mirrors.customers``
mirrors each customer's name and country).

While ``--rate`` background single-row UPDATEs a second (default 200) are
committed at the publisher, a billing process (``manage.py shell``) makes
``--waits`` requests, ``--every`` seconds apart: each PUTs a new name to one
customer at the publisher over HTTP, takes the response's
``Pubsubpull-Position`` header, calls ``customers.wait_for(position)`` and
then checks that its copy shows the new name. The wait measured is the time
from the publisher's response to ``wait_for`` returning; p50/p99/max are
printed per mode:

- ``pull``: billing's worker follows the feed (long poll, woken by NOTIFY);
- ``push``: the publisher's worker delivers to billing's receiver (served by
  ``runserver``), billing subscribed with ``customers.subscribe()``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.mirror import PUBLISHER, SUBSCRIBER, Bench, free_port, percentile

WRITERS = 4
MEASURED = 20  # customers 1..MEASURED take the measured writes, the rest the background

# Runs in billing's Django (manage.py shell): the billing request of the docs.
_MEASURE = """
import json, sys, time
import httpx
from django.conf import settings
from billing.mirrors import customers
from billing.models import CustomerCountry

site = settings.CUSTOMERS_URL.removesuffix("pubsubpull/")
waits, wrong, missing = [], 0, 0
with httpx.Client(timeout=30) as client:
    for n in range({waits}):
        pk = n % {measured} + 1
        name = "ryw {mode} %d" % n
        answer = client.put(f"{{site}}customers/{{pk}}/", json={{"name": name}})
        answered = time.monotonic()
        position = answer.headers.get("Pubsubpull-Position")
        if answer.status_code != 200 or position is None:
            missing += 1
            continue
        customers.wait_for(position, timeout=30)
        waits.append(time.monotonic() - answered)
        if CustomerCountry.objects.get(remote_id=pk).name != name:
            wrong += 1
        time.sleep({every})
print("RESULT " + json.dumps({{"waits": waits, "wrong": wrong, "missing": missing}}))
"""


class ReadYourWrites(Bench):
    def background(self, stop: threading.Event) -> list[threading.Thread]:
        """``--rate`` single-row UPDATEs a second on the customers not measured."""
        rate, rows = self.args.rate, self.args.rows
        self.background_done = 0

        def write(first: int):
            rng = random.Random(first)
            with psycopg.connect(self.dsn(self.pub_db), autocommit=True) as conn:
                started = time.monotonic()
                n = first
                while not stop.is_set():
                    pause = started + n / rate - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    pk = rng.randint(MEASURED + 1, rows)
                    conn.execute(
                        "UPDATE customers_customer SET name = %s WHERE id = %s",
                        [f"background {n}", pk],
                    )
                    self.background_done += 1
                    n += WRITERS

        threads = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
        for thread in threads:
            thread.start()
        return threads

    def billing_shell(self, code: str) -> str:
        return self.manage(
            SUBSCRIBER, "shell", "-c", code, DJANGO_SETTINGS_MODULE="subscriber.settings"
        )

    def measure(self, mode: str) -> dict:
        stop = threading.Event()
        threads = self.background(stop)
        started = time.monotonic()
        try:
            out = self.billing_shell(
                _MEASURE.format(
                    waits=self.args.waits, measured=MEASURED, mode=mode, every=self.args.every
                )
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        elapsed = time.monotonic() - started
        result = json.loads(out.split("RESULT ", 1)[1])
        result["rate"] = self.background_done / elapsed
        return result

    def pull_mode(self) -> None:
        self.start(
            [sys.executable, str(SUBSCRIBER / "manage.py"), "pubsubpull_worker", "--threads", "2"],
            DJANGO_SETTINGS_MODULE="subscriber.settings",
            PUBSUBPULL_OVERRIDES=json.dumps({"PULL_WAIT": 10.0, "SWEEP_INTERVAL": 0.5}),
        )
        self.billing_shell("from billing.mirrors import customers; customers.pull(page_size=5000)")
        self.wait_until_caught_up()

    def wait_until_caught_up(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            count = self.sql(self.sub_db, "SELECT count(*) FROM billing_customercountry")[0][0]
            if count == self.args.rows:
                return
            time.sleep(0.2)
        raise SystemExit("billing's mirror did not catch up")

    def push_mode(self) -> None:
        # Billing's pull worker goes; its copy starts again, by push.
        worker = self.processes.pop()
        worker.terminate()
        try:
            worker.wait(30)  # it may be in a long poll
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        self.sql(
            self.sub_db,
            "TRUNCATE pubsubpull_pullcursor, billing_customercountry, pubsubpull_mirrortombstone, "
            "pubsubpull_mirrorseen CASCADE",
        )
        port = free_port()
        # Its request log goes nowhere (one line a notification).
        self.processes.append(
            subprocess.Popen(
                [sys.executable, str(SUBSCRIBER / "manage.py"), "runserver", "--noreload",
                 f"127.0.0.1:{port}"],
                env=self.env(DJANGO_SETTINGS_MODULE="subscriber.settings"),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        self.start(
            [sys.executable, str(PUBLISHER / "manage.py"), "pubsubpull_worker", "--threads", "2"],
            DJANGO_SETTINGS_MODULE="publisher.settings",
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                import httpx

                httpx.get(f"http://127.0.0.1:{port}/hooks/customers/", timeout=1)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise SystemExit("billing's server did not start") from None
                time.sleep(0.2)
        self.billing_shell(
            "from billing.mirrors import customers; "
            f"customers.subscribe('http://127.0.0.1:{port}/hooks/customers/')"
        )
        self.wait_until_caught_up()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 waits a mode")
    parser.add_argument("--waits", type=int, default=None, help="measured requests a mode")
    parser.add_argument("--every", type=float, default=0.05, help="seconds between them")
    parser.add_argument("--rate", type=float, default=200.0, help="background changes/s")
    parser.add_argument("--rows", type=int, default=2000, help="customers")
    parser.add_argument("--modes", nargs="+", default=["pull", "push"], choices=["pull", "push"])
    parser.add_argument("--server-workers", type=int, default=2)
    parser.add_argument("--db-prefix", default="bench_ryw")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    args = parser.parse_args()
    args.waits = args.waits or (100 if args.quick else 300)

    bench = ReadYourWrites(args)
    print(
        f"read-your-writes benchmark: {args.waits} waits a mode, "
        f"{args.rate:g} background changes/s",
        flush=True,
    )
    try:
        bench.create_databases()
        bench.fill()
        bench.token = bench.manage(
            PUBLISHER, "pubsubpull_token", "create", "billing", "--models", "customers.customer",
            DJANGO_SETTINGS_MODULE="publisher.settings",
        ).split()[-1]  # fmt: skip
        bench.serve()
        for mode in ("pull", "push"):
            if mode == "pull" or "push" in args.modes:
                getattr(bench, f"{mode}_mode")()
            if mode not in args.modes:
                continue
            result = bench.measure(mode)
            waits = result["waits"]
            if result["wrong"] or result["missing"] or not waits:
                raise SystemExit(
                    f"{mode}: {result['wrong']} stale reads, "
                    f"{result['missing']} responses without a position"
                )
            p50, p99 = percentile(waits, 0.5) * 1000, percentile(waits, 0.99) * 1000
            print(
                f"  {mode:4} wait after the response ({len(waits)} requests, "
                f"{result['rate']:.0f} background changes/s): p50 {p50:.1f} ms, "
                f"p99 {p99:.1f} ms, max {max(waits) * 1000:.1f} ms "
                f"(mean {statistics.mean(waits) * 1000:.1f} ms); every read saw its write",
                flush=True,
            )
    finally:
        bench.stop()
        if not args.keep:
            bench.drop_databases()


if __name__ == "__main__":
    main()
