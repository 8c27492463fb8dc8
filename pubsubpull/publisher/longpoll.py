"""Long polls: waiting for changes without a connection, and answering many with one page.

:func:`wait_for_changes` (threads) and :func:`await_changes` (coroutines)
are :func:`feed.read_changes <pubsubpull.publisher.feed.read_changes>` that
wait up to a timeout for a change. Waiters join their process's hub
(:mod:`pubsubpull.publisher.listener`): one LISTEN connection and a few
reader threads per process and database, whatever the number of waiters, and
one read per distinct (cursor, models, limit) when woken.

Answering woken polls over HTTP
-------------------------------

A long poll that has been authenticated and validated by the change feed
view waits on its process's hub; when a commit
wakes it, the normal way to answer goes back through Django: the view renders
an ``HttpResponse``, every middleware's ``process_response`` runs, the ASGI
handler encodes the headers and sends, and closing the response hops to a
thread for ``request_finished``. Per response that is a few hundred
microseconds: a thousand polls woken by one commit wait ~0.3 s for the last
answer on an idle two-core machine, seconds on a loaded one.

Under :func:`pubsubpull.asgi.long_polls` a long poll is served in two halves:

- **Arrival** goes through Django as any request does (every middleware,
  authentication, permission checks, the view's validation and its JSON
  errors). When the view would wait, it parks the poll on the hub
  (:meth:`Parking.park`) and returns a placeholder response instead; the
  middleware process it as they would the page, and the wrapper keeps the
  headers they produced (:attr:`Parking.captured`) and sends nothing.
  Django then finishes the request (its thread and connections released).
- **Wake-up** is only the waiter's coroutine: every waiter of one group
  (same cursor, models and limit, so the same page for any caller allowed to
  ask) gets the one page the hub read, rendered once into the final header
  list and body bytes, and written with two ASGI ``send`` calls.

The answer is the one the view would give: the same body, the view's
headers (``Content-Type``, ``Link``) and the middleware's headers in the same
order, ``Content-Length`` corrected when a middleware set it (from the
placeholder's empty body). What cannot be reproduced is a middleware that
*rewrites* a page's body or judges it by its content (compression, an
``ETag`` computed from the body): they see the empty placeholder and leave it
alone, so the page goes out uncompressed, without such headers.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

from asgiref.sync import sync_to_async

from pubsubpull.publisher import feed, listener

# The ``type: ignore[call-overload]`` on ``sync_to_async(..., executor=listener.readers())``:
# asgiref's hints ask for a ThreadPoolExecutor, but it only hands the executor to
# loop.run_in_executor, which takes any Executor (the readers are one).

logger = logging.getLogger("pubsubpull")

#: The ASGI scope key under which pubsubpull.asgi.long_polls hands the view a Parking.
SCOPE_KEY = "pubsubpull.long_poll"

#: The placeholder response carries this header (with a per-process value),
#: so the wrapper knows the response it intercepts is the view's placeholder
#: and not one a middleware put in its place.
MARKER = "X-Pubsubpull-Parked"
_MARKER = MARKER.encode("ascii")
_TOKEN = secrets.token_hex(8)

# -- Waiting -------------------------------------------------------------------


def _join_args(after, limit, models, using):
    """The hub, cursor, model labels and database a long poll waits on."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    explicit = feed.Position.coerce(after)
    alias, served = feed.feed_source(models, using)
    labels = tuple(sorted(r.label for r in served))
    return listener.hub(alias), explicit, labels, alias


def _outcome(outcome, after, limit, labels, alias) -> feed.Page:
    if outcome is None:  # timed out before the hub read at all
        return feed.read_changes(after, limit, list(labels), using=alias)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def wait_for_changes(
    after: feed.Position | str | None = None,
    limit: int = 100,
    models: Iterable[str] | None = None,
    *,
    timeout: float,
    using: str | None = None,
) -> feed.Page:
    """Like :func:`~pubsubpull.publisher.feed.read_changes`, but wait ``timeout`` s for a change.

    Returns as soon as a page has changes, or an empty page at the timeout.
    Woken by the capture trigger's NOTIFY, so a change is served within
    milliseconds of its commit (of the commit of every older transaction).
    The calling thread holds no database connection of this call while it
    waits: the process's feed readers read for every waiter.
    """
    if timeout <= 0:
        return feed.read_changes(after, limit, models, using=using)
    hub, explicit, labels, alias = _join_args(after, limit, models, using)
    waiter = listener.Waiter()
    event = cast(threading.Event, waiter.event)  # a waiter without a loop has an event
    hub.join(explicit, labels, limit, waiter)
    outcome = waiter.outcome if event.wait(timeout) else hub.leave(waiter)
    return _outcome(outcome, explicit, limit, labels, alias)


