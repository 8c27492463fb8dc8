"""Settings of the service benchmarks/longpoll.py serves: the publisher test service.

``LONGPOLL_MIDDLEWARE=full`` (the default) keeps the publisher's whole
middleware stack (sessions, CSRF, messages, ...); ``api`` keeps only what an
API-only service needs: pubsubpull's RequestMiddleware, which is async (every
MiddlewareMixin middleware makes Django run a thread for each request under
ASGI). Every
connection the server opens carries the application_name the benchmark
counts (PGAPPNAME, set by the benchmark). Its URLs: benchmarks/longpoll_urls.py.
"""

import os

from publisher.settings import *  # noqa: F403
from publisher.settings import MIDDLEWARE

DEBUG = False
ROOT_URLCONF = "benchmarks.longpoll_urls"
if os.environ.get("LONGPOLL_MIDDLEWARE", "full") == "api":
    MIDDLEWARE = ["pubsubpull.middleware.RequestMiddleware"]
