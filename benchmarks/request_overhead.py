"""What RequestMiddleware costs a web service: requests/s with and without it.

Two gunicorn servers run the same service (benchmarks/request_overhead_site.py),
one with pubsubpull's RequestMiddleware and one without, on one fresh database.
A load client on 127.0.0.1 drives a read-only view (one SELECT) and a writing
view (one ORM update of a published table) on each, in interleaved rounds of
fixed length (with, without, without, with; then the other way round), so
both see the same drift in the machine's load. It prints each round's
requests/s and the median ratio with/without per view.

Targets: the read-only view keeps at least 97% of its throughput, the writing
view at least 85%.

    .venv/bin/pip install -e ".[bench]"
    .venv/bin/python benchmarks/request_overhead.py [--rounds 15] [--seconds 1]

DATABASE_URL names the server (else it is found as ./runtests.sh does); the
benchmark creates and drops its own database, BENCH_DB_NAME (default
pubsubpull_bench_request). --check exits 1 when a target is missed.

--in-process leaves HTTP out: two worker processes (with and without the
middleware) call the site's WSGI handler directly, and it prints the CPU
time per request of each (the request's thread, its PostgreSQL backend, and
everything else: the status writer and its backend), medians of interleaved
rounds. Steadier than requests/s on a shared machine; for finding where time
goes.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"read": 0.97, "write": 0.85}
VIEWS = {"read": ("GET", "/read/"), "write": ("PUT", "/write/")}


def database_url() -> str:
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    found = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "postgres.py")],
        check=True,
        capture_output=True,
        text=True,
    )
    return found.stdout.strip()


def environment(db_name: str, url: str, middleware: bool | None = None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT / "benchmarks"), str(ROOT / "test-projects" / "publisher"), str(ROOT)]
    env.update(
        DATABASE_URL=url,
        PUBLISHER_DB_NAME=db_name,
        DJANGO_SETTINGS_MODULE="request_overhead_site",
        DJANGO_DEBUG="0",
        PYTHONPATH=os.pathsep.join([*paths, env.get("PYTHONPATH", "")]),
    )
    if middleware is not None:
        env["BENCH_MIDDLEWARE"] = "1" if middleware else "0"
    return env


def application_name(middleware: bool) -> str:
    return f"request_overhead_{'with' if middleware else 'without'}"


def cpu_ns(pids: set[int]) -> int:
    """CPU time used so far by the threads of ``pids`` (Linux schedstat), in ns."""
    total = 0
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, ValueError, IndexError):  # gone meanwhile
                total += int(stat.read_text().split()[0])
    return total


def prepare_database(db_name: str, url: str) -> None:
    """A fresh database, migrated, with the customers the views use."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{db_name}"')
    setup = (
        "import django; django.setup()\n"
        "from django.core.management import call_command\n"
        "call_command('migrate', verbosity=0)\n"
        "from customers.models import Customer\n"
        "from request_overhead_site import CUSTOMERS\n"
        "Customer.objects.bulk_create("
        "[Customer(id=i, name=f'customer {i}') for i in range(1, CUSTOMERS + 1)])\n"
    )
    subprocess.run([sys.executable, "-c", setup], env=environment(db_name, url), check=True)


def drop_database(db_name: str, url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One gunicorn serving the benchmark site, with or without the middleware."""

    def __init__(self, db_name: str, url: str, middleware: bool, workers: int):
        self.name = "with" if middleware else "without"
        self.application_name = application_name(middleware)
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "django.core.wsgi:get_wsgi_application()",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                str(workers),
                "--log-level",
                "warning",
            ],
            env=environment(db_name, url, middleware),
            cwd=ROOT,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"gunicorn ({self.name} middleware) exited")
            try:
                if request(self.port, "GET", "/read/") == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"gunicorn ({self.name} middleware) did not answer in {timeout} s")

    def pids(self, monitor) -> set[int]:
        """The gunicorn workers and the PostgreSQL backends serving them."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = {int(pid) for pid in children.read_text().split()}
        backends = monitor.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            [self.application_name],
        )
        return pids | {pid for (pid,) in backends}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def request(port: int, method: str, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=b"" if method == "PUT" else None)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def load(port: int, view: str, seconds: float, clients: int) -> tuple[int, float]:
    """How many requests ``clients`` concurrent clients get done in about ``seconds``.

    Returns the count and the exact time it took.
    """
    method, path = VIEWS[view]
    counts = [0] * clients
    failures: list[str] = []
    start = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        start.wait()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            status = request(port, method, path)
            if status != 200:
                failures.append(f"{method} {path} answered {status}")
                return
            counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.monotonic()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    if failures:
        raise SystemExit(failures[0])
    return sum(counts), elapsed


