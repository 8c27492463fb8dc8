"""The pull API: service document, instance snapshots, one instance, the change feed.

Plain Django views returning JSON; see docs/http-api.rst and the OpenAPI
document served at ``openapi.json``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlencode

from asgiref.sync import AsyncToSync, SyncToAsync, sync_to_async
from django.db import connection, connections
from django.db.transaction import non_atomic_requests
from django.http import HttpResponse
from django.urls import reverse
from django.utils.http import parse_etags
from django.views.decorators.csrf import csrf_exempt

from pubsubpull import conf
from pubsubpull.capture.registry import get_registration, registrations
from pubsubpull.exceptions import InvalidFilter
from pubsubpull.protocol import cloudevents, jsonbody
from pubsubpull.protocol import filters as filtering
from pubsubpull.publisher import feed, framing, listener, longpoll, snapshot
from pubsubpull.publisher.api import openapi
from pubsubpull.publisher.api.responses import (
    ApiError,
    endpoint,
    error_response,
    json_response,
    raw_json_response,
)
from pubsubpull.version import __version__


def _url(request, name: str, *args, **query) -> str:
    path = reverse(f"pubsubpull:{name}", args=args)
    query = {k: v for k, v in query.items() if v is not None}
    if query:
        path += "?" + urlencode(query, safe=",")
    return request.build_absolute_uri(path)


def _instances_url(request, label: str) -> str:
    return request.build_absolute_uri(reverse("pubsubpull:instances", args=[label]))


def _limit(request) -> int:
    text = request.GET.get("limit")
    maximum = conf.max_page_size()
    if text is None or text == "":
        return min(conf.page_size(), maximum)
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= maximum:
        raise ApiError(
            400, "invalid_limit", f"limit must be a whole number from 1 to {maximum}, not {text!r}."
        )
    return int(text)


def _parts(request) -> int:
    text = request.GET.get("parts")
    if text is None or text == "":
        return 1
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= snapshot.MAX_PARTS:
        raise ApiError(
            400,
            "invalid_parts",
            f"parts must be a whole number from 1 to {snapshot.MAX_PARTS}, not {text!r}.",
        )
    if request.GET.get("after"):
        raise ApiError(400, "invalid_parts", "parts is for the first page only (leave out after).")
    return int(text)


#: The longest ``filters`` query parameter (characters).
MAX_FILTERS = 20000


def _filters(request, models: list[str]) -> filtering.Filters:
    """The request's ``filters`` (JSON: label -> where/changed/fields), checked."""
    text = request.GET.get("filters")
    if text is None or text.strip() == "":
        return {}
    if len(text) > MAX_FILTERS:
        raise ApiError(
            400, "invalid_filter", f"filters must be at most {MAX_FILTERS} characters.",
            fields={"filters": f"must be at most {MAX_FILTERS} characters"},
        )  # fmt: skip
    try:
        data = jsonbody.loads(text, max_depth=2 * filtering.MAX_DEPTH + 4)
    except jsonbody.InvalidJSON as exc:
        detail = str(exc).replace("the body", "filters")
        raise ApiError(400, "invalid_filter", f"{detail}.", fields={"filters": detail}) from None
    try:
        return feed.parse_filters(data, models)
    except InvalidFilter as exc:
        raise ApiError(
            400, "invalid_filter", f"{exc}. Nothing was read.", fields={exc.field: exc.message}
        ) from None


def _readable(caller, label: str):
    registration = get_registration(label)
    if registration is None or registration.label != label:
        raise ApiError(
            404,
            "unknown_model",
            f"{label!r} is not a published model. The service document lists them.",
        )
    if not caller.can_read(label):
        raise ApiError(403, "permission_denied", f"The {caller.name} may not read {label}.")
    return registration


def _link(url: str, rel: str = "next") -> str:
    return f'<{url}>; rel="{rel}"'


