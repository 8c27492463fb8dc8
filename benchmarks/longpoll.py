"""A thousand clients long-polling one server process: connections held, commit-to-answer time.

It starts the publisher (benchmarks/longpoll_site.py) as one server process
on 127.0.0.1 and, for each ``--servers`` design:

- ``asgi``: uvicorn, the application wrapped in ``pubsubpull.asgi.long_polls``
  as the docs say (woken polls answered by the wrapper, one rendering for all);
- ``asgi-django``: the same, ``long_polls(..., answer_directly=False)``: each
  woken poll goes back through Django's handler and middleware;
- ``wsgi``: gunicorn, one gthread worker with a thread per poll;

and for each:

- ``--polls`` clients (1,000) each send ``GET changes/?wait=30`` at the head
  of the feed, one connection each, spread over ``--clients`` client
  processes (``--client-lib raw``, the default: a minimal keep-alive HTTP/1.1
  protocol on uvloop, timing a response at its last byte; ``httpx``: an httpx
  AsyncClient per poll, whose own per-response cost on the same two cores is
  about the server's), and the driver waits until the server holds them all;
- one row is committed; every poll must answer with exactly that change. The
  time from the commit's return to each poll's full response is recorded;
- the polls go again from the new cursor, ``--rounds`` times (5).

It prints, per server, the p50 / p99 / max of commit-to-answer over every
poll of every round, the errors, and the most PostgreSQL connections the
server process held at any time (pg_stat_activity, sampled every 20 ms, by
the application_name the server's connections carry). The goal for ASGI:
no errors, at most 5 connections, p99 at most 100 ms.

Run it (needs the bench extra: pip install -e ".[bench]")::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        python benchmarks/longpoll.py [--polls 1000] [--rounds 5]
        [--servers asgi asgi-django wsgi] [--middleware full|api] [--client-lib raw|httpx]

It uses its own database, PUBLISHER_DB_NAME (default bench_longpoll), dropped
and created anew. ``--quick`` (100 polls, 2 rounds) is the smoke test's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PUBLISHER = ROOT / "test-projects" / "publisher"

os.environ.setdefault("PUBLISHER_DB_NAME", "bench_longpoll")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.longpoll_site"
os.environ["DJANGO_DEBUG"] = "0"
sys.path[:0] = [str(PUBLISHER), str(ROOT)]

SERVER_APP = "bench-longpoll-server"
INSERT = (
    "INSERT INTO customers_customer (name, email, newsletter, notes, created, updated) "
    "VALUES (%s, '', false, '', now(), now())"
)


def raise_file_limit() -> None:
    """A thousand sockets on each side: raise the soft RLIMIT_NOFILE to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- A client process: its share of the polls, round after round -------------------------


class RawConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, GETs only: a client much cheaper than httpx.

    On two cores shared by the server and the clients, httpx's per-response
    cost (about as much as the server's) would be most of what is measured.
    A response's time is taken when its last byte arrives; it is parsed after.
    """

    def __init__(self, url: str, token: str):
        self.host, _, port = url.removeprefix("http://").partition(":")
        self.port = int(port)
        self.token = token
        self.transport = None
        self.buffer = bytearray()
        self.answer: asyncio.Future | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        if b"transfer-encoding: chunked" in head:
            # JSON has no raw line breaks: the last chunk ends the buffer.
            complete = self.buffer.endswith(b"\r\n0\r\n\r\n")
        else:
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            complete = len(self.buffer) >= end + 4 + length
        if complete:
            at = time.monotonic()
            raw, self.buffer = bytes(self.buffer), bytearray()
            self.answer.set_result((at, raw))

    def connection_lost(self, exc) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionError(f"connection lost: {exc}"))

    async def get(self, path: str, params: dict) -> tuple[float, int, bytes]:
        from urllib.parse import urlencode

        loop = asyncio.get_running_loop()
        if self.transport is None:
            await loop.create_connection(lambda: self, self.host, self.port)
        self.answer = loop.create_future()
        self.transport.write(
            f"GET {path}?{urlencode(params)} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\n\r\n".encode()
        )
        at, raw = await self.answer
        head, _, body = raw.partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            chunks, rest = [], body
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    break
                chunks.append(rest[:size])
                rest = rest[size + 2 :]
            body = b"".join(chunks)
        return at, int(head.split(b" ", 2)[1]), body

    def connection_made(self, transport) -> None:
        self.transport = transport

    async def aclose(self) -> None:
        if self.transport is not None:
            self.transport.close()


def client(url: str, token: str, polls: int, kind: str) -> None:
    """Read ``<cursor> <name>`` lines; answer each with one JSON line of results.

    Every poll runs on its own connection, kept open from round to round as a
    long-polling client keeps it.
    """
    import httpx

    async def main() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        timeout = httpx.Timeout(120, pool=120)
        # A client (so a connection pool) per poll, as each long-polling
        # service has its own: one pool of a thousand connections would
        # measure httpcore's pool bookkeeping, not the server.
        if kind == "httpx":
            https = [
                httpx.AsyncClient(headers=headers, timeout=timeout, base_url=url)
                for _ in range(polls)
            ]
        else:
            https = [RawConnection(url, token) for _ in range(polls)]
        loop = asyncio.get_running_loop()
        try:
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line.strip():
                    return
                cursor, name = line.split()

                async def poll(
                    http: httpx.AsyncClient, cursor=cursor, name=name
                ) -> tuple[float, str | None, str | None]:
                    params = {"models": "customers.customer", "after": cursor, "wait": 30}
                    try:
                        if kind == "httpx":
                            response = await http.get("/pubsubpull/changes/", params=params)
                            at = time.monotonic()
                            status, content = response.status_code, response.content
                        else:
                            at, status, content = await http.get("/pubsubpull/changes/", params)
                        body = json.loads(content)
                    except Exception as exc:
                        return time.monotonic(), f"{type(exc).__name__}: {exc}", None
                    if status != 200:
                        return at, f"HTTP {status}", None
                    got = [c["new"]["name"] for c in body["changes"]]
                    if got != [name]:
                        return at, f"served {got}, not [{name!r}]", None
                    return at, None, body["cursor"]

                results = await asyncio.gather(*[poll(http) for http in https])
                errors = [e for _, e, _ in results if e]
                cursors = {c for _, _, c in results if c}
                print(
                    json.dumps(
                        {
                            "answered": [at for at, _, _ in results],
                            "errors": errors[:5],
                            "error_count": len(errors),
                            "cursor": cursors.pop() if len(cursors) == 1 else None,
                        }
                    ),
                    flush=True,
                )
        finally:
            for http in https:
                await http.aclose()

    try:  # the clients' own cost is not what is measured: the fastest loop there is
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


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


def drop_database() -> None:
    import psycopg
    from django.conf import settings

    db = settings.DATABASES["default"]
    admin = psycopg.connect(
        host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname="postgres",
        password=db["PASSWORD"] or None, autocommit=True,
    )  # fmt: skip
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{db["NAME"]}" WITH (FORCE)')


def dsn() -> str:
    import psycopg
    from django.db import connection

    s = connection.settings_dict
    params = {"dbname": s["NAME"], "host": s["HOST"], "port": s["PORT"], "user": s["USER"]}
    if s["PASSWORD"]:
        params["password"] = s["PASSWORD"]
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items() if v})


class Server:
    """One server process serving the publisher; its connections named SERVER_APP."""

    def __init__(self, kind: str, polls: int, middleware: str):
        self.kind = kind
        self.port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": f"{PUBLISHER}{os.pathsep}{ROOT}",
            "PGAPPNAME": SERVER_APP,
            "LONGPOLL_MIDDLEWARE": middleware,
            "LONGPOLL_DESIGN": "django" if kind == "asgi-django" else "direct",
        }
        bind = ["--bind", f"127.0.0.1:{self.port}"]
        if kind.startswith("asgi"):
            args = [
                "-m", "uvicorn", "--factory", "benchmarks.longpoll_app:asgi",
                "--host", "127.0.0.1", "--port", str(self.port), "--lifespan", "off",
                "--no-access-log", "--log-level", "warning", "--backlog", "4096",
                "--timeout-keep-alive", "120",
            ]  # fmt: skip
        else:
            # One process, a thread per waiting poll: WSGI's way to hold them.
            args = [
                "-m", "gunicorn", *bind, "--worker-class", "gthread", "--workers", "1",
                "--threads", str(polls + 50), "--worker-connections", str(2 * polls + 100),
                "--backlog", "4096", "--keep-alive", "120", "--timeout", "300",
                "--log-level", "warning", "benchmarks.longpoll_app:wsgi()",
            ]  # fmt: skip
        self.process = subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                self.waiting()
                break
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def waiting(self) -> int:
        import httpx

        return httpx.get(f"{self.url}/_bench/waiting", timeout=30).json()["waiting"]

    def sent(self) -> list[float]:
        """When the server handed each long poll's response over, since last asked."""
        import httpx

        return httpx.get(f"{self.url}/_bench/sent", timeout=30).json()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


class ConnectionSampler:
    """The most connections the server held, sampled every 20 ms."""

    def __init__(self, conninfo: str):
        import psycopg

        self.conn = psycopg.connect(conninfo, autocommit=True, application_name="bench-sampler")
        self.peak = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def count(self) -> int:
        return self.conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            [SERVER_APP],
        ).fetchone()[0]

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.peak = max(self.peak, self.count())
            time.sleep(0.02)

    def stop(self) -> int:
        self.stopping.set()
        self.thread.join()
        self.conn.close()
        return self.peak