def in_process_worker(middleware: bool) -> None:
    """Serve "view count" lines on stdin: run the requests, print their CPU as JSON."""
    import json

    import django

    django.setup()
    from django.core.handlers.wsgi import WSGIHandler
    from django.db import connection
    from django.test import RequestFactory

    handler, factory = WSGIHandler(), RequestFactory()

    def start_response(status, headers, exc_info=None):
        assert status.startswith("200"), status

    def one(view: str) -> None:
        method, path = VIEWS[view]
        request = factory.generic(method, path, b"", REMOTE_ADDR="127.0.0.1")
        response = handler(request.environ, start_response)
        b"".join(response)
        response.close()

    for _ in range(200):  # warm up: imports, connections, plans
        for view in VIEWS:
            one(view)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, pid = pg_backend_pid() FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            [application_name(middleware)],
        )
        backends = cursor.fetchall()
    mine = next(pid for pid, own in backends if own)
    own_stat = open(f"/proc/{mine}/schedstat", "rb")  # noqa: SIM115 (read per request)

    def own_backend() -> int:
        own_stat.seek(0)
        return int(own_stat.read().split()[0])

    for line in sys.stdin:
        view, count = line.split()
        thread, backend = [], []
        pids = {pid for pid, _ in backends}
        before = time.process_time_ns() + cpu_ns(pids)
        for _ in range(int(count)):
            t0, b0 = time.thread_time_ns(), own_backend()
            one(view)
            thread.append(time.thread_time_ns() - t0)
            backend.append(own_backend() - b0)
        if middleware:
            from pubsubpull.capture.status import status_writer

            status_writer._queue.join()  # its batches as they come, no hurry
        total = (time.process_time_ns() + cpu_ns(pids) - before) / int(count)
        print(
            json.dumps(
                {
                    "python": statistics.median(thread) / 1e3,
                    "postgresql": statistics.median(backend) / 1e3,
                    "other": (total - statistics.mean(thread) - statistics.mean(backend)) / 1e3,
                    "total": total / 1e3,
                }
            ),
            flush=True,
        )