async def await_changes(
    after: feed.Position | str | None = None,
    limit: int = 100,
    models: Iterable[str] | None = None,
    *,
    timeout: float,
    using: str | None = None,
) -> feed.Page:
    """:func:`wait_for_changes` for async code: waiting holds no thread either.

    The reads run on the process's feed readers (a database read from the
    event loop would block it).
    """
    if timeout <= 0:
        return await sync_to_async(  # type: ignore[call-overload]  # see the top
            feed.read_changes, thread_sensitive=False, executor=listener.readers()
        )(after, limit, models, using=using)
    hub, explicit, labels, alias = _join_args(after, limit, models, using)
    waiter = listener.Waiter(asyncio.get_running_loop())
    future = cast(asyncio.Future, waiter.future)  # a waiter on a loop has a future
    hub.join(explicit, labels, limit, waiter)
    try:
        outcome = await asyncio.wait_for(asyncio.shield(future), timeout)
    except TimeoutError:
        outcome = hub.leave(waiter)
    except asyncio.CancelledError:
        hub.leave(waiter)
        raise
    if outcome is None:
        return await sync_to_async(  # type: ignore[call-overload]  # see the top
            _outcome, thread_sensitive=False, executor=listener.readers()
        )(None, explicit, limit, labels, alias)
    return _outcome(outcome, explicit, limit, labels, alias)


def stop_listening(timeout: float = 5.0) -> None:
    """Close this process's LISTEN and feed reader connections (they reopen when used).

    For tests and orderly shutdowns; an idle listener closes by itself.
    """
    listener.stop()


# -- Answering woken polls over HTTP ------------------------------------------

_TIMED_OUT = object()
_HUNG_UP = object()


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(_TIMED_OUT)


def _hung_up(future: asyncio.Future, receiving: asyncio.Future) -> None:
    if receiving.cancelled() or future.done():
        return
    if receiving.exception() is not None or receiving.result().get("type") == "http.disconnect":
        future.set_result(_HUNG_UP)


