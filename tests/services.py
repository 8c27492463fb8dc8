"""The billing service (test-projects/subscriber) as real processes on its own database.

The customers service is pytest-django's ``live_server`` in the test process
(its test database); billing runs as ``manage.py runserver`` and ``manage.py
pubsubpull_worker`` subprocesses against a database of its own, created and
migrated once per test session and dropped at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

MANAGE = Path(__file__).resolve().parent.parent / "test-projects" / "subscriber" / "manage.py"

# Short timings for the billing worker: leases of seconds, quick retries.
FAST_PULL = {
    "PULL_LEASE": 3.0,
    "PULL_WAIT": 1.0,
    "PULL_BUDGET": 5.0,
    "PULL_RETRY_BASE": 0.2,
    "PULL_RETRY_MAX": 1.0,
    "SWEEP_INTERVAL": 0.2,
}

TABLES = [
    "billing_customercountry",
    "billing_customercard",
    "pubsubpull_mirrorseen",
    "pubsubpull_parkedevent",
    "billing_welcome",
    "pubsubpull_pullcursor",
    "pubsubpull_receivedbatch",
    "pubsubpull_remotesubscription",
    "pubsubpull_mirrortombstone",
    "django_tasks_database_dbtaskresult",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s")
        time.sleep(interval)


def _measuring() -> bool:
    """Whether this test run is measured by coverage (its subprocesses are too)."""
    coverage = sys.modules.get("coverage")
    return coverage is not None and coverage.Coverage.current() is not None


class Process:
    """A subprocess in its own process group, its output in a file (shown on failure)."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="billing-", suffix=".log")  # noqa: SIM115
        self.popen = subprocess.Popen(
            args, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, mid-whatever it was doing."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.kill()
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


class Billing:
    """The billing service: its database, its web server and worker, its shell."""

    def __init__(self, server_dsn: dict[str, str], name: str):
        self.name = name
        self.dsn = psycopg.conninfo.make_conninfo(**{**server_dsn, "dbname": name})
        self.customers_url = ""
        self.customers_token = ""
        self.overrides: dict[str, Any] = dict(FAST_PULL)
        self.extra_env: dict[str, str] = {}
        self.processes: list[Process] = []
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "subscriber.settings",
            "SUBSCRIBER_DB_NAME": self.name,
            "CUSTOMERS_URL": self.customers_url,
            "CUSTOMERS_TOKEN": self.customers_token,
            "PUBSUBPULL_OVERRIDES": json.dumps(self.overrides),
            "DJANGO_DEBUG": "0",
            **self.extra_env,
        }

    def manage(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [sys.executable, str(MANAGE), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode:
            raise AssertionError(f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def shell(self, code: str) -> str:
        """Run Python in billing's Django (its settings, its database)."""
        return self.manage("shell", "-v", "0", "-c", code)

    def sql(self, query: str, params: Any = None) -> list[tuple]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def reset(self) -> None:
        self.sql(f"TRUNCATE {', '.join(TABLES)} CASCADE")

    def start_worker(self) -> Process:
        process = Process([sys.executable, str(MANAGE), "pubsubpull_worker", "--threads", "2"],
                          self.env())  # fmt: skip
        process.worker = True
        self.processes.append(process)
        return process

    def start_server(self) -> Process:
        process = Process(
            [sys.executable, str(MANAGE), "runserver", "--noreload", f"127.0.0.1:{self.port}"],
            self.env(),
        )
        self.processes.append(process)

        def up():
            if process.popen.poll() is not None:
                raise AssertionError(f"billing's server died:\n{process.output()}")
            try:
                return httpx.get(self.url + "/hooks/users/", timeout=1).status_code == 405
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=30)
        return process

    def stop_all(self) -> None:
        # Workers lose nothing to a kill (that is tested), and it is quicker;
        # but a killed process saves no coverage data, so under coverage
        # they are stopped with SIGTERM like the rest.
        kill_workers = not _measuring()
        for process in self.processes:
            process.stop(kill=kill_workers and getattr(process, "worker", False))
        self.processes.clear()

    def outputs(self) -> str:
        return "\n".join(p.output() for p in self.processes if not p.log.closed)


class Switch:
    """A forwarding proxy to the publisher that can be taken down (connection refused)."""

    def __init__(self, target: str):
        self.target = target.rstrip("/")
        self.port = free_port()
        self.server: ThreadingHTTPServer | None = None
        self.is_up = False
        self.client = httpx.Client(timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        switch = self

        class Forward(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                if not switch.is_up:
                    # Down: drop kept-alive connections too, without an answer.
                    self.close_connection = True
                    return
                upstream = switch.client.get(
                    switch.target + self.path,
                    headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
                )
                if not switch.is_up:
                    # Taken down while this request waited upstream (a long poll): the
                    # answer is lost with the publisher, as it would be for real.
                    self.close_connection = True
                    return
                body = upstream.content.replace(
                    switch.target.encode(), switch.url.encode()
                )  # links point back through the switch
                self.send_response(upstream.status_code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.is_up = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Forward)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        self.is_up = False
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


# -- fixtures: import them into a test module that runs billing ------------------


@pytest.fixture(scope="module")
def billing_service():
    """Billing's database, created and migrated once per test module."""
    server = psycopg.conninfo.conninfo_to_dict(
        os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    )
    server.pop("dbname", None)
    server = {k: str(v) for k, v in server.items()}
    base = os.environ.get("SUBSCRIBER_DB_NAME", "subscriber")
    name = f"test_{base}_{os.getpid()}"
    admin = psycopg.conninfo.make_conninfo(**server, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    billing = Billing(server, name)
    try:
        billing.manage("migrate", "-v", "0")
        yield billing
    finally:
        billing.stop_all()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def billing(billing_service, live_server):
    """Billing, emptied, pointed at the customers service (live_server) with a token."""
    from pubsubpull.publisher import longpoll
    from pubsubpull.publisher.api.auth import create_token

    billing_service.reset()
    billing_service.customers_url = live_server.url + "/pubsubpull/"
    billing_service.customers_token = create_token("billing", ["*"])[1]
    billing_service.overrides = dict(FAST_PULL)
    billing_service.extra_env = {}
    yield billing_service
    print(billing_service.outputs())  # shown when the test failed
    billing_service.stop_all()
    longpoll.stop_listening()  # live_server's long polls: let the test database go