def _estimated_counts(tables: list[str]) -> dict[str, int]:
    """Rows per table from PostgreSQL's statistics (free; for progress bars and ETAs)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT t, (SELECT reltuples FROM pg_class WHERE oid = to_regclass(quote_ident(t))) "
            "FROM unnest(%s::text[]) AS t",
            [tables],
        )
        # -1: never vacuumed or analysed, so unknown.
        return {t: int(n) for t, n in cursor.fetchall() if n is not None and n >= 0}


@endpoint("GET")
def service(request, caller):
    """What this service publishes, and where to pull it from."""
    models = []
    readable = [r for r in registrations() if caller.can_read(r.label)]
    counts = _estimated_counts([r.table for r in readable])
    for registration in readable:
        label = registration.label
        models.append(
            {
                "model": label,
                "pk": registration.pk_column,
                "fields": registration.published_columns,
                "instances": _url(request, "instances", label),
                "changes": _url(request, "changes", models=label),
                "count": counts.get(registration.table),
            }
        )
    service_path = reverse("pubsubpull:service")
    return json_response(
        {
            "service": "django-pubsubpull",
            "version": __version__,
            "models": models,
            "links": {
                "self": request.build_absolute_uri(service_path),
                "changes": _url(request, "changes"),
                "subscriptions": request.build_absolute_uri(service_path + "subscriptions/"),
                "openapi": _url(request, "openapi"),
            },
        }
    )


@endpoint("GET")
def openapi_document(request, caller):
    labels = [r.label for r in registrations() if caller.can_read(r.label)]
    server = request.build_absolute_uri(reverse("pubsubpull:service")).rstrip("/")
    return json_response(openapi.document(labels, server))


@endpoint("GET")
def instances(request, caller, model):
    """A keyset page of a model's rows; the first page also gives feed_position."""
    registration = _readable(caller, model)
    limit = _limit(request)
    parts = _parts(request)
    filters = _filters(request, [registration.label])
    after = request.GET.get("after") or None
    try:
        # Items arrive rendered by PostgreSQL, URLs included: no Python per row.
        page = snapshot.read_instances(
            registration,
            after=after,
            limit=limit,
            url_prefix=_instances_url(request, registration.label),
            parts=parts,
            model_filter=filters.get(registration.label),
        )
    except snapshot.InvalidAfter as exc:
        raise ApiError(400, "invalid_after", str(exc)) from None

    label = registration.label
    head = {"model": label}
    headers = {}
    # The filters go on with every link: the next pages, and the feed after them.
    filtered = filtering.encode(filtering.as_json(filters)) if filters else None
    if page.feed_position is not None:
        head["feed_position"] = page.feed_position.encode()
        head["changes"] = _url(
            request, "changes", after=head["feed_position"], models=label, limit=limit,
            filters=filtered,
        )  # fmt: skip
    if page.next is not None:
        head["next"] = _url(
            request, "instances", label, after=page.next, limit=limit, filters=filtered
        )
        headers["Link"] = _link(head["next"])
    else:
        head["next"] = None
    if request.GET.get("parts"):
        head["parts"] = [
            _url(request, "instances", label, after=start, limit=limit, filters=filtered)
            for start in page.parts
        ]
    head_json = json.dumps(head, ensure_ascii=False, separators=(",", ":")).encode()
    body = b"".join([head_json[:-1], b',"instances":[', b",".join(page.items), b"]}"])
    return raw_json_response(body, 200, **headers)


@endpoint("GET")
def instance(request, caller, model, pk):
    """One row, with an ETag; 304 when the caller's copy is current."""
    registration = _readable(caller, model)
    try:
        found = snapshot.read_instance(
            registration, pk, url_prefix=_instances_url(request, registration.label)
        )
    except LookupError:
        found = None
    if found is None:
        raise ApiError(404, "unknown_instance", f"{registration.label} has no instance {pk!r}.")
    body = '{"model":' + json.dumps(registration.label) + "," + found.json[1:]
    etag = '"' + hashlib.sha256(body.encode()).hexdigest()[:32] + '"'
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        etags = parse_etags(if_none_match)
        if "*" in etags or etag in etags or f"W/{etag}" in etags:
            response = raw_json_response("", 304, ETag=etag)
            del response.headers["Content-Type"]
            return response
    return raw_json_response(body, ETag=etag)


