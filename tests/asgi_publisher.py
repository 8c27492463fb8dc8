"""The publisher test service as an ASGI application, for tests that serve it with uvicorn.

Besides the service it answers ``GET /_test/waiting`` with how many long polls
wait in the server process, so a test knows when its polls are all waiting.

    python -m uvicorn --app-dir test-projects/publisher tests.asgi_publisher:application
"""

from __future__ import annotations

import json

from django.core.asgi import get_asgi_application

from pubsubpull.asgi import long_polls

# As the docs tell a service to: long polls share one thread.
service = long_polls(get_asgi_application())


async def application(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/_test/waiting":
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
