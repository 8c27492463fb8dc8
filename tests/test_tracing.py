"""A trace runs from a write in the customers service to the handler in billing.

The W3C ``traceparent``/``tracestate`` of the request that made a change is
kept with its request row, served in the change item, and sent as headers on
the notification that carries it; with OpenTelemetry installed the delivery
worker and the receiver continue the trace. Both ways are tested:

- with OpenTelemetry: this process's tracer provider is the SDK's, with its
  in-memory exporter, and the live server (publisher and receiver) runs in a
  thread of this process, so every span lands in one exporter;
- without it: a subprocess whose import of ``opentelemetry`` is blocked (a
  meta-path finder raising ImportError, as a missing package does) imports
  every module that traces and checks what they do then; and the same end to
  end delivery as with OpenTelemetry runs with ``pubsubpull.tracing._trace``
  set to None, the state that subprocess shows the failed import leaves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from django.test import Client
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from customers.models import Customer
from pubsubpull import tracing
from pubsubpull.client.handlers import call_handler
from pubsubpull.client.models import RemoteSubscription
from pubsubpull.models import Request
from pubsubpull.protocol import items, tracecontext
from pubsubpull.protocol.events import Event
from pubsubpull.publisher import feed

from . import trace_urls
from .delivery_helpers import drain_settled, make_subscription, use_fast_settings

ROOT = Path(__file__).resolve().parent.parent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
STATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
OTHER_TRACE = "0af7651916cd43dd8448eb211c80319c"
OTHER = f"00-{OTHER_TRACE}-b7ad6b7169203331-01"

_EXPORTER = InMemorySpanExporter()


_RECORDING: list[TracerProvider] = []


@pytest.fixture(scope="module", autouse=True)
def _sdk():
    """The SDK's tracer provider for this process (it can be set once), recording in memory."""
    if _RECORDING:
        return  # the fixture may run again in one session; one processor is enough
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    _RECORDING.append(provider)


@pytest.fixture
def spans():
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def _hex(span_id: int) -> str:
    return f"{span_id:016x}"


def _header_of(context) -> str:
    """A span context's traceparent (the SDK may set flags besides sampled)."""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _trace_of(span) -> str:
    return f"{span.context.trace_id:032x}"


# -- The headers, as kept -------------------------------------------------------


def test_a_valid_traceparent_is_kept_as_it_came():
    assert str(tracecontext.parse_traceparent(PARENT)) == PARENT
    assert tracecontext.parse(f" {PARENT}\t", f"{STATE}, ,") == (PARENT, STATE)
    unsampled = tracecontext.parse_traceparent(PARENT[:-2] + "00")
    assert unsampled is not None and not unsampled.sampled
    # A later version is read by its first 55 characters and kept as version 00.
    future = tracecontext.parse_traceparent(f"cc-{TRACE}-00f067aa0ba902b7-09-whatever")
    assert str(future) == PARENT


BAD_TRACEPARENTS = {
    "too long": PARENT + "0",
    "far too long": PARENT + "-" + "0" * 10_000,
    "version 00 with more fields": PARENT + "-00",
    "version ff": "ff" + PARENT[2:],
    "not a version": "0g" + PARENT[2:],
    "too short": PARENT[:-1],
    "upper case": PARENT.upper(),
    "trace id of zeros": f"00-{'0' * 32}-00f067aa0ba902b7-01",
    "parent id of zeros": f"00-{TRACE}-{'0' * 16}-01",
    "a line break": PARENT[:20] + "\r\nX-Evil: 1" + PARENT[20:],
    "a quote": PARENT[:-2] + "'1",
    "SQL": f"00-{TRACE}-00f067aa0ba902b7-01'; DROP TABLE pubsubpull_request; --",
    "NUL": PARENT[:10] + "\x00" + PARENT[11:],
    "non-ASCII": PARENT[:10] + "é" + PARENT[11:],
    "two headers joined": f"{PARENT},{OTHER}",
    "empty": "",
}


@pytest.mark.parametrize("value", BAD_TRACEPARENTS.values(), ids=BAD_TRACEPARENTS.keys())
def test_an_invalid_traceparent_is_dropped_with_its_tracestate(value):
    assert tracecontext.parse_traceparent(value) is None
    assert tracecontext.parse(value, STATE) == (None, None)


