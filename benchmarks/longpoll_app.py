"""The server applications benchmarks/longpoll.py runs: the publisher, timing long polls.

``asgi()`` (a uvicorn ``--factory``) is the publisher's ASGI application
wrapped in ``pubsubpull.asgi.long_polls``, as the docs say to serve it
(``LONGPOLL_DESIGN=django``: without its direct answers);
``wsgi()`` (for gunicorn) its WSGI application. Both note when each long
poll's response has been handed to the server to send, and answer
``GET /_bench/sent`` with those times (CLOCK_MONOTONIC, the same in every
process of the machine), emptying the list: the server's share of a poll's
commit-to-answer time, without the client's.
"""

from __future__ import annotations

import json
import os
import threading
import time

_sent: list[float] = []
_lock = threading.Lock()


def _take() -> bytes:
    with _lock:
        body = json.dumps(_sent).encode()
        _sent.clear()
    return body


def _note() -> None:
    with _lock:
        _sent.append(time.monotonic())


def asgi():
    from django.core.asgi import get_asgi_application

    from pubsubpull.asgi import is_long_poll, long_polls

    # LONGPOLL_DESIGN=django: woken polls go back through Django's handler
    # and middleware, each rendering its own response (the design before).
    direct = os.environ.get("LONGPOLL_DESIGN", "direct") == "direct"
    service = long_polls(get_asgi_application(), answer_directly=direct)

    async def application(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/_bench/sent":
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": _take()})
            return None
        if not is_long_poll(scope):
            return await service(scope, receive, send)

        async def timed(message):
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                _note()

        return await service(scope, receive, timed)

    return application


class _Timed:
    """A WSGI response whose close() (after the server wrote it) notes the time."""

    def __init__(self, result):
        self.result = result

    def __iter__(self):
        return iter(self.result)

    def close(self):
        _note()
        close = getattr(self.result, "close", None)
        if close is not None:
            close()


def wsgi():
    from django.core.wsgi import get_wsgi_application

    service = get_wsgi_application()

    def application(environ, start_response):
        if environ.get("PATH_INFO") == "/_bench/sent":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [_take()]
        result = service(environ, start_response)
        if "wait=" in environ.get("QUERY_STRING", ""):
            return _Timed(result)
        return result

    return application
