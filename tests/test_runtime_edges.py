"""The runtime's edges: a worker that loses its database, the long-poll API's own limits.

The worker runs as ``manage.py pubsubpull_worker`` in a subprocess whose
database is reached through a TCP relay the test takes down (every connection
cut, new ones refused) and brings back, as a PostgreSQL restart or a network
partition would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from customers.models import Customer
from pubsubpull import conf
from pubsubpull.jobs.models import WorkerHeartbeat
from pubsubpull.publisher import feed, longpoll

from .delivery_helpers import FAST, make_subscription, use_fast_settings, wait_until
from .receivers import Receiver

MANAGE = Path(__file__).resolve().parent.parent / "test-projects" / "publisher" / "manage.py"


class Relay:
    """A TCP relay to PostgreSQL that can be taken down: its connections cut, new ones refused."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server: socket.socket | None = None
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()

    def up(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self.server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def down(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # taken down
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.mark.django_db(transaction=True)
def test_a_worker_that_loses_its_database_carries_on_when_it_is_back(settings):
    """Cut off from PostgreSQL, the worker's listener and job threads log and retry;
    once the database is reachable again it delivers what was written meanwhile.
    Stopped while the database is unreachable, it still exits cleanly (its heartbeat
    left for the health endpoint to see go stale)."""
    use_fast_settings(settings)
    db = connection.settings_dict
    relay = Relay(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432))
    relay.up()
    user = db["USER"] or "postgres"
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{user}{password}@127.0.0.1:{relay.port}/postgres",
        "PUBLISHER_DB_NAME": db["NAME"],
        "PUBSUBPULL_OVERRIDES": json.dumps(FAST),
    }
    log = tempfile.NamedTemporaryFile("w+", suffix=".log")  # noqa: SIM115
    with Receiver() as receiver:
        subscription = make_subscription(receiver.url()).subscription

        def acknowledged(n: int) -> bool:
            """The worker recorded ``n`` changes delivered and let the row go."""
            subscription.refresh_from_db()
            return subscription.delivered == n and not subscription.lease_owner
        worker = subprocess.Popen(
            [sys.executable, str(MANAGE), "pubsubpull_worker", "--threads", "1"],
            env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

        def output() -> str:
            log.flush()
            return Path(log.name).read_text()

        try:
            wait_until(WorkerHeartbeat.objects.exists, timeout=60)
            Customer.objects.create(name="before")
            wait_until(lambda: acknowledged(1), timeout=60)

            relay.down()
            wait_until(lambda: "listening failed; retrying" in output(), timeout=60)
            wait_until(lambda: "running a job failed" in output(), timeout=60)
            Customer.objects.create(name="while down")
            relay.up()
            wait_until(lambda: acknowledged(2), timeout=60)
            assert worker.poll() is None, output()

            relay.down()
            wait_until(lambda: output().count("listening failed; retrying") >= 2, timeout=60)
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(60) == 0, output()
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
            relay.down()
    assert "could not remove its heartbeat" in output(), output()
    log.close()
    # Its heartbeat stays: the health endpoint reports the worker stale, not gone.
    assert WorkerHeartbeat.objects.count() == 1
    names = [c["new"]["name"] for c in receiver.accepted_changes()]
    assert names == ["before", "while down"]
