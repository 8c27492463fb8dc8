"""The runtime's edges: lost database connections, the long-poll API's limits, ASGI corners.

- The worker runs as ``manage.py pubsubpull_worker`` in a subprocess whose
  database is reached through a TCP relay the test takes down (every connection
  cut, new ones refused) and brings back, as a PostgreSQL restart or a network
  partition would; the feed's own connections are ended by pg_terminate_backend.
- Long polls under ``pubsubpull.asgi.long_polls`` run in uvicorn subprocesses
  (tests/asgi_publisher.py, and tests/asgi_edges.py for a failing or stuck
  ``send`` and an orderly stop of the feed's listening).
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
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from customers.models import Customer
from pubsubpull import conf
from pubsubpull.jobs.models import WorkerHeartbeat
from pubsubpull.publisher import feed, longpoll

from .conftest import dsn
from .delivery_helpers import FAST, make_subscription, settle, use_fast_settings, wait_until
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


# -- The long-poll API (longpoll.wait_for_changes, await_changes) ----------------


def _names(page: feed.Page) -> list[str]:
    return [c.new["name"] for c in page.changes]


@pytest.mark.django_db(transaction=True)
def test_a_long_poll_without_a_timeout_reads_at_once():
    """``timeout=0`` is a plain read, from sync and from async code: what there is, now."""
    Customer.objects.bulk_create([Customer(name="a"), Customer(name="b")])
    assert _names(longpoll.wait_for_changes(None, timeout=0)) == ["a", "b"]
    page = asyncio.run(longpoll.await_changes(None, 1, timeout=0))
    assert _names(page) == ["a"]
    # At the head: an empty page, not a wait.
    head = feed.read_changes(None).next
    assert longpoll.wait_for_changes(head, timeout=0).changes == []
    assert asyncio.run(longpoll.await_changes(head, timeout=0)).changes == []


@pytest.mark.django_db(transaction=True)
def test_a_long_poll_refuses_a_limit_below_one():
    for timeout in (0, 5):
        with pytest.raises(ValueError, match="limit must be at least 1"):
            longpoll.wait_for_changes(None, 0, timeout=timeout)
        with pytest.raises(ValueError, match="limit must be at least 1"):
            asyncio.run(longpoll.await_changes(None, 0, timeout=timeout))


@pytest.mark.django_db(transaction=True)
def test_a_long_poll_on_a_pruned_cursor_fails_at_once_with_cursor_expired():
    """The hub's read fails for the waiter (the log was pruned past its cursor): the
    poll raises CursorExpired instead of waiting out its timeout."""
    Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(3)])
    first = feed.read_changes(None, limit=1)
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM pubsubpull_change WHERE id IN "
            "(SELECT id FROM pubsubpull_change ORDER BY txid, id LIMIT 2)"
        )
    # Far longer than the test may take: an answer means the poll did not wait.
    with pytest.raises(feed.CursorExpired):
        longpoll.wait_for_changes(first.next, timeout=600)
    with pytest.raises(feed.CursorExpired):
        asyncio.run(longpoll.await_changes(first.next, timeout=600))


# -- Settings and models --------------------------------------------------------


def test_reading_a_setting_pubsubpull_does_not_have_is_an_error():
    with pytest.raises(ImproperlyConfigured, match="no setting 'LEASES'"):
        conf.get("LEASES")
    assert conf.get("LEASE") == conf.lease()


def test_a_worker_heartbeat_shows_as_its_worker_name():
    """How a shell or a log shows it: the worker's host:pid."""
    assert str(WorkerHeartbeat(name="web-1:4242")) == "web-1:4242"


def test_a_tasks_backend_that_does_not_import_is_left_to_the_tasks_framework(settings):
    """pubsubpull's check neither crashes on it nor guesses what it is; the tasks
    framework names the problem when a job is enqueued."""
    from pubsubpull.checks import check_task_backend
    from pubsubpull.jobs import tasks

    settings.TASKS = {"default": {"BACKEND": "no.such.Backend"}}
    assert check_task_backend() == []
    with pytest.raises(ImproperlyConfigured, match=r"Could not find backend 'no\.such\.Backend'"):
        tasks.backend()


