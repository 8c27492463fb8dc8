"""tests/asgi_publisher.py's ``application``, with edges for tests/test_runtime_edges.py.

``application`` also answers ``POST /_test/stop-listening``: it stops the
process's change feed listening (``longpoll.stop_listening()``, what an orderly
shutdown calls) while polls wait. ``application_behind_a_failing_send`` is
served behind an ASGI middleware whose ``send`` raises for a request with an
``X-Test-Fail-Send`` header (a middleware that fails, a broken transport);
``application_behind_a_stuck_send`` behind one that gives up on a request after
2 s, and whose ``send`` never returns for a request with an ``X-Test-Stuck-Send``
header (a client that reads nothing).
"""

from __future__ import annotations

import asyncio
import contextlib

from asgiref.sync import sync_to_async

from tests.asgi_publisher import application as publisher


async def application(scope, receive, send):
    if scope["type"] == "http" and scope["path"].endswith("/_test/stop-listening"):
        from pubsubpull.publisher import longpoll

        await sync_to_async(longpoll.stop_listening, thread_sensitive=False)()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await publisher(scope, receive, send)


async def application_behind_a_failing_send(scope, receive, send):
    if scope["type"] == "http" and (b"x-test-fail-send", b"1") in scope.get("headers", []):

        async def failing_send(message):
            raise RuntimeError("the test middleware's send failed")

        return await publisher(scope, receive, failing_send)
    await publisher(scope, receive, send)


async def application_behind_a_stuck_send(scope, receive, send):
    """Behind a middleware that gives each request 2 s (``asyncio.timeout``), and for a
    request with the header a ``send`` that never returns."""
    if scope["type"] == "http" and (b"x-test-stuck-send", b"1") in scope.get("headers", []):

        async def stuck_send(message):
            await asyncio.sleep(3600)

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await publisher(scope, receive, stuck_send)
        return
    await publisher(scope, receive, send)