def in_process(args, db_name: str, url: str) -> None:
    import json

    count = max(int(args.seconds * 400), 50)
    workers = {
        name: subprocess.Popen(
            [sys.executable, __file__, "--in-process-worker", name],
            env=environment(db_name, url, name == "with"),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("with", "without")
    }
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for n in range(args.rounds):
            order = ["with", "without"] if n % 2 == 0 else ["without", "with"]
            for view in VIEWS:
                for name in (*order, *order[::-1]):
                    workers[name].stdin.write(f"{view} {count}\n")
                    workers[name].stdin.flush()
                    reply = workers[name].stdout.readline()
                    if not reply:
                        raise SystemExit(f"the in-process worker ({name}) exited")
                    results.setdefault((view, name), []).append(json.loads(reply))
            print(f"round {n + 1:2} done", flush=True)
    finally:
        for worker in workers.values():
            worker.stdin.close()
            worker.wait(timeout=30)
    print()
    for view in VIEWS:
        for name in ("with", "without"):
            rows = results[view, name]
            cells = ", ".join(
                f"{key} {statistics.median(row[key] for row in rows):6.0f}"
                for key in ("python", "postgresql", "other", "total")
            )
            print(f"{view:5} {name:7}  us per request: {cells}")
        extra = {
            key: statistics.median(
                w[key] - o[key]
                for w, o in zip(results[view, "with"], results[view, "without"], strict=True)
            )
            for key in ("python", "postgresql", "other", "total")
        }
        print(f"{view:5} extra    " + ", ".join(f"{k} {v:+.0f}" for k, v in extra.items()))
    print(
        "(python, postgresql: medians per request of the request's thread and its backend;"
        " other: the rest of the process and its backends, the status writer's work)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="per slice; a round is 4 slices per view"
    )
    parser.add_argument("--clients", type=int, default=2, help="concurrent connections")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers per server")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--in-process", action="store_true", help="no HTTP: CPU per request, see the doc"
    )
    parser.add_argument("--in-process-worker", choices=["with", "without"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process_worker:
        in_process_worker(args.in_process_worker == "with")
        return 0

    import psycopg

    url = database_url()
    db_name = os.environ.get("BENCH_DB_NAME", "pubsubpull_bench_request")
    print(
        f"request_overhead: {args.rounds} rounds of 2 x 4 slices of {args.seconds:g} s, "
        f"{args.clients} clients, {args.workers} gunicorn worker(s) per server; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    prepare_database(db_name, url)
    if args.in_process:
        try:
            in_process(args, db_name, url)
        finally:
            drop_database(db_name, url)
        return 0
    servers = [Server(db_name, url, True, args.workers), Server(db_name, url, False, args.workers)]
    monitor_url = psycopg.conninfo.make_conninfo(url, dbname=db_name)
    # Per (view, server): requests/s and CPU per request (web workers plus
    # their PostgreSQL backends) of each round.
    rates: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    try:
        for server in servers:
            server.wait_ready()
        for server in servers:  # warm up: imports, connections, plans
            for view in VIEWS:
                load(server.port, view, 1.0, args.clients)
        with psycopg.connect(monitor_url, autocommit=True) as monitor:
            for n in range(args.rounds):
                # ABBA, then BAAB: both servers see the same drift in load.
                pair = servers if n % 2 == 0 else servers[::-1]
                line = []
                for view in VIEWS:
                    done = dict.fromkeys(("with", "without"), 0)
                    took = dict.fromkeys(("with", "without"), 0.0)
                    used = dict.fromkeys(("with", "without"), 0)
                    for server in (pair[0], pair[1], pair[1], pair[0]):
                        pids = server.pids(monitor)
                        before = cpu_ns(pids)
                        count, elapsed = load(server.port, view, args.seconds, args.clients)
                        used[server.name] += cpu_ns(pids) - before
                        done[server.name] += count
                        took[server.name] += elapsed
                    for name in done:
                        rates.setdefault((view, name), []).append(done[name] / took[name])
                        cpu.setdefault((view, name), []).append(used[name] / done[name] / 1e3)
                    w, o = rates[view, "with"][-1], rates[view, "without"][-1]
                    cw, co = cpu[view, "with"][-1], cpu[view, "without"][-1]
                    line.append(
                        f"{view}: {w:5.0f} / {o:5.0f} req/s = {w / o:.3f},"
                        f" CPU {cw:5.0f} / {co:5.0f} us"
                    )
                print(f"round {n + 1:2}: " + "   ".join(line), flush=True)
    finally:
        for server in servers:
            server.stop()
        drop_database(db_name, url)

    missed = []
    print()
    for view in VIEWS:
        with_, without = rates[view, "with"], rates[view, "without"]
        ratio = statistics.median(w / o for w, o in zip(with_, without, strict=True))
        cpu_ratio = statistics.median(
            o / w for w, o in zip(cpu[view, "with"], cpu[view, "without"], strict=True)
        )
        verdict = "ok" if ratio >= TARGETS[view] else "MISSED"
        if ratio < TARGETS[view]:
            missed.append(view)
        print(
            f"{view:5}  median {statistics.median(with_):5.0f} req/s with, "
            f"{statistics.median(without):5.0f} without: ratio {ratio:.3f} "
            f"(target {TARGETS[view]:.2f}: {verdict}); CPU per request "
            f"{statistics.median(cpu[view, 'with']):5.0f} us with, "
            f"{statistics.median(cpu[view, 'without']):5.0f} without: ratio {cpu_ratio:.3f}"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
