"""The publisher test service as an ASGI application, for tests that serve it with uvicorn.

``application`` is served as the docs say; ``application_through_django``
answers woken long polls through Django's handler instead (the comparison),
``application_behind_a_slow_send`` is served behind a middleware whose send
suspends.
Besides the service they answer ``GET /_test/waiting`` with how many long polls
wait in the server process, so a test knows when its polls are all waiting.

    python -m uvicorn --app-dir test-projects/publisher tests.asgi_publisher:application
"""

from __future__ import annotations

import asyncio
import json

from django.core.asgi import get_asgi_application

from pubsubpull.asgi import long_polls

# As the docs tell a service to: long polls share a few threads, and woken
# ones are answered directly.
django_application = get_asgi_application()
service = long_polls(django_application)
# The same, but woken polls go back through Django's handler and middleware.
through_django = long_polls(django_application, answer_directly=False)


async def application(scope, receive, send):
    await _serve(service, scope, receive, send)


async def application_through_django(scope, receive, send):
    await _serve(through_django, scope, receive, send)


async def application_behind_a_slow_send(scope, receive, send):
    """Behind an ASGI middleware whose ``send`` suspends (as one that awaits I/O would):
    the woken polls' answers, begun in one callback, are finished by their own tasks."""

    async def slow_send(message):
        await asyncio.sleep(0.01)
        await send(message)

    await _serve(service, scope, receive, slow_send)


async def _serve(service, scope, receive, send):
    if scope["type"] == "http" and scope["path"].endswith("/_test/waiting"):
        from pubsubpull.publisher import listener

        body = json.dumps({"waiting": listener.waiting()}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    await service(scope, receive, send)