def _wait(request) -> float:
    text = request.GET.get("wait")
    if text is None or text == "":
        return 0.0
    maximum = conf.max_wait()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 <= value <= maximum):
        raise ApiError(
            400, "invalid_wait", f"wait must be a number of seconds from 0 to {maximum}."
        )
    return value


_TRUE = ("1", "true")
_FALSE = ("", "0", "false")


def _whole_transactions(request) -> bool:
    text = request.GET.get("whole_transactions")
    if text is None or text in _FALSE:
        return False
    if text in _TRUE:
        return True
    raise ApiError(
        400,
        "invalid_whole_transactions",
        f"whole_transactions must be 1 or true (never split a transaction across pages), "
        f"0 or false (the default), not {text!r}.",
    )


def _feed_models(request, caller) -> list[str]:
    """The labels a feed request serves: all recorded in one database's change log."""
    text = request.GET.get("models")
    if text is None or text.strip() == "":
        readable = [r for r in registrations() if caller.can_read(r.label)]
        if not readable:
            raise ApiError(403, "permission_denied", f"The {caller.name} may read no model.")
        # By default the models of the main change log (the one pubsubpull's
        # own tables are read from); a model stored in another database has
        # its own feed, named by its "changes" link in the service document.
        _, home = feed.feed_source(None)
        labels = [r.label for r in home if caller.can_read(r.label)]
        if labels:
            return labels
        labels = [r.label for r in readable]
    else:
        labels = sorted({label.strip() for label in text.split(",")})
        for label in labels:
            registration = get_registration(label)
            if registration is None or registration.label != label:
                raise ApiError(
                    400,
                    "invalid_models",
                    f"models names {label!r}, which is not a published model. Give a "
                    "comma-separated list of model labels from the service document.",
                )
            if not caller.can_read(label):
                raise ApiError(403, "permission_denied", f"The {caller.name} may not read {label}.")
    try:
        feed.feed_source(labels)
    except feed.SeveralDatabases as exc:
        raise ApiError(400, "several_databases", str(exc), models=exc.groups) from None
    return labels


@dataclass
class _LongPoll:
    """A valid feed request with nothing to read yet: the view awaits changes."""

    after: str | None
    limit: int
    models: list[str]
    wait: float
    filters: filtering.Filters
    whole_transactions: bool = False


def _expired(request, exc: feed.CursorExpired, models: list[str]) -> NoReturn:
    raise ApiError(
        410,
        "cursor_expired",
        str(exc),
        snapshot={label: _url(request, "instances", label) for label in models},
    )


@endpoint("GET")
def _changes(request, caller):
    """Validate a feed request; read its page, or describe the long poll to wait for."""
    models = _feed_models(request, caller)
    _framing(request)  # a bad format is 400 now, not after a wait
    limit = _limit(request)
    wait = _wait(request)
    whole = _whole_transactions(request)
    filters = _filters(request, models)
    after = request.GET.get("after") or None
    try:
        if wait > 0:
            feed.Position.coerce(after)  # a bad cursor is 400 now, not after the wait
            return _LongPoll(after, limit, models, wait, filters, whole)
        page = feed.read_changes(after, limit, models, whole_transactions=whole, filters=filters)
    except feed.InvalidCursor as exc:
        raise ApiError(400, "invalid_cursor", str(exc)) from None
    except feed.CursorExpired as exc:
        _expired(request, exc, models)
    return _page(request, page)


