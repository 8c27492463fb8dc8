"""tests/asgi_publisher.py's ``application``, plus ``POST /_test/stop-listening``.

That stops the process's change feed listening (``longpoll.stop_listening()``,
what an orderly shutdown calls) while polls wait, for tests/test_runtime_edges.py.
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