@pytest.mark.django_db(transaction=True)
def test_a_long_poll_outlives_the_feeds_database_connections_being_cut(monkeypatch):
    """PostgreSQL ends the feed's LISTEN and reader connections (a restart, an
    operator's pg_terminate_backend) while a poll waits: the listener and the
    readers reconnect, and the poll is still answered with the next commit."""
    connection.ensure_connection()  # the test's own, opened before the name is set
    longpoll.stop_listening()  # its connections reopen carrying the name below
    app = f"edges-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PGAPPNAME", app)
    head = feed.read_changes(None).next
    polled: dict[str, feed.Page | BaseException] = {}

    def poll():
        try:
            polled["page"] = longpoll.wait_for_changes(head, timeout=120)
        except BaseException as exc:  # shown by the assertion below
            polled["page"] = exc

    def feeds_connections(conn) -> int:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [app]
        ).fetchone()[0]

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    with psycopg.connect(dsn(), autocommit=True, application_name="edges-test") as conn:
        # The listener and a reader.
        wait_until(lambda: feeds_connections(conn) >= 2, timeout=30)
        wait_until(lambda: listener_waiting() == 1, timeout=30)
        cut = [
            pid
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [app]
            ).fetchall()
        ]
        conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [cut])

        def ended() -> bool:  # (their replacements may be open already)
            return not conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [cut]
            ).fetchone()[0]

        wait_until(ended, timeout=30)
        conn.execute(
            "INSERT INTO customers_customer (name, email, newsletter, notes, created, updated) "
            "VALUES ('after the cut', '', false, '', now(), now())"
        )
        thread.join(120)
    assert not thread.is_alive()
    page = polled["page"]
    assert isinstance(page, feed.Page), page
    assert _names(page) == ["after the cut"]


@pytest.mark.django_db(transaction=True)
def test_a_poll_that_reads_itself_is_not_failed_by_a_reader_connection_cut_while_idle(
    monkeypatch,
):
    """The feed's reader connections stay open between reads: PostgreSQL ending one
    while it is idle (a restart, pg_terminate_backend) must not fail the next read
    made on it. The hub's own reads retry, but a poll whose wait ends before the
    hub read reads on the readers itself: it got the OperationalError (over HTTP a
    500), whenever it came to the reader the hub had not used since the cut: the
    likely way test_a_poll_whose_wait_ends_before_the_feed_has_read... failed once
    under load, after the cut test above left a reader's connection dead."""
    from pubsubpull.publisher import listener

    connection.ensure_connection()  # the test's own, opened before the name is set
    longpoll.stop_listening()
    app = f"edges-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PGAPPNAME", app)
    Customer.objects.bulk_create([Customer(name="c0"), Customer(name="c1")])
    settle()  # (served once every older transaction of the database has ended)
    first = feed.read_changes(None, limit=1).next
    readers = listener.readers()

    def on_every_reader(fn):
        """``fn`` once on each reader thread (the barrier holds each to one call)."""
        barrier = threading.Barrier(listener.READERS)

        def call():
            barrier.wait(30)
            return fn()

        return [f.result(60) for f in [readers.submit(call) for _ in range(listener.READERS)]]

    on_every_reader(lambda: feed.read_changes(None).next)  # each reader connects
    with psycopg.connect(dsn(), autocommit=True, application_name="edges-test") as conn:
        cut = [
            pid
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [app]
            ).fetchall()
        ]
        assert len(cut) == listener.READERS
        conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [cut])
        wait_until(
            lambda: (
                not conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [cut]
                ).fetchone()[0]
            ),
            timeout=30,
        )
    # Every reader reads again, on a new connection.
    pages = on_every_reader(lambda: feed.read_changes(first))
    assert [_names(page) for page in pages] == [["c1"]] * listener.READERS
    # And a poll that reads itself after its wait is answered.
    for _ in range(4):
        assert _names(asyncio.run(longpoll.await_changes(first, timeout=1e-6))) == ["c1"]


def listener_waiting() -> int:
    from pubsubpull.publisher import listener

    return listener.waiting()