def test_a_tracestate_is_kept_only_in_the_grammar_and_within_the_limits():
    parse = tracecontext.parse_tracestate
    assert parse("a=1,b@sys=x y") == "a=1,b@sys=x y"
    for bad in ("a=1,a=2", "A=1", "a", "a=", "a=1\r\nb=2", "a=1=2", "a=x\x00", "é=1", "a=1;b=2"):
        assert parse(bad) is None, bad
    assert parse("a=1," * 3000) is None  # over 8192 characters: not read
    many = ",".join(f"k{n}=v" for n in range(40))
    assert parse(many) == ",".join(f"k{n}=v" for n in range(32))
    # Over 512 characters: members over 128 go first, then from the right.
    long_members = [f"long{n}={'x' * 200}" for n in range(2)]
    short_members = [f"s{n}={'y' * 60}" for n in range(10)]
    kept = parse(",".join([*long_members, *short_members]))
    assert kept is not None and len(kept) <= 512
    assert (
        "long" not in kept and kept.startswith("s0=") and kept.count(",") == 7
    )  # 8 of 63 characters: 511


# -- The request row -------------------------------------------------------------


@pytest.mark.django_db
def test_the_request_row_keeps_the_trace_of_the_request_that_made_the_change():
    answer = Client().put(
        "/customers/5/",
        {"name": "Ada"},
        content_type="application/json",
        headers={"traceparent": PARENT, "tracestate": STATE},
    )
    assert answer.status_code == 201
    [row] = Request.objects.all()
    assert (row.traceparent, row.tracestate) == (PARENT, STATE)
    # A request without one keeps none.
    Client().put("/customers/6/", {"name": "Grace"}, content_type="application/json")
    assert Request.objects.filter(traceparent="").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("value", BAD_TRACEPARENTS.values(), ids=BAD_TRACEPARENTS.keys())
def test_an_attackers_traceparent_is_not_stored_and_the_write_goes_through(value):
    answer = Client().put(
        "/customers/5/",
        {"name": "Ada"},
        content_type="application/json",
        headers={"traceparent": value, "tracestate": STATE},
    )
    assert answer.status_code == 201
    [row] = Request.objects.all()
    assert (row.traceparent, row.tracestate) == ("", "")
    assert Customer.objects.get(pk=5).name == "Ada"


@pytest.mark.django_db
def test_a_bad_tracestate_is_dropped_and_the_traceparent_kept():
    Client().put(
        "/customers/5/",
        {"name": "Ada"},
        content_type="application/json",
        headers={"traceparent": PARENT, "tracestate": "a=1,a=2"},
    )
    [row] = Request.objects.all()
    assert (row.traceparent, row.tracestate) == (PARENT, "")


@pytest.mark.django_db
def test_with_an_active_span_the_request_row_keeps_the_spans_trace_not_the_header(spans):
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("the view") as span:
        Client().put(
            "/customers/5/",
            {"name": "Ada"},
            content_type="application/json",
            headers={"traceparent": OTHER},
        )
    [row] = Request.objects.all()
    assert row.traceparent == _header_of(span.get_span_context())


@pytest.mark.django_db
def test_a_context_block_keeps_the_active_spans_trace(spans):
    import pubsubpull

    tracer = trace.get_tracer("test")
    with (
        tracer.start_as_current_span("nightly import") as span,
        pubsubpull.context(command="import") as job,
    ):
        Customer.objects.create(name="Ada")
    with pubsubpull.context(command="untraced") as untraced:
        Customer.objects.create(name="Grace")
    row = Request.objects.get(pk=job.id)
    assert row.traceparent == _header_of(span.get_span_context())
    assert Request.objects.get(pk=untraced.id).traceparent == ""


# -- The feed ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_feed_serves_each_changes_own_trace_in_its_request():
    client = Client()
    client.put("/customers/5/", {"name": "Ada"}, content_type="application/json",
               headers={"traceparent": PARENT, "tracestate": STATE})  # fmt: skip
    client.put("/customers/6/", {"name": "Grace"}, content_type="application/json",
               headers={"traceparent": OTHER})  # fmt: skip
    client.put("/customers/7/", {"name": "Linus"}, content_type="application/json")
    changes = feed.read_changes(None, 10, ["customers.customer"]).changes
    requests = [c.as_json()["request"] for c in changes]
    assert [(r.get("traceparent"), r.get("tracestate")) for r in requests] == [
        (PARENT, STATE),
        (OTHER, None),
        (None, None),
    ]
    assert list(requests[0]) == ["user", "method", "path", "traceparent", "tracestate"]
    assert [c.trace() for c in changes] == [(PARENT, STATE), (OTHER, None), (None, None)]
    for change in changes:
        item = json.loads(change.as_json_text())
        assert list(item) == list(items.CHANGE_KEYS)


# -- End to end, over real HTTP ------------------------------------------------------