def _framing(request) -> str:
    """The framing a feed request asks for: ``?format=``, else its ``Accept`` header.

    ``Accept: application/cloudevents-batch+json`` (the CloudEvents HTTP
    binding's batched mode) asks for CloudEvents; anything else for the default.
    """
    given = request.GET.get("format")
    if given is None or given == "":
        for part in request.headers.get("Accept", "").split(","):
            media, *params = (p.strip().lower() for p in part.split(";"))
            if media == cloudevents.BATCH_CONTENT_TYPE and "q=0" not in params:
                return "cloudevents"
        return "pubsubpull"
    if given not in cloudevents.FRAMINGS:
        raise ApiError(
            400,
            "invalid_format",
            f"format must be one of {', '.join(cloudevents.FRAMINGS)}: pubsubpull (the "
            "default page) or cloudevents (a CloudEvents 1.0 JSON batch).",
        )
    return given


def _page_key(request) -> tuple:
    """What a page's body depends on besides the page: the URL it links to.

    (The raw Host header is part of it, so a host that fails validation
    never reaches a cached body.)
    """
    return (
        request.scheme,
        request.META.get("HTTP_HOST"),
        request.path,
        request.GET.get("models"),
        request.GET.get("limit") or None,
        _whole_transactions(request),
        request.GET.get("filters") or None,
        _framing(request),
    )


def _page(request, page: feed.Page) -> HttpResponse:
    # A page woken for many long polls answers them all with the same body:
    # render it once per URL it links to.
    key = _page_key(request)
    cached = page.rendered.get(key)
    if cached is None:
        cursor = page.next.encode()
        # The next page is asked for as this one was (framing included).
        next_url = _url(
            request,
            "changes",
            after=cursor,
            limit=request.GET.get("limit") or None,
            models=request.GET.get("models"),
            filters=request.GET.get("filters") or None,
            whole_transactions="1" if _whole_transactions(request) else None,
            format=request.GET.get("format") or None,
        )
        if key[-1] == "cloudevents":
            # A batch is a JSON array: the page's cursor and next link go in headers.
            body = framing.batch_bytes(page.changes, page.texts())
            cached = page.rendered[key] = (body, _link(next_url), cursor)
        else:
            tail_values: dict[str, Any] = {"cursor": cursor, "next": next_url}
            if page.more:
                # A page that is not the last though short of the limit (a filtered
                # one stopped at its scan bound, or whole transactions): read on now.
                tail_values["more"] = True
            # Each change is rendered from the JSON text PostgreSQL stored.
            tail = json.dumps(tail_values, ensure_ascii=False)
            body = b'{"changes":' + page.changes_json_bytes() + b"," + tail[1:].encode()
            cached = page.rendered[key] = (body, _link(next_url), None)
    body, link, batch_cursor = cached
    response = raw_json_response(body, Link=link)
    if batch_cursor is not None:
        response["Pubsubpull-Cursor"] = batch_cursor
        response["Content-Type"] = cloudevents.BATCH_CONTENT_TYPE
    return response


def _waits(request) -> bool:
    """Whether the request asks to long-poll (checked properly once authenticated)."""
    try:
        return float(request.GET.get("wait") or 0) > 0
    except ValueError:
        return False


def _release_connections() -> None:
    """Close the request thread's database connections before it waits.

    Under WSGI Django keeps a thread's connection until the request ends; a
    waiting poll must not hold one. (Kept when in a transaction: not ours.)
    """
    for connection_ in connections.all(initialized_only=True):
        if not connection_.in_atomic_block:
            connection_.close()


def _request_has_a_thread() -> bool:
    """Whether this request's thread-sensitive code runs on a thread that exists.

    Under WSGI it is the server's thread for the request; under ASGI, Django's
    handler starts one per request (for request_started's receivers and sync
    middleware), or pubsubpull.asgi.long_polls shares one between long polls.
    Only such a thread can hold a connection of this request; when there is
    none, asking for one would start a thread to no end.
    """
    if getattr(AsyncToSync.executors, "current", None) is not None:
        return True
    context = SyncToAsync.thread_sensitive_context.get(None)
    return context is not None and context in SyncToAsync.context_to_thread_executor