# -- pubsubpull.asgi.long_polls: what is not a long poll is served as before ---------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("application", ["application", "application_through_django"])
def test_under_the_asgi_wrapper_a_read_or_a_bad_wait_is_served_by_django(application):
    """Only a valid ``wait`` above zero makes a long poll; a plain read, ``wait=0`` and
    a ``wait`` that is not a number go through Django's handler as any request does
    (the last answered 400 by the view)."""
    from pubsubpull.publisher.api.auth import create_token

    from .test_long_poll import _uvicorn

    Customer.objects.create(name="there")
    headers = {"Authorization": f"Bearer {create_token('edges', ['*'])[1]}"}
    with _uvicorn(f"tests.asgi_publisher:{application}") as server:
        url = f"{server.url}/pubsubpull/changes/"
        for params in ({}, {"wait": "0"}):
            response = httpx.get(url, params=params, headers=headers, timeout=30)
            assert response.status_code == 200, response.text
            assert [c["new"]["name"] for c in response.json()["changes"]] == ["there"]
        response = httpx.get(url, params={"wait": "soon"}, headers=headers, timeout=30)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_wait"
        # Any other request too.
        instances = f"{server.url}/pubsubpull/models/customers.customer/instances/"
        response = httpx.get(instances, params={"wait": "5"}, headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        assert [i["fields"]["name"] for i in response.json()["instances"]] == ["there"]
        assert server.waiting() == 0


@pytest.mark.django_db(transaction=True)
def test_polls_waiting_when_the_feed_stops_listening_are_answered_500_not_left_hanging():
    """An orderly shutdown stops the feed's listening (longpoll.stop_listening) while
    polls wait under the ASGI wrapper: each gets the JSON 500, as a view that raised
    would answer it, and the client retries."""
    from concurrent.futures import ThreadPoolExecutor

    from pubsubpull.publisher.api.auth import create_token

    from .test_long_poll import _head, _uvicorn

    token = create_token("edges", ["*"])[1]
    with _uvicorn("tests.asgi_edges:application") as server, ThreadPoolExecutor(3) as pool:
        cursor = _head(server, token)
        polls = [
            pool.submit(
                httpx.get,
                f"{server.url}/pubsubpull/changes/",
                params={"after": cursor, "wait": "60"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=90,
            )
            for _ in range(3)
        ]
        wait_until(lambda: server.waiting() == 3, timeout=30)
        assert httpx.post(f"{server.url}/_test/stop-listening", timeout=30).status_code == 204
        answers = [poll.result(timeout=60) for poll in polls]
        assert server.waiting() == 0
    for answer in answers:
        assert answer.status_code == 500, answer.text
        assert answer.json()["error"] == "server_error"
        assert answer.headers["content-length"] == str(len(answer.content))


@pytest.mark.django_db(transaction=True)
def test_a_poll_whose_wait_ends_before_the_feed_has_read_answers_as_a_read_would():
    """A wait too short for the feed's readers to get to it: the caller reads itself."""
    Customer.objects.bulk_create([Customer(name="c0"), Customer(name="c1")])
    # The feed serves a commit once every older transaction of the database has
    # ended (an autovacuum's analyze, one it cannot place): on a loaded server
    # not always at once, and read then, first and head were the feed's start.
    settle()
    first = feed.read_changes(None, limit=1)
    head = feed.read_changes(None).next
    for after, names in ((first.next, ["c1"]), (head, [])):
        assert _names(longpoll.wait_for_changes(after, timeout=1e-6)) == names
        assert _names(asyncio.run(longpoll.await_changes(after, timeout=1e-6))) == names


@pytest.mark.django_db(transaction=True)
def test_an_http_poll_whose_wait_ends_before_the_feed_has_read_is_an_empty_page():
    from pubsubpull.publisher.api.auth import create_token

    from .test_long_poll import _head, _uvicorn

    token = create_token("edges", ["*"])[1]
    with _uvicorn("tests.asgi_publisher:application") as server:
        cursor = _head(server, token)
        for _ in range(5):
            response = httpx.get(
                f"{server.url}/pubsubpull/changes/",
                params={"after": cursor, "wait": "0.000001"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            assert response.status_code == 200, response.text
            assert response.json()["changes"] == []
            cursor = response.json()["cursor"]
        # Its cursor skipped nothing.
        Customer.objects.create(name="later")
        response = httpx.get(
            f"{server.url}/pubsubpull/changes/",
            params={"after": cursor},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert [c["new"]["name"] for c in response.json()["changes"]] == ["later"]
        # The same from a pruned cursor: 410, however the poll ended.
        with connection.cursor() as db:
            db.execute("DELETE FROM pubsubpull_change")
        Customer.objects.create(name="after the prune")
        for _ in range(5):
            response = httpx.get(
                f"{server.url}/pubsubpull/changes/",
                params={"after": cursor, "wait": "0.000001"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            assert response.status_code == 410, response.text
            assert response.json()["error"] == "cursor_expired"


@pytest.mark.django_db(transaction=True)
def test_a_woken_poll_whose_send_fails_raises_to_the_server_and_leaves_nothing_waiting():
    """The answer to a woken poll fails as it is written (behind an ASGI middleware
    whose send raises): the error goes to the server (which answers 500), the poll
    leaves the feed, and the polls beside it are answered as usual."""
    from concurrent.futures import ThreadPoolExecutor

    from pubsubpull.publisher.api.auth import create_token

    from .test_long_poll import _head, _insert, _uvicorn

    token = create_token("edges", ["*"])[1]
    app = "tests.asgi_edges:application_behind_a_failing_send"
    with _uvicorn(app) as server, ThreadPoolExecutor(2) as pool:
        cursor = _head(server, token)

        def poll(*extra: tuple[str, str]):
            return httpx.get(
                f"{server.url}/pubsubpull/changes/",
                params={"after": cursor, "wait": "60"},
                headers={"Authorization": f"Bearer {token}", **dict(extra)},
                timeout=90,
            )

        failing = pool.submit(poll, ("X-Test-Fail-Send", "1"))
        fine = pool.submit(poll)
        wait_until(lambda: server.waiting() == 2, timeout=30)
        _insert("woken")
        assert failing.result(timeout=60).status_code == 500
        answer = fine.result(timeout=60)
        assert answer.status_code == 200, answer.text
        assert [c["new"]["name"] for c in answer.json()["changes"]] == ["woken"]
        assert server.waiting() == 0


@pytest.mark.django_db(transaction=True)
def test_a_poll_cancelled_while_its_answer_is_stuck_gives_up_its_place():
    """A woken poll's answer is stuck in ``send`` (a client that reads nothing) and an
    ASGI middleware's timeout cancels the request: the poll gives up its answer and
    its place, and the server goes on serving."""
    from concurrent.futures import ThreadPoolExecutor

    from pubsubpull.publisher.api.auth import create_token

    from .test_long_poll import _head, _insert, _uvicorn

    token = create_token("edges", ["*"])[1]
    headers = {"Authorization": f"Bearer {token}"}
    with (
        _uvicorn("tests.asgi_edges:application_behind_a_stuck_send") as server,
        ThreadPoolExecutor(1) as pool,
    ):
        cursor = _head(server, token)
        stuck = pool.submit(
            httpx.get,
            f"{server.url}/pubsubpull/changes/",
            params={"after": cursor, "wait": "60"},
            headers={**headers, "X-Test-Stuck-Send": "1"},
            timeout=120,
        )
        wait_until(lambda: server.waiting() == 1, timeout=30)
        _insert("woken")
        # The middleware's timeout ends the request unanswered: uvicorn answers 500.
        assert stuck.result(timeout=60).status_code == 500
        assert server.waiting() == 0
        response = httpx.get(
            f"{server.url}/pubsubpull/changes/", params={"after": cursor}, headers=headers
        )
        assert [c["new"]["name"] for c in response.json()["changes"]] == ["woken"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.django_db(transaction=True)
# Forking a threaded process is what this test is about (gunicorn's preload does it).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_process_waits_on_feed_threads_of_its_own():
    """A preloading server forks its workers after the feed's threads started: the
    threads stay behind in the parent, and a child's long poll starts its own."""
    from .test_long_poll import _insert

    head = feed.read_changes(None).next
    assert _names(longpoll.wait_for_changes(head, timeout=0.2)) == []  # threads started
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what its poll got, and leave without cleanup
        code = 1
        try:
            os.close(read)
            connection.connection = None  # the parent's socket: not this process's
            page = longpoll.wait_for_changes(head, timeout=60)
            os.write(write, json.dumps(_names(page)).encode())
            code = 0
        finally:
            _save_coverage()
            os._exit(code)
    os.close(write)
    threading.Timer(1.0, _insert, ["in the child"]).start()
    deadline = time.monotonic() + 90
    while (ended := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the child's long poll was not answered")
        time.sleep(0.1)
    with os.fdopen(read) as answer:
        got = answer.read()
    assert os.waitstatus_to_exitcode(ended[1]) == 0
    assert json.loads(got) == ["in the child"]


def _save_coverage() -> None:
    """A child leaving by os._exit saves what coverage measured in it (when measured)."""
    import coverage  # a test requirement

    current = coverage.Coverage.current()
    if current is not None:
        current.stop()
        current.save()


@pytest.mark.django_db(transaction=True)
def test_an_idle_listener_closes_its_connection_and_listens_again_when_needed(monkeypatch):
    """No poll for IDLE seconds: the LISTEN connection closes by itself; the next poll
    opens it again and is woken as usual."""
    from pubsubpull.publisher import listener

    from .test_long_poll import _insert

    connection.ensure_connection()  # the test's own, opened before the name is set
    longpoll.stop_listening()
    app = f"edges-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PGAPPNAME", app)
    monkeypatch.setattr(listener, "IDLE", 0.5)

    def listening() -> int:
        with psycopg.connect(dsn(), autocommit=True, application_name="edges-test") as conn:
            return conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = %s AND query ILIKE 'LISTEN%%'",
                [app],
            ).fetchone()[0]

    head = feed.read_changes(None).next
    assert longpoll.wait_for_changes(head, timeout=0.3).changes == []
    wait_until(lambda: listening() == 0, timeout=30)
    threading.Timer(0.5, _insert, ["after the idle"]).start()
    assert _names(longpoll.wait_for_changes(head, timeout=60)) == ["after the idle"]