class Parking:
    """One long poll's place between the view (arrival) and the ASGI wrapper (wake-up).

    The wrapper puts one in the request's scope; the view calls :meth:`park`
    instead of waiting itself.
    """

    __slots__ = ("alias", "answer", "captured", "context", "explicit", "hub", "key", "labels",
                 "limit", "send", "sending", "timeout", "waiter")  # fmt: skip

    def __init__(self) -> None:
        self.waiter: listener.Waiter | None = None
        self.captured: tuple[tuple[bytes, bytes], ...] | None = None
        self.send: Callable[[dict], Awaitable[None]] | None = None  # once the wrapper waits
        self.sending: Any = None  # what is left of an answer the batch began

    # The view's half (on the event loop).

    def park(
        self,
        after: str | None,
        limit: int,
        models: list[str],
        timeout: float,
        *,
        key: tuple,
        answer: Callable[[Any], Any],
        placeholder: Any,
    ) -> Any:
        """Join the hub and return the placeholder response for the middleware to see.

        ``answer(outcome)`` is the view's response for the page (or the
        exception) the wait ends with; ``key`` says what besides the page its
        body depends on (the URL it links to), so waiters that share a page
        and a key share one rendering.
        """
        self.hub, self.explicit, self.labels, self.alias = _join_args(after, limit, models, None)
        self.limit, self.timeout, self.key, self.answer = limit, timeout, key, answer
        waiter = listener.Waiter(asyncio.get_running_loop(), batch=_answer_batch, owner=self)
        self.hub.join(self.explicit, self.labels, limit, waiter)
        self.waiter = waiter
        placeholder.headers[MARKER] = _TOKEN
        return placeholder

    # The wrapper's half.

    def capture(self, message: dict) -> bool:
        """Keep the headers of the view's placeholder; False for any other response."""
        if self.waiter is None or self.captured is not None:
            return False
        headers = list(message.get("headers", ()))
        if message.get("status") == 200 and (_MARKER, _TOKEN.encode()) in headers:
            self.captured = tuple(h for h in headers if h[0] != _MARKER)
            return True
        # A middleware answered in the view's place: the poll does not wait.
        self.abandon()
        return False

    def abandon(self) -> None:
        if self.waiter is not None:
            self.hub.leave(self.waiter)
            self.waiter = None

    async def answer_when_woken(self, receive, send) -> None:
        """Wait for the hub (or the timeout, or the client hanging up), then answer.

        Usually the answer has been written by then: :func:`_answer_batch`
        wrote it for every waiter woken by the same read, in one go.
        """
        loop = asyncio.get_running_loop()
        # The wrapper awaits this only after capture() kept a parked waiter's
        # headers, and nothing clears the waiter before send is set below (the
        # batch answers only then). A waiter on a loop has a future.
        waiter = cast(listener.Waiter, self.waiter)
        future = cast(asyncio.Future, waiter.future)
        self.send = send
        # The batch answers in the request's context (Django's script prefix,
        # whatever an ASGI middleware keeps in context variables for its send).
        self.context = contextvars.copy_context()
        timer = loop.call_later(self.timeout, _expire, future)
        receiving = asyncio.ensure_future(receive())
        receiving.add_done_callback(lambda r: _hung_up(future, r))
        try:
            outcome = await future
            if outcome is _HUNG_UP:
                self.abandon()
                return
            if self.sending is not None:  # written by the batch, or on its way
                sending, self.sending = self.sending, None
                await sending
                return
            if outcome is _TIMED_OUT:
                outcome = self.hub.leave(waiter)
                if outcome is None:  # timed out before the hub read at all
                    outcome = await sync_to_async(  # type: ignore[call-overload]  # see the top
                        self._read, thread_sensitive=False, executor=listener.readers()
                    )()
            self.waiter = None
            await self._send(*self.render(outcome))
        except BaseException:
            self.abandon()
            raise
        finally:
            timer.cancel()
            receiving.cancel()

    async def _send(self, status: int, headers: list, body: bytes) -> None:
        # Both callers (answer_when_woken, and the batch's _answer_now) come after send is set.
        send = cast(Callable[[dict], Awaitable[None]], self.send)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _answer_now(self, outcome: Any) -> None:
        """Write the answer from the loop's callback, without waiting for this poll's task.

        ``send`` does not usually suspend (the bytes go to the transport);
        when it does (flow control, an ASGI middleware that awaits), the
        poll's own coroutine finishes the job.
        """
        self.waiter = None
        sending = self._send(*self.render(outcome))
        try:
            blocker = sending.send(None)
        except StopIteration:
            self.sending = _DONE
        except BaseException as exc:
            self.sending = _Raise(exc)
        else:
            self.sending = _Resume(sending, blocker)

    def _read(self) -> Any:
        try:
            return _outcome(None, self.explicit, self.limit, self.labels, self.alias)
        except Exception as exc:
            return exc

    def render(self, outcome: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """The status, headers and body answering ``outcome``, rendered once per page and key."""
        if not isinstance(outcome, feed.Page):
            return self._render(outcome)
        cache_key = (SCOPE_KEY, self.key, self.captured)
        rendered = outcome.rendered.get(cache_key)
        if rendered is None:
            rendered = outcome.rendered[cache_key] = self._render(outcome)
        return rendered

    def _render(self, outcome: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        try:
            response = self.answer(outcome)
        except Exception:
            logger.exception("pubsubpull: answering a long poll failed")
            from pubsubpull.publisher.api.responses import error_response

            response = error_response(500, "server_error", "Answering the long poll failed.")
        body = response.content
        own = {}
        for name, value in response.items():
            own[name.lower().encode("ascii")] = (name.encode("ascii"), value.encode("latin1"))
        headers = []
        # Rendered for a poll that waits, and it waits once its headers are captured.
        captured = cast(tuple[tuple[bytes, bytes], ...], self.captured)
        for name, value in captured:
            lower = name.lower()
            if lower == b"content-length":
                headers.append((name, str(len(body)).encode("ascii")))
            elif lower in own:
                headers.append(own.pop(lower))
            elif lower not in (b"content-type", b"link"):  # the placeholder's own
                headers.append((name, value))
        # The view's headers the placeholder did not have (none so far), as
        # Django would send them: before the middleware's.
        return response.status_code, [*own.values(), *headers], body


def _answer_batch(waiters: list[listener.Waiter], outcome: Any) -> None:
    """Answer every poll woken by one read, from one callback on their loop.

    One rendering (per URL key) for all of them, then two sends each, with
    no task switch in between, and the cyclic garbage collector held off
    meanwhile: a collection in a process holding a thousand requests takes
    tens of milliseconds, and would otherwise often fall in the middle of the
    burst (it runs once the last answer is written).
    """
    collecting = gc.isenabled()
    if collecting:
        gc.disable()
    try:
        for waiter in waiters:
            parking = waiter.owner
            # A poll still on its way to waiting (Django finishing its
            # arrival) answers itself once it gets there.
            if parking.send is not None and parking.waiter is waiter:
                try:
                    parking.context.run(parking._answer_now, outcome)
                except Exception:  # pragma: no cover - render answers its own errors
                    logger.exception("pubsubpull: answering a woken long poll failed")
    finally:
        if collecting:
            gc.enable()


class _Done:
    def __await__(self):
        return
        yield  # pragma: no cover


_DONE = _Done()


class _Raise:
    def __init__(self, exc: BaseException):
        self.exc = exc

    def __await__(self):
        raise self.exc
        yield  # pragma: no cover


class _Resume:
    """The rest of a coroutine that suspended on ``blocker``, to be awaited in a task."""

    def __init__(self, coroutine, blocker):
        self.coroutine = coroutine
        self.blocker = blocker

    def __await__(self):
        try:
            yield self.blocker  # the task waits for what the coroutine waited for
        except BaseException:
            self.coroutine.close()
            raise
        return (yield from self.coroutine.__await__())