async def changes(request):
    """The gap-free change feed. An async view: a waiting long poll holds no database
    connection (under WSGI and ASGI), and under ASGI no thread (pubsubpull.asgi)."""
    if not _waits(request):
        # A plain read, on the request's own connection as in any view.
        return await sync_to_async(_changes, thread_sensitive=True)(request)
    if _request_has_a_thread():
        await sync_to_async(_release_connections, thread_sensitive=True)()
    # Authenticate and validate on the feed's reader threads, so a burst of
    # new polls opens no connection each.
    readers = listener.readers()
    # asgiref's hints ask for a ThreadPoolExecutor; it hands the executor to
    # loop.run_in_executor, which takes any Executor (the readers are one).
    result = await sync_to_async(  # type: ignore[call-overload]
        _changes, thread_sensitive=False, executor=readers
    )(request)
    if not isinstance(result, _LongPoll):
        return result
    if result.filters:
        return _answer(request, result.models, await _await_filtered(result))
    parking = getattr(request, "scope", {}).get(longpoll.SCOPE_KEY)
    if parking is not None and not result.whole_transactions:
        # Under pubsubpull.asgi.long_polls: the wrapper waits and answers,
        # with the headers the middleware give this placeholder. (The page
        # links to this host: a host that fails validation is refused now,
        # as Django would refuse it when the page is rendered.)
        request.get_host()
        return parking.park(
            result.after,
            result.limit,
            result.models,
            result.wait,
            key=_page_key(request),
            answer=lambda outcome: _answer(request, result.models, outcome),
            placeholder=raw_json_response(b"", Link=""),
        )
    outcome: feed.Page | feed.CursorExpired
    try:
        outcome = await longpoll.await_changes(
            result.after, result.limit, result.models, timeout=result.wait
        )
        if result.whole_transactions and outcome.changes:
            # Waiters share plain pages (listener.py); woken with changes,
            # this one reads its page again ending at a transaction boundary.
            outcome = await sync_to_async(  # type: ignore[call-overload]  # see above
                feed.read_changes, thread_sensitive=False, executor=readers
            )(result.after, result.limit, result.models, whole_transactions=True)
    except feed.CursorExpired as exc:
        outcome = exc
    return _answer(request, result.models, outcome)


async def _await_filtered(poll: _LongPoll) -> feed.Page | feed.CursorExpired:
    """A filtered long poll: wait for any change of its models, then read it filtered.

    The process's hub wakes waiters per (cursor, models, limit); a change the
    filter skips moves this poll's cursor past it, and it waits again until a
    change matches, a page stops at its scan bound, or the time is up.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + poll.wait
    read = sync_to_async(  # type: ignore[call-overload]  # see longpoll's top
        feed.read_changes, thread_sensitive=False, executor=listener.readers()
    )
    after: feed.Position | str | None = poll.after
    try:
        while True:
            page = await read(
                after,
                poll.limit,
                poll.models,
                filters=poll.filters,
                whole_transactions=poll.whole_transactions,
            )
            remaining = deadline - loop.time()
            if page.changes or page.more or remaining <= 0:
                return page
            after = page.next
            await longpoll.await_changes(after, 1, poll.models, timeout=remaining)
    except feed.CursorExpired as exc:
        return exc


def _answer(request, models: list[str], outcome) -> HttpResponse:
    """The feed's answer to a long poll that ended with ``outcome`` (a page or an error)."""
    if isinstance(outcome, feed.CursorExpired):
        try:
            _expired(request, outcome, models)
        except ApiError as error:
            return error_response(error.status, error.code, error.detail, **error.extra)
    if isinstance(outcome, BaseException):
        raise outcome
    return _page(request, outcome)


def _outside_transactions(view):
    """ATOMIC_REQUESTS cannot wrap an async view; it reads outside any transaction
    anyway (see endpoint()), on every database."""
    for alias in connections.settings:
        view = non_atomic_requests(alias)(view)
    return view


changes = _outside_transactions(csrf_exempt(changes))