@pytest.fixture
def traced_receiver(live_server, settings):
    """The live server serves the publisher and a receiver; one subscription links them."""
    use_fast_settings(settings)
    settings.ROOT_URLCONF = trace_urls.__name__
    trace_urls.HANDLED.clear()
    callback = f"{live_server.url}/hooks/traced/"
    subscribed = make_subscription(callback, name="billing")
    RemoteSubscription.objects.create(
        publisher=f"{live_server.url}/pubsubpull/",
        name="billing",
        callback=callback,
        model_labels=["customers.customer"],
        secret=subscribed.secret,
    )
    return live_server, subscribed.subscription


def _write(server, pk: int, name: str, headers: dict[str, str]) -> None:
    answer = httpx.put(f"{server.url}/customers/{pk}/", json={"name": name}, headers=headers)
    assert answer.status_code == 201, answer.text


def _delivered(monkeypatch) -> list[httpx.Request]:
    sent: list[httpx.Request] = []
    original = httpx.Client.send

    def keep(self, request, **kwargs):
        sent.append(request)
        return original(self, request, **kwargs)

    monkeypatch.setattr(httpx.Client, "send", keep)  # records, sends for real
    return sent


@pytest.mark.django_db(transaction=True)
def test_a_trace_runs_from_the_write_to_the_handler_in_the_other_service(
    traced_receiver, spans, monkeypatch
):
    server, subscription = traced_receiver
    _write(server, 5, "Ada", {"traceparent": PARENT, "tracestate": STATE})
    _write(server, 6, "Grace", {"traceparent": OTHER})
    sent = _delivered(monkeypatch)

    assert drain_settled(subscription.pk) == "caught_up"

    [notification] = [r for r in sent if r.url.path == "/hooks/traced/"]
    by_name = {s.name: s for s in spans.get_finished_spans()}
    send = by_name["pubsubpull send billing"]
    receive = by_name["pubsubpull receive billing"]
    # The delivery is a child of the first change's request; it links the other.
    assert _trace_of(send) == TRACE and _hex(send.parent.span_id) == "00f067aa0ba902b7"
    assert [f"{link.context.trace_id:032x}" for link in send.links] == [OTHER_TRACE]
    assert send.kind == trace.SpanKind.PRODUCER
    # The notification's header is the delivery span's; tracestate passed on.
    assert notification.headers["traceparent"] == _header_of(send.context)
    assert _header_of(send.context).startswith(f"00-{TRACE}-")
    assert notification.headers["tracestate"] == STATE
    # The receiver continues it; each change is handled in its own request's trace.
    assert receive.parent.span_id == send.context.span_id and _trace_of(receive) == TRACE
    (ada, ada_trace), (grace, grace_trace) = trace_urls.HANDLED
    assert ada.request["traceparent"] == PARENT and grace.request["traceparent"] == OTHER
    processed = [s for s in spans.get_finished_spans() if s.name.startswith("pubsubpull process")]
    first, second = processed
    assert first.parent.span_id == receive.context.span_id and _trace_of(first) == TRACE
    assert _trace_of(second) == OTHER_TRACE and _hex(second.parent.span_id) == "b7ad6b7169203331"
    assert [link.context.span_id for link in second.links] == [receive.context.span_id]
    assert ada_trace[0] == _header_of(first.context)
    assert grace_trace[0] == _header_of(second.context)


@pytest.mark.django_db(transaction=True)
def test_without_opentelemetry_the_notification_carries_the_stored_trace_as_it_is(
    traced_receiver, spans, monkeypatch
):
    # The state the failed import leaves (see the subprocess test below).
    monkeypatch.setattr(tracing, "_trace", None)
    monkeypatch.setattr(tracing, "AVAILABLE", False)
    server, subscription = traced_receiver
    _write(server, 7, "Linus", {})
    _write(server, 5, "Ada", {"traceparent": PARENT, "tracestate": STATE})
    sent = _delivered(monkeypatch)

    assert drain_settled(subscription.pk) == "caught_up"

    [notification] = [r for r in sent if r.url.path == "/hooks/traced/"]
    # The first change with a trace gives the batch's: the second change's here.
    assert notification.headers["traceparent"] == PARENT
    assert notification.headers["tracestate"] == STATE
    (linus, linus_trace), (ada, ada_trace) = trace_urls.HANDLED
    assert "traceparent" not in linus.request and ada.request["traceparent"] == PARENT
    assert linus_trace == ada_trace == (None, None)  # nothing was started
    assert spans.get_finished_spans() == ()