def run(kind: str, args, token: str, conninfo: str) -> dict:
    import psycopg

    server = Server(kind, args.polls, args.middleware)
    shares = [args.polls // args.clients + (i < args.polls % args.clients)
              for i in range(args.clients)]  # fmt: skip
    clients = [
        subprocess.Popen(
            [sys.executable, __file__, "--client", server.url, token, str(share), args.client_lib],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for share in shares
    ]
    latencies: list[float] = []
    server_side: list[float] = []
    errors: list[str] = []
    error_count = 0
    sampler = None
    try:
        with psycopg.connect(conninfo, autocommit=True, application_name="bench-writer") as w:
            w.execute(INSERT, ["start"])
            cursor = _head(server.url, token)
            sampler = ConnectionSampler(conninfo)
            for n in range(args.rounds):
                name = f"round-{n}"
                for process in clients:
                    process.stdin.write(f"{cursor} {name}\n")
                    process.stdin.flush()
                deadline = time.monotonic() + 120
                while server.waiting() < args.polls:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"only {server.waiting()} polls waiting after 120 s")
                    time.sleep(0.05)
                time.sleep(0.5)  # all of them settled in their wait
                server.sent()  # forget the polls that answered before this round
                w.execute(INSERT, [name])
                committed = time.monotonic()
                cursors = set()
                for process in clients:
                    result = json.loads(process.stdout.readline())
                    latencies += [at - committed for at in result["answered"]]
                    errors += result["errors"]
                    error_count += result["error_count"]
                    cursors.add(result["cursor"])
                server_side += [at - committed for at in server.sent()]
                if len(cursors) != 1 or None in cursors:
                    raise RuntimeError(f"round {n}: errors {errors[:5]}")
                (cursor,) = cursors
    finally:
        peak = sampler.stop() if sampler is not None else None
        for process in clients:
            if process.stdin:
                process.stdin.close()
            process.wait(60)
        server.stop()
    latencies.sort()
    server_side.sort()
    return {
        "polls": len(latencies),
        "errors": error_count,
        "error_sample": errors[:3],
        "peak_connections": peak,
        "p50": statistics.median(latencies),
        "p99": _p99(latencies),
        "max": latencies[-1],
        "server_p50": statistics.median(server_side),
        "server_p99": _p99(server_side),
    }


def _p99(values: list[float]) -> float:
    return values[min(len(values) - 1, int(len(values) * 0.99))]


def _head(url: str, token: str) -> str:
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    after = None
    while True:
        params = {"models": "customers.customer", "limit": 1000}
        if after:
            params["after"] = after
        body = httpx.get(f"{url}/pubsubpull/changes/", params=params, headers=headers).json()
        after = body["cursor"]
        if not body["changes"]:
            return after


LABELS = {
    "asgi": "ASGI direct (uvicorn)",
    "asgi-django": "ASGI via Django",
    "wsgi": "WSGI (gunicorn gthread)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=list(LABELS),
        default=list(LABELS),
        help="asgi: long_polls answering woken polls directly; asgi-django: through "
        "Django's handler and middleware; wsgi: gunicorn, a thread per poll",
    )
    parser.add_argument(
        "--client-lib",
        choices=["raw", "httpx"],
        default="raw",
        help="the polling clients' HTTP (raw: a minimal keep-alive HTTP/1.1 client)",
    )
    parser.add_argument("--middleware", choices=["full", "api"], default="full")
    parser.add_argument("--quick", action="store_true", help="100 polls, 2 rounds")
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    parser.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_file_limit()
    if args.client:
        client(args.client[0], args.client[1], int(args.client[2]), args.client[3])
        return
    if args.quick:
        args.polls, args.rounds, args.clients = 100, 2, 1

    setup_database()
    from django.db import connection

    from pubsubpull.publisher.api.auth import create_token

    token = create_token(f"bench-{time.time()}", ["*"])[1]
    conninfo = dsn()
    connection.close()
    print(
        f"{args.polls} polls x {args.rounds} rounds, wait=30, one server process, "
        f"{args.middleware} middleware, {args.client_lib} clients, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    print(
        f"{'server':<24} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'errors':>7} {'conns':>6}"
        f"   {'sent p50':>8} {'sent p99':>8}"
    )
    try:
        for kind in args.servers:
            report(LABELS[kind], run(kind, args, token, conninfo))
    finally:
        if not args.keep:
            drop_database()
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


def report(label: str, result: dict) -> None:
    print(
        f"{label:<24} {result['p50'] * 1000:>7.1f} {result['p99'] * 1000:>7.1f} "
        f"{result['max'] * 1000:>7.1f} {result['errors']:>7} {result['peak_connections']:>6}"
        f"   {result['server_p50'] * 1000:>8.1f} {result['server_p99'] * 1000:>8.1f}"
    )
    if result["error_sample"]:
        print("   errors:", result["error_sample"])
    sys.stdout.flush()


if __name__ == "__main__":
    main()
