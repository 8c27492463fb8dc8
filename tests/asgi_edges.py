"""tests/asgi_publisher.py's ``application``, with edges for tests/test_runtime_edges.py.

``application`` also answers ``POST /_test/stop-listening``: it stops the
process's change feed listening (``longpoll.stop_listening()``, what an orderly
shutdown calls) while polls wait. ``application_behind_a_failing_send`` is
served behind an ASGI middleware whose ``send`` raises for a request with an
``X-Test-Fail-Send`` header (a middleware that fails, a broken transport).
"""

from __future__ import annotations

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