@pytest.mark.django_db(transaction=True)
def test_a_batch_without_any_trace_sends_no_trace_header(traced_receiver, monkeypatch):
    server, subscription = traced_receiver
    _write(server, 7, "Linus", {"traceparent": "not one"})
    sent = _delivered(monkeypatch)
    assert drain_settled(subscription.pk) == "caught_up"
    [notification] = [r for r in sent if r.url.path == "/hooks/traced/"]
    # With OpenTelemetry the delivery span starts a trace of its own.
    assert tracecontext.parse_traceparent(notification.headers["traceparent"]) is not None
    monkeypatch.setattr(tracing, "_trace", None)
    with tracing.send_span("billing", [(None, None)]) as headers:
        assert headers == {}


@pytest.mark.django_db(transaction=True)
def test_the_receiver_ignores_a_forged_trace_header_and_still_handles(
    traced_receiver, spans, monkeypatch
):
    """A traceparent is not signed: a bad one must not break the receiver."""
    server, subscription = traced_receiver
    _write(server, 5, "Ada", {})
    original = tracing.send_span

    def forged(subscription, traces):
        with original(subscription, traces):
            yield {"traceparent": "00-" + "z" * 32 + "-00f067aa0ba902b7-01", "tracestate": "a"}

    import contextlib

    monkeypatch.setattr(tracing, "send_span", contextlib.contextmanager(forged))
    assert drain_settled(subscription.pk) == "caught_up"
    [(ada, _)] = trace_urls.HANDLED
    assert ada.pk == 5
    # Its receive span started a trace of its own instead.
    [receive] = [s for s in spans.get_finished_spans() if s.name.startswith("pubsubpull receive")]
    assert receive.parent is None


def test_the_pull_loop_handles_each_change_in_its_own_trace(spans):
    handled = []
    events = [
        Event.from_change({"model": "customers.customer", "op": "insert", "pk": 1,
                           "request": {"user": None, "method": "PUT", "path": "/",
                                       "traceparent": PARENT}}),
        Event.from_change({"model": "customers.customer", "op": "insert", "pk": 2,
                           "request": {"user": None, "method": "PUT", "path": "/",
                                       "traceparent": "00-bad"}}),
    ]  # fmt: skip
    with tracing.receive_span("billing-pull", count=2):
        call_handler(lambda event: handled.append(tracing.current()), events)
    by_name = {}
    for span in spans.get_finished_spans():
        by_name.setdefault(span.name, []).append(span)
    [page] = by_name["pubsubpull receive billing-pull"]
    first, second = by_name["pubsubpull process customers.customer"]
    assert _trace_of(first) == TRACE and [link.context for link in first.links] == [page.context]
    # A change without a (valid) trace is handled inside the page's span.
    assert second.parent.span_id == page.context.span_id
    assert handled[0][0].split("-")[1] == TRACE


# -- Without OpenTelemetry ----------------------------------------------------------


_WITHOUT = """
import importlib.abc, sys


class NoOpenTelemetry(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None


sys.meta_path.insert(0, NoOpenTelemetry())

import django

django.setup()

from pubsubpull import tracing
from pubsubpull.capture import context, middleware, request_info
from pubsubpull.client import handlers, pulling, receiver
from pubsubpull.publisher import feed
from pubsubpull.publisher.delivery import deliver, parking

assert not tracing.AVAILABLE and tracing._trace is None
assert tracing.current() == (None, None) and tracing.trace_fields() == {}
# The request's valid headers are what its row keeps.
assert tracing.request_trace(PARENT, STATE) == {"traceparent": PARENT, "tracestate": STATE}
assert tracing.request_trace("00-bad", STATE) == {}
with tracing.send_span("billing", [(None, None), (PARENT, STATE)]) as headers:
    assert headers == {"traceparent": PARENT, "tracestate": STATE}, headers
seen = []
with tracing.receive_span("billing", PARENT):
    handlers.call_handler(seen.append, [handlers.Event("m.m", 1, "insert", 1, {})])
assert len(seen) == 1
assert not [m for m in sys.modules if m.startswith("opentelemetry")]
print("without opentelemetry: ok")
"""


def test_without_opentelemetry_nothing_imports_it_and_the_headers_pass_through():
    code = f"PARENT, STATE = {PARENT!r}, {STATE!r}\n" + textwrap.dedent(_WITHOUT)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "publisher.settings",
        "PYTHONPATH": os.pathsep.join(
            str(p)
            for p in (
                ROOT / "test-projects" / "publisher",
                ROOT / "test-projects" / "subscriber",
                ROOT,
            )
        ),
    }
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "without opentelemetry: ok" in result.stdout


