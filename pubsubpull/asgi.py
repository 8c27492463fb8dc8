"""Serve long polls under ASGI without a thread per waiting request.

Django's ASGI handler gives every request a thread of its own for its
synchronous parts (the ``request_started`` receivers, each ``MiddlewareMixin``
middleware, closing the response), started with the request and kept until
it ends. For a long poll that waits 30 seconds that is a parked thread per
waiting client, and a thread started and joined per poll. Wrap the
application so that long polls share a few such threads instead (their own
reads run on the change feed's reader threads anyway): ``THREADS`` for all
the long polls of the process, not one each::

    # asgi.py
    from django.core.asgi import get_asgi_application

    from pubsubpull.asgi import long_polls

    application = long_polls(get_asgi_application())

Every other request is served exactly as before.

The wrapper also answers woken long polls itself: a poll arrives through
Django as usual (middleware, authentication, the view's checks and errors),
the view parks it and gives the middleware an empty placeholder response
whose headers the wrapper keeps, and when a commit wakes the polls every
poll woken by one read gets the same page, rendered once, written from one
callback on the event loop (:mod:`pubsubpull.publisher.longpoll`).
"""

from __future__ import annotations

import concurrent.futures
import inspect
import itertools
import warnings
from typing import Any
from urllib.parse import parse_qsl

from asgiref.sync import ThreadSensitiveContext

from pubsubpull.publisher.longpoll import SCOPE_KEY, Parking

# Threads the sync parts of all long polls of a process share.
THREADS = 4


def is_long_poll(scope: dict[str, Any]) -> bool:
    """Whether an ASGI request is a change feed request that asks to wait."""
    if scope.get("type") != "http" or not scope.get("path", "").endswith("/changes/"):
        return False
    query = scope.get("query_string", b"").decode("latin-1")
    for name, value in parse_qsl(query):
        if name == "wait":
            try:
                return float(value) > 0
            except ValueError:
                return False
    return False


def long_polls(application, *, answer_directly: bool = True):
    """Wrap a Django ASGI application: long polls share a few threads for their sync parts.

    With ``answer_directly`` (the default) a woken long poll is answered by
    the wrapper with the page rendered once for every poll that waited for
    it (see :mod:`pubsubpull.publisher.longpoll`); without, each goes back
    through Django's handler and middleware.

    Needs an asgiref whose ``ThreadSensitiveContext`` takes an ``executor``
    (3.13 does); with an older one the application is served unchanged, with
    a warning.
    """
    # Not measured: the tests run with a current asgiref; an older one (Django 5.2
    # accepts asgiref 3.8) takes this branch.
    if "executor" not in inspect.signature(ThreadSensitiveContext).parameters:  # pragma: no cover
        warnings.warn(
            "pubsubpull.asgi.long_polls needs asgiref's ThreadSensitiveContext(executor=...) "
            "(asgiref 3.13 has it): long polls keep Django's thread per request.",
            RuntimeWarning,
            stacklevel=2,
        )
        return application
    # A few threads, each a request's one thread as Django would give it (a
    # request's sync parts all run on the same thread, in order), taken in
    # turn: their sync parts (signal receivers, middleware) are short.
    executors = [
        concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"pubsubpull-long-polls-{n}"
        )
        for n in range(THREADS)
    ]
    turn = itertools.cycle(executors)

    if not answer_directly:

        async def through_django(scope, receive, send):
            if is_long_poll(scope):
                # Django's own per-request context then defers to this one.
                async with ThreadSensitiveContext(executor=next(turn)):
                    return await application(scope, receive, send)
            return await application(scope, receive, send)

        return through_django

    async def wrapped(scope, receive, send):
        if not is_long_poll(scope):
            return await application(scope, receive, send)
        parking = Parking()
        scope = {**scope, SCOPE_KEY: parking}

        async def intercept(message):
            # Once the placeholder's headers are kept, its body is not sent either.
            if parking.captured is None and (
                message["type"] != "http.response.start" or not parking.capture(message)
            ):
                await send(message)

        try:
            # Django's own per-request context then defers to this one.
            async with ThreadSensitiveContext(executor=next(turn)):
                await application(scope, receive, intercept)
            if parking.captured is not None:
                await parking.answer_when_woken(receive, send)
        finally:
            parking.abandon()  # the client left before the view answered, say

    return wrapped
