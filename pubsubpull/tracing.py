"""OpenTelemetry, when it is installed: the trace a change belongs to, continued across services.

Nothing here requires OpenTelemetry. Without ``opentelemetry-api`` the
publisher still keeps and sends the W3C ``traceparent`` a request came with
(``pubsubpull.protocol.tracecontext``) and the spans below are no-ops. With
it (and an SDK configured by the project):

- a request or ``pubsubpull.context`` block whose changes are recorded keeps
  the context of the span active at its first write, instead of the
  incoming header (:func:`current`);
- the delivery worker sends each notification inside a ``pubsubpull send``
  span (kind PRODUCER), a child of the trace of the batch's first change
  that has one, linked to the other traces in the batch; the notification's
  ``traceparent`` header is that span's (:func:`send_span`);
- the receiver and the pull loop handle each notification or page inside a
  ``pubsubpull receive`` span (kind CONSUMER, a child of the header's trace),
  and each change given to a per-change handler inside a ``pubsubpull
  process`` span: a child of the receive span when the change belongs to
  its trace, else a child of the change's own trace linked to the receive
  span (:func:`receive_span`, :func:`change_span`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from pubsubpull.protocol import tracecontext

try:  # optional: pip install opentelemetry-api (and an SDK to record spans)
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - the import blocker test takes this path
    _trace = None  # type: ignore[assignment]

AVAILABLE = _trace is not None
"""Whether OpenTelemetry's API could be imported."""

_TRACER = "pubsubpull"
_MAX_LINKS = 32
_SYSTEM = {"messaging.system": "pubsubpull"}

Trace = tuple[str | None, str | None]
"""``(traceparent, tracestate)`` as kept; Nones when there is no trace."""


def _header(context: Any) -> Trace:
    """A span context as ``(traceparent, tracestate)``; Nones when it is not valid."""
    if context is None or not context.is_valid:
        return None, None
    flags = int(context.trace_flags)
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"
    return tracecontext.parse(traceparent, context.trace_state.to_header() or None)


def current() -> Trace:
    """The active OpenTelemetry span's ``(traceparent, tracestate)``, or Nones.

    Nones without OpenTelemetry, or when no valid span is active.
    """
    if _trace is None:
        return None, None
    return _header(_trace.get_current_span().get_span_context())


def trace_fields() -> dict[str, str]:
    """``{"traceparent": ..., "tracestate": ...}`` of the active span, keys only when set.

    For the request row of a ``pubsubpull.context`` block.
    """
    traceparent, tracestate = current()
    return _fields(traceparent, tracestate)


def request_trace(traceparent: str | None, tracestate: str | None) -> dict[str, str]:
    """The trace a web request's row keeps: the active span's, else its valid headers."""
    active, state = current()
    if active is not None:
        return _fields(active, state)
    return _fields(*tracecontext.parse(traceparent, tracestate))


def _fields(traceparent: str | None, tracestate: str | None) -> dict[str, str]:
    if traceparent is None:
        return {}
    if tracestate is None:
        return {"traceparent": traceparent}
    return {"traceparent": traceparent, "tracestate": tracestate}


def _remote(traceparent: str | None, tracestate: str | None) -> Any:
    """A remote OpenTelemetry span context from (valid) headers, or None."""
    parent = tracecontext.parse_traceparent(traceparent)
    if parent is None or _trace is None:
        return None
    state = tracecontext.parse_tracestate(tracestate)
    return _trace.SpanContext(
        trace_id=int(parent.trace_id, 16),
        span_id=int(parent.parent_id, 16),
        is_remote=True,
        trace_flags=_trace.TraceFlags(int(parent.flags, 16)),
        trace_state=_trace.TraceState.from_header([state]) if state else None,
    )


def _in(span_context: Any) -> Any:
    return _trace.set_span_in_context(_trace.NonRecordingSpan(span_context))