@pytest.mark.django_db(transaction=True)
def test_a_change_filtered_in_python_keeps_its_trace_too():
    """A change stored with a column no longer published takes the feed's Python path."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO pubsubpull_request (id, method, path, query_string, user_agent, "
            "request_id, started, metadata, traceparent, tracestate) VALUES "
            "('0190c0de-0000-7000-8000-000000000001', 'PUT', '/', '', '', '', now(), '{}', "
            "%s, %s)",
            [PARENT, STATE],
        )
        cursor.execute(
            "INSERT INTO pubsubpull_change (txid, model, object_pk, op, at, old, new, request_id) "
            "VALUES (pg_current_xact_id()::text::bigint, 'customers.customer', '7', 'delete', "
            "now(), %s, NULL, '0190c0de-0000-7000-8000-000000000001')",
            ['{"id": 7, "notes": "old secret"}'],
        )
    [change] = feed.read_changes(None, 10, ["customers.customer"]).changes
    assert change.item_json is None  # not rendered by PostgreSQL
    assert change.as_json()["request"]["traceparent"] == PARENT
    assert json.loads(change.as_json_text())["request"]["tracestate"] == STATE
    assert change.trace() == (PARENT, STATE)


@pytest.mark.django_db
def test_the_example_of_the_tracing_page_runs_as_it_is():
    """docs/tracing.rst, "Jobs and commands": its code block, executed."""
    page = (ROOT / "docs" / "tracing.rst").read_text()
    section = page[page.index("Jobs and commands") :]
    block = section[section.index(".. code-block:: python") :].split("\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    code = "\n".join(lines).strip()
    assert "pubsubpull.context" in code and "assert" in code
    exec(compile(code, "docs/tracing.rst", "exec"), {})  # its assert checks the row


@pytest.mark.django_db(transaction=True)
def test_a_pull_handles_each_change_in_the_trace_of_the_request_that_made_it(live_server, spans):
    import pubsubpull
    from pubsubpull.client import pulling
    from pubsubpull.publisher.api.auth import create_token

    trace_urls.HANDLED.clear()
    token = create_token("billing", ["*"])[1]
    cursor = pubsubpull.pull(
        f"{live_server.url}/pubsubpull/",
        trace_urls.note,
        models=["customers.customer"],
        start="now",
        auth=token,
        name="billing-pull",
    )
    _write(live_server, 5, "Ada", {"traceparent": PARENT, "tracestate": STATE})
    pulling.run(cursor.id, stop_when_caught_up=True, now=True)

    [(ada, handled_trace)] = trace_urls.HANDLED
    assert ada.request["traceparent"] == PARENT
    [page] = [s for s in spans.get_finished_spans() if s.name == "pubsubpull receive billing-pull"]
    [change] = [s for s in spans.get_finished_spans() if s.name.startswith("pubsubpull process")]
    assert _trace_of(change) == TRACE and _hex(change.parent.span_id) == "00f067aa0ba902b7"
    assert [link.context.span_id for link in change.links] == [page.context.span_id]
    assert handled_trace[0] == _header_of(change.context)


@pytest.mark.django_db(transaction=True)
def test_migration_0012_installs_capture_v3_and_reverses_to_v2(changes):
    """Back to 0009: version 2's function, no trace columns, capture still works."""
    import uuid

    from django.core.management import call_command
    from django.db import connection

    from customers.models import Country

    def source():
        with connection.cursor() as cursor:
            cursor.execute("SELECT prosrc FROM pg_proc WHERE proname = 'pubsubpull_capture'")
            return cursor.fetchone()[0]

    def columns():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'pubsubpull_request' AND column_name LIKE 'trace%%'"
            )
            return sorted(row[0] for row in cursor.fetchall())

    assert "traceparent" in source() and columns() == ["traceparent", "tracestate"]
    context = json.dumps({"id": str(uuid.uuid4()), "method": "PUT", "traceparent": PARENT})
    try:
        call_command("migrate", "pubsubpull", "0009", verbosity=0)
        assert "traceparent" not in source() and columns() == []
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('pubsubpull.context', %s, true); "
                "INSERT INTO customers_country (code, name) VALUES ('fr', 'France')",
                [context],
            )
            # The table itself: Change reads the view 0015 makes.
            cursor.execute("SELECT op FROM pubsubpull_change WHERE model = 'customers.country'")
            assert cursor.fetchall() == [("insert",)]
    finally:
        call_command("migrate", "pubsubpull", verbosity=0)
    assert "traceparent" in source() and columns() == ["traceparent", "tracestate"]
    # The row written by version 2 got the columns' default: no trace.
    assert Request.objects.get().traceparent == ""
    Country.objects.filter(code="fr").update(name="République française")
    assert [c["op"] for c in changes(model="customers.country")] == ["insert", "update"]
