"""Long polls on the change feed cost no database connection each.

A service that many clients follow by long poll must not run out of
connections: waiting polls share their process's one LISTEN connection and a
few reader threads, under WSGI (the live server, a thread per request) and
under ASGI (uvicorn in a subprocess: no thread per waiting request either).
Connections are counted in pg_stat_activity by the server's application_name.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg
import pytest
from django.db import connection

from pubsubpull import asgi as asgi_wrapper
from pubsubpull.publisher import feed, listener, longpoll
from pubsubpull.publisher.api.auth import create_token
from tests.conftest import dsn

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
PUBLISHER = ROOT / "test-projects" / "publisher"
INSERT = (
    "INSERT INTO customers_customer (name, email, newsletter, notes, created, updated) "
    "VALUES (%s, '', false, '', now(), now())"
)
CUSTOMER = "customers.customer"
# What a process's long polls hold at most, however many wait.
BOUND = 1 + listener.READERS


@pytest.fixture(autouse=True)
def _fresh_listeners():
    """Each test starts and ends with no LISTEN or reader connection in this process."""
    longpoll.stop_listening()
    yield
    longpoll.stop_listening()


@pytest.fixture
def token():
    return create_token("poller", ["*"])[1]


class Server:
    """A publisher serving HTTP; its connections carry ``app`` as application_name."""

    def __init__(self, url: str, app: str, waiting):
        self.url = url.rstrip("/")
        self.app = app
        self.waiting = waiting

    def connections(self) -> int:
        with psycopg.connect(dsn(), autocommit=True, application_name="counter") as conn:
            return conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = %s",
                [self.app],
            ).fetchone()[0]


@pytest.fixture
def wsgi(live_server, monkeypatch):
    """pytest-django's live server: Django's threaded WSGI server, in this process."""
    app = f"longpoll-wsgi-{uuid.uuid4().hex[:8]}"
    # Every connection opened from now on in this process carries the name
    # (libpq reads PGAPPNAME); the test's own connections name themselves.
    monkeypatch.setenv("PGAPPNAME", app)
    return Server(live_server.url, app, listener.waiting)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def asgi():
    """uvicorn serving the publisher (tests/asgi_publisher.py) on the test database."""
    with _uvicorn("tests.asgi_publisher:application") as server:
        yield server


@contextlib.contextmanager
def _uvicorn(application: str, *options: str):
    app = f"longpoll-asgi-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    env = {
        **os.environ,
        "PGAPPNAME": app,
        "PUBLISHER_DB_NAME": connection.settings_dict["NAME"],
        "DJANGO_SETTINGS_MODULE": "publisher.settings",
        "DJANGO_DEBUG": "0",
        "PYTHONPATH": f"{PUBLISHER}{os.pathsep}{ROOT}",
    }
    process = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", application,
            "--host", "127.0.0.1", "--port", str(port), "--lifespan", "off",
            "--no-access-log", "--log-level", "warning", *options,
        ],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def waiting() -> int:
        return httpx.get(f"{url}/_test/waiting", timeout=10).json()["waiting"]

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                waiting()
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    output = process.communicate()[0]
                    raise AssertionError(f"uvicorn did not start:\n{output}") from None
                time.sleep(0.2)
        server = Server(url, app, waiting)
        server.pid = process.pid
        yield server
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(params=["wsgi", "asgi"])
def server(request):
    return request.getfixturevalue(request.param)


async def _until(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout} s")
        await asyncio.sleep(0.1)


def _head(server: Server, token: str, models: str = "customers.customer") -> str:
    """The cursor of a caught-up reader."""
    response = httpx.get(
        f"{server.url}/pubsubpull/changes/",
        params={"models": models, "limit": 1000},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["changes"] == []
    return response.json()["cursor"]


def _insert(name: str) -> None:
    with psycopg.connect(dsn(), autocommit=True, application_name="writer") as conn:
        conn.execute(INSERT, [name])


def test_forty_waiting_polls_hold_a_few_connections_and_all_wake_on_a_commit(server, token):
    """40 polls held 41 connections, so ~95 exhausted a default server; now a constant few."""
    polls = 40
    cursor = _head(server, token)

    async def scenario():
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(limits=limits, headers=headers, timeout=120) as client:

            async def poll():
                response = await client.get(
                    f"{server.url}/pubsubpull/changes/",
                    params={"models": "customers.customer", "after": cursor, "wait": 60},
                )
                return response, time.monotonic()

            tasks = [asyncio.create_task(poll()) for _ in range(polls)]
            await _until(lambda: server.waiting() == polls, what=f"{polls} polls waiting")
            held = []
            for _ in range(10):
                held.append(await asyncio.to_thread(server.connections))
                await asyncio.sleep(0.1)
            assert not any(task.done() for task in tasks)
            committed = time.monotonic()
            await asyncio.to_thread(_insert, "woken")
            answers = await asyncio.gather(*tasks)
            return held, committed, answers

    held, committed, answers = asyncio.run(scenario())
    assert max(held) <= BOUND, f"{polls} waiting polls held {held} connections"
    for response, answered in answers:
        assert response.status_code == 200, response.text
        assert [c["new"]["name"] for c in response.json()["changes"]] == ["woken"]
        # Milliseconds when quiet; generous for a loaded two-core machine.
        assert answered - committed < 10
    assert server.waiting() == 0


def test_polls_that_time_out_answer_an_empty_page_and_hold_a_few_connections(server, token):
    polls = 30
    cursor = _head(server, token)

    async def scenario():
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(limits=limits, headers=headers, timeout=120) as client:

            async def poll():
                started = time.monotonic()
                response = await client.get(
                    f"{server.url}/pubsubpull/changes/",
                    params={"models": "customers.customer", "after": cursor, "wait": 5},
                )
                return response, time.monotonic() - started

            tasks = [asyncio.create_task(poll()) for _ in range(polls)]
            held = []
            while not all(task.done() for task in tasks):
                # While every poll waits: a request that is still being
                # authenticated, or is being answered, may use its thread's
                # connection for a moment; a waiting one may not.
                before = await asyncio.to_thread(server.waiting)
                connections = await asyncio.to_thread(server.connections)
                if before == polls and await asyncio.to_thread(server.waiting) == polls:
                    held.append(connections)
                await asyncio.sleep(0.1)
            return held, await asyncio.gather(*tasks)

    held, answers = asyncio.run(scenario())
    assert held, f"the {polls} polls were never all waiting at once"
    assert max(held) <= BOUND, held
    for response, elapsed in answers:
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["changes"] == []
        # The empty page still moves the cursor on (or keeps it): never back.
        assert feed.Position.decode(body["cursor"]) >= feed.Position.decode(cursor)
        assert 2.5 < elapsed < 30


def test_clients_that_hang_up_free_their_place(asgi, token):
    """Under ASGI a poll whose client goes away stops waiting (Django cancels the view)."""
    cursor = _head(asgi, token)

    async def scenario():
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(headers=headers, timeout=120) as client:
            tasks = [
                asyncio.create_task(
                    client.get(
                        f"{asgi.url}/pubsubpull/changes/",
                        params={"models": "customers.customer", "after": cursor, "wait": 60},
                    )
                )
                for _ in range(10)
            ]
            await _until(lambda: asgi.waiting() == 10, what="10 polls waiting")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await _until(lambda: asgi.waiting() == 0, what="hung-up polls gone")

    asyncio.run(scenario())


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Threads:")).split()[1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="counts threads in /proc")
def test_under_asgi_waiting_polls_hold_no_thread(asgi, token):
    """A waiting poll is a coroutine: no thread, no connection (pubsubpull.asgi.long_polls).

    Without the wrapper Django parks a thread per request: 40 polls, 46 threads.
    With it the long polls share asgi.THREADS threads.
    """
    polls = 40
    cursor = _head(asgi, token)
    # One poll first, so the process's listener and readers run before counting.
    warm = httpx.get(
        f"{asgi.url}/pubsubpull/changes/",
        params={"models": "customers.customer", "after": cursor, "wait": 0.5},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert warm.status_code == 200
    before = _threads(asgi.pid)

    async def scenario():
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(limits=limits, headers=headers, timeout=120) as client:
            tasks = [
                asyncio.create_task(
                    client.get(
                        f"{asgi.url}/pubsubpull/changes/",
                        params={"models": "customers.customer", "after": cursor, "wait": 60},
                    )
                )
                for _ in range(polls)
            ]
            await _until(lambda: asgi.waiting() == polls, what=f"{polls} polls waiting")
            held = (_threads(asgi.pid), asgi.connections())
            await asyncio.to_thread(_insert, "woken")
            return held, await asyncio.gather(*tasks)

    (threads, held), answers = asyncio.run(scenario())
    # The long polls' few shared threads start as they are first used.
    bound = before + asgi_wrapper.THREADS + 1
    assert threads <= bound, f"{polls} waiting polls: {before} threads became {threads}"
    assert held <= BOUND
    assert all(r.status_code == 200 and r.json()["changes"] for r in answers)


def test_a_bad_cursor_on_a_long_poll_is_answered_at_once(server, token):
    started = time.monotonic()
    response = httpx.get(
        f"{server.url}/pubsubpull/changes/",
        params={"after": "not-a-cursor", "wait": 30},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_cursor"
    assert time.monotonic() - started < 20


def test_a_thousand_waiters_at_one_position_share_one_read():
    """When woken, waiters that asked for the same page get one page read for all."""
    _insert("before")
    head = feed.read_changes(None, limit=1000).next

    async def scenario():
        waits = [
            asyncio.create_task(
                longpoll.await_changes(head, 100, ["customers.customer"], timeout=60)
            )
            for _ in range(1000)
        ]
        await _until(lambda: listener.waiting() == 1000, what="1000 waiters")
        await asyncio.to_thread(_insert, "after")
        return await asyncio.gather(*waits)

    pages = asyncio.run(scenario())
    assert [c.new["name"] for c in pages[0].changes] == ["after"]
    # One Page object: one read answered them all.
    assert len({id(page) for page in pages}) == 1


def test_a_waiter_in_a_thread_is_woken_too():
    """longpoll.wait_for_changes (the sync call) waits the same way, holding no connection."""
    import threading

    head = feed.read_changes(None, limit=1000).next
    timer = threading.Timer(0.3, _insert, ["late"])
    timer.start()
    page = longpoll.wait_for_changes(head, models=[CUSTOMER], timeout=30)
    timer.join()
    assert [c.new["name"] for c in page.changes] == ["late"]


def test_a_cursor_from_the_future_does_not_carry_other_waiters_past_a_change():
    """Waiters at nearby cursors come together on one; a forged cursor ahead drags no one."""
    head = feed.read_changes(None, limit=1000).next
    future = feed.Position(head.txid + 10**9, 0)

    async def scenario():
        waits = [
            asyncio.create_task(
                longpoll.await_changes(after, 100, ["customers.customer"], timeout=60)
            )
            for after in (head, future, head)
        ]
        await _until(lambda: listener.waiting() == 3, what="3 waiters")
        await asyncio.sleep(0.5)  # a few reads while nothing happens
        await asyncio.to_thread(_insert, "news")
        return await asyncio.gather(*waits[::2]), waits[1]

    (first, second), ahead = asyncio.run(scenario())
    assert [c.new["name"] for c in first.changes] == ["news"]
    assert first is second
    assert ahead.cancelled() or ahead.result().changes == []


@pytest.mark.parametrize("alias", ["default", "other"])
def test_the_feed_answers_with_atomic_requests_on_any_database(client, token, monkeypatch, alias):
    """An async view cannot run inside ATOMIC_REQUESTS: the feed opts out on every alias."""
    from django.db import connections

    monkeypatch.setitem(connections[alias].settings_dict, "ATOMIC_REQUESTS", True)
    for wait in ("0", "0.2"):
        response = client.get(
            "/pubsubpull/changes/",
            {"models": "customers.customer", "wait": wait},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 200, response.content


# -- Woken polls answered directly (pubsubpull.asgi.long_polls) -----------------------------

# Added by uvicorn to every response, whoever rendered it.
_SERVER_HEADERS = {"date", "server"}


def _headers(response: httpx.Response) -> list[tuple[str, str]]:
    return [(k, v) for k, v in response.headers.multi_items() if k not in _SERVER_HEADERS]


def _same_answer(answer: httpx.Response, read: httpx.Response) -> None:
    """``answer`` is what the view answers to ``read``'s request, but for where the page ends.

    A page's cursor (and the link to the next page) moves on over empty
    stretches of the log, so a read after the poll may end further on: all
    else is equal, headers in the same order included.
    """
    assert answer.status_code == read.status_code
    body, expected = answer.json(), read.json()
    assert body.keys() == expected.keys()
    if "changes" in body:
        assert body["changes"] == expected["changes"]
        assert f"after={quote(body['cursor'], safe='')}&" in body["next"]
        # The same link but for the cursor in it.
        assert body["next"].replace(quote(body["cursor"], safe=""), "~") == expected[
            "next"
        ].replace(quote(expected["cursor"], safe=""), "~")
        assert answer.headers["link"] == f'<{body["next"]}>; rel="next"'
        # Byte for byte, once the read's page end is put in place of the answer's.
        assert answer.content == read.content.replace(
            json.dumps(expected["cursor"]).encode(), json.dumps(body["cursor"]).encode()
        ).replace(json.dumps(expected["next"]).encode(), json.dumps(body["next"]).encode())
    else:
        assert answer.content == read.content
    if "content-length" in read.headers:
        assert int(answer.headers["content-length"]) == len(answer.content)
    moving = {"link", "content-length"}
    assert [(k, v if k not in moving else "") for k, v in _headers(answer)] == [
        (k, v if k not in moving else "") for k, v in _headers(read)
    ]


def _woken_and_plain(server: Server, cursor: str, headers: dict, polls: int = 5):
    """``polls`` long polls at ``cursor`` woken by one commit, and a plain read of the same page."""
    params = {"models": "customers.customer", "after": cursor, "limit": "10"}

    async def scenario():
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(limits=limits, headers=headers, timeout=120) as client:
            tasks = [
                asyncio.create_task(
                    client.get(f"{server.url}/pubsubpull/changes/", params={**params, "wait": 60})
                )
                for _ in range(polls)
            ]
            await _until(lambda: server.waiting() == polls, what=f"{polls} polls waiting")
            await asyncio.to_thread(_insert, "woken")
            woken = await asyncio.gather(*tasks)
            plain = await client.get(f"{server.url}/pubsubpull/changes/", params=params)
            return woken, plain

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    ("application", "options"),
    [
        ("application", []),
        ("application_through_django", []),
        ("application_behind_a_slow_send", []),
        # Served under a path prefix (SCRIPT_NAME): the links carry it.
        ("application", ["--root-path", "/svc"]),
    ],
)
def test_a_woken_poll_is_answered_exactly_as_the_view_answers_a_read(token, application, options):
    """Same body, same headers in the same order (the middleware's included) as a plain
    read of the page; the placeholder's marker never leaves the server."""
    from pubsubpull.publisher.longpoll import MARKER

    with _uvicorn(f"tests.asgi_publisher:{application}", *options) as server:
        cursor = _head(server, token)
        woken, plain = _woken_and_plain(server, cursor, {"Authorization": f"Bearer {token}"})
    assert plain.status_code == 200, plain.text
    assert [c["new"]["name"] for c in plain.json()["changes"]] == ["woken"]
    names = {k for k, _ in _headers(plain)}
    # The publisher's middleware ran for it (SecurityMiddleware, CommonMiddleware).
    assert {"x-content-type-options", "content-length", "link"} <= names, names
    if options:
        assert plain.json()["next"].startswith(f"{server.url}/svc/pubsubpull/changes/?")
    for response in woken:
        _same_answer(response, plain)
        assert MARKER.lower() not in response.headers
    # Every poll woken by the commit got the same bytes.
    assert len({(r.content, tuple(_headers(r))) for r in woken}) == 1


def test_a_session_user_long_polls_with_the_models_the_user_may_read(asgi, client):
    """Arrival goes through Django's middleware: a logged-in user's session authenticates
    the poll, and the answer carries what the session middleware adds."""
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user("reader", password="x")
    user.user_permissions.add(Permission.objects.get(codename="view_customer"))
    client.force_login(user)
    headers = {"Cookie": f"sessionid={client.cookies['sessionid'].value}"}
    response = httpx.get(
        f"{asgi.url}/pubsubpull/changes/", params={"models": "customers.customer", "limit": 1000},
        headers=headers, timeout=30,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    woken, plain = _woken_and_plain(asgi, response.json()["cursor"], headers, polls=3)
    assert [c["new"]["name"] for c in plain.json()["changes"]] == ["woken"]
    assert "cookie" in plain.headers.get("vary", "").lower()
    for answer in woken:
        _same_answer(answer, plain)
    # A user who may not read the model is refused at once, as JSON.
    other = User.objects.create_user("stranger", password="x")
    client.force_login(other)
    refused = httpx.get(
        f"{asgi.url}/pubsubpull/changes/",
        params={"models": "customers.customer", "wait": 30},
        headers={"Cookie": f"sessionid={client.cookies['sessionid'].value}"},
        timeout=30,
    )
    assert refused.status_code == 403
    assert refused.json()["error"] == "permission_denied"


def test_a_long_poll_at_a_pruned_cursor_answers_410_as_a_read_does(asgi, token):
    from django.core.management import call_command

    from customers.models import Customer
    from pubsubpull.models import Change

    for i in range(3):
        Customer.objects.create(name=f"old{i}")
    first = Change.objects.order_by("txid", "id").first()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pubsubpull_change SET at = at - interval '40 days'")
    call_command("pubsubpull_prune", "--older-than", "30d", stdout=io.StringIO())
    Customer.objects.create(name="young")  # the log's horizon moves past the first
    call_command("pubsubpull_prune", "--older-than", "30d", stdout=io.StringIO())
    expired = feed.Position(first.txid, first.id).encode()
    params = {"models": "customers.customer", "after": expired}
    auth = {"Authorization": f"Bearer {token}"}
    plain = httpx.get(f"{asgi.url}/pubsubpull/changes/", params=params, headers=auth, timeout=30)
    assert plain.status_code == 410, plain.text
    assert plain.json()["error"] == "cursor_expired"
    polled = httpx.get(
        f"{asgi.url}/pubsubpull/changes/", params={**params, "wait": 60}, headers=auth, timeout=60
    )
    _same_answer(polled, plain)
    assert asgi.waiting() == 0


def test_a_response_put_in_the_placeholders_place_is_sent_and_the_poll_stops_waiting():
    """A middleware that answers instead of the view (after it parked the poll): the wrapper
    sends that answer as it is, and the poll leaves the hub."""
    from pubsubpull.publisher.api.responses import raw_json_response
    from pubsubpull.publisher.longpoll import MARKER, Parking

    def park() -> tuple[Parking, list[tuple[bytes, bytes]]]:
        parking = Parking()
        placeholder = parking.park(
            None, 10, [CUSTOMER], 30, key=(), answer=lambda outcome: None,
            placeholder=raw_json_response(b"", Link=""),
        )  # fmt: skip
        return parking, [(k.encode(), v.encode()) for k, v in placeholder.items()]

    async def scenario():
        parking, headers = park()
        assert listener.waiting() == 1
        replaced = {"type": "http.response.start", "status": 429, "headers": headers[:1]}
        assert not parking.capture(replaced)
        assert listener.waiting() == 0
        # Its own placeholder (whatever headers the middleware added) is kept, unmarked.
        parking, headers = park()
        extra = (b"X-Frame-Options", b"DENY")
        start = {"type": "http.response.start", "status": 200, "headers": [*headers, extra]}
        assert parking.capture(start)
        assert extra in parking.captured
        assert MARKER.encode() not in {name for name, _ in parking.captured}
        assert listener.waiting() == 1
        parking.abandon()
        assert listener.waiting() == 0

    asyncio.run(scenario())