def batch_trace(traces: Iterable[Trace]) -> Trace:
    """The trace a notification carries: that of its first change with one.

    ``traces`` are the changes' traces, in order. Each change keeps its own
    in its item's ``request``.
    """
    for traceparent, tracestate in traces:
        if traceparent:
            return traceparent, tracestate
    return None, None


def request_trace_of(request: Any) -> Trace:
    """The trace in a change item's ``request`` object (anything: it came over the wire)."""
    if not isinstance(request, dict):
        return None, None
    traceparent, tracestate = request.get("traceparent"), request.get("tracestate")
    return (
        traceparent if isinstance(traceparent, str) else None,
        tracestate if isinstance(tracestate, str) else None,
    )


@contextlib.contextmanager
def send_span(subscription: str, traces: list[Trace]) -> Iterator[dict[str, str]]:
    """Around sending one notification; yields the trace headers to send with it.

    ``traces`` are its changes' (see :func:`batch_trace`). Without
    OpenTelemetry the headers are the batch's trace as stored, passed on
    unchanged; with it, the ``pubsubpull send`` span's, a child of that trace.
    """
    traceparent, tracestate = batch_trace(traces)
    if _trace is None:
        yield tracecontext.headers(traceparent, tracestate)
        return
    parent = _remote(traceparent, tracestate)
    links: list[Any] = []
    seen = {parent.trace_id} if parent is not None else set()
    for trace in traces:
        other = _remote(*trace) if trace[0] else None
        if other is not None and other.trace_id not in seen and len(links) < _MAX_LINKS:
            seen.add(other.trace_id)
            links.append(_trace.Link(other))
    tracer = _trace.get_tracer(_TRACER)
    with tracer.start_as_current_span(
        f"pubsubpull send {subscription}",
        context=_in(parent) if parent is not None else None,
        kind=_trace.SpanKind.PRODUCER,
        links=links,
        attributes={
            **_SYSTEM,
            "messaging.operation.type": "send",
            "messaging.destination.name": subscription,
            "messaging.batch.message_count": len(traces),
        },
    ) as span:
        sent = _header(span.get_span_context())
        if sent[0] is None:  # a non-recording tracer without a parent
            sent = (traceparent, tracestate)
        yield tracecontext.headers(*sent)


@contextlib.contextmanager
def receive_span(
    name: str, traceparent: str | None = None, tracestate: str | None = None, count: int = 0
) -> Iterator[None]:
    """Around handling one notification or pulled page: a child of the headers' trace.

    A no-op without OpenTelemetry. Invalid headers are ignored (the span
    then continues the active trace, if any).
    """
    if _trace is None:
        yield
        return
    parent = _remote(traceparent, tracestate)
    tracer = _trace.get_tracer(_TRACER)
    with tracer.start_as_current_span(
        f"pubsubpull receive {name}",
        context=_in(parent) if parent is not None else None,
        kind=_trace.SpanKind.CONSUMER,
        attributes={
            **_SYSTEM,
            "messaging.operation.type": "receive",
            "messaging.destination.name": name,
            "messaging.batch.message_count": count,
        },
    ):
        yield


@contextlib.contextmanager
def change_span(model: str, op: str, request: dict[str, Any] | None) -> Iterator[None]:
    """Around a handler's call for one change (see the module's docstring)."""
    if _trace is None:
        yield
        return
    own = _remote(*request_trace_of(request))
    active = _trace.get_current_span().get_span_context()
    context: Any = None
    links: list[Any] = []
    if own is not None and (not active.is_valid or active.trace_id != own.trace_id):
        context = _in(own)
        if active.is_valid:
            links.append(_trace.Link(active))
    tracer = _trace.get_tracer(_TRACER)
    with tracer.start_as_current_span(
        f"pubsubpull process {model}",
        context=context,
        kind=_trace.SpanKind.CONSUMER,
        links=links,
        attributes={**_SYSTEM, "messaging.operation.type": "process", "pubsubpull.op": op},
    ):
        yield
