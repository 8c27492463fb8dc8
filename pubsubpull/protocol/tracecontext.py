"""W3C Trace Context: the ``traceparent`` and ``tracestate`` headers, read strictly.

https://www.w3.org/TR/trace-context/ . A web request's headers are attacker
input that ends up in the audit trail and in other services' traces, so a
header is kept only when it is valid, and in its normal form:

- ``traceparent``: version ``00`` exactly as the spec writes it (55
  characters, lower-case hex, trace id and parent id not all zeros). A
  higher version (not ``ff``) is read as the spec says, by its first 55
  characters, and kept as version ``00`` with only the sampled flag. Anything
  else (too long, upper case, ``ff``, spaces or other characters inside) is
  dropped.
- ``tracestate``: kept only beside a valid ``traceparent``, as comma-separated
  ``key=value`` members in the spec's grammar, without empty members; a
  duplicate key or a member outside the grammar drops the whole header. At
  most 32 members and 512 characters: longer ones lose members, those over
  128 characters first, then from the right, as the spec allows. A header
  over 8192 characters is not read at all.

::

    from pubsubpull.protocol import tracecontext

    parent = tracecontext.parse_traceparent(request.headers.get("traceparent"))
    if parent is not None:
        parent.trace_id, str(parent)    # "4bf9...", "00-4bf9...-00f0...-01"
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

TRACEPARENT_LENGTH = 55
TRACESTATE_MAX_LENGTH = 512
TRACESTATE_MAX_MEMBERS = 32
_TRACESTATE_READ_LIMIT = 8192
# A future version may add fields after the 55 characters; not without bound.
_TRACEPARENT_READ_LIMIT = 512
_LONG_MEMBER = 128

_VERSION_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_FUTURE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-[\x21-\x7e]*)?")
_KEY = re.compile(
    r"[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}"
)
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16


@dataclass(frozen=True)
class TraceParent:
    """A valid ``traceparent``: ``str()`` gives the header."""

    trace_id: str  # 32 lower-case hex digits, not all zeros
    parent_id: str  # 16 lower-case hex digits, not all zeros
    flags: str = "01"  # 2 lower-case hex digits

    @property
    def sampled(self) -> bool:
        return bool(int(self.flags, 16) & 1)

    def __str__(self) -> str:
        return f"00-{self.trace_id}-{self.parent_id}-{self.flags}"


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The ``traceparent`` header ``value`` if it is valid, else None (never an error)."""
    if not value or not isinstance(value, str) or len(value) > _TRACEPARENT_READ_LIMIT:
        return None
    value = value.strip(" \t")
    match = _VERSION_00.fullmatch(value)
    if match is not None:
        trace_id, parent_id, flags = match.groups()
    else:
        match = _FUTURE.fullmatch(value)
        if match is None or match.group(1) in ("00", "ff"):
            return None  # a version 00 is exactly 55 characters; ff is invalid
        _, trace_id, parent_id, flags = match.groups()
        flags = f"{int(flags, 16) & 1:02x}"  # only the sampled flag is known
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
        return None
    return TraceParent(trace_id, parent_id, flags)


def parse_tracestate(value: str | None) -> str | None:
    """The ``tracestate`` header ``value`` in normal form if it is valid, else None."""
    if not value or not isinstance(value, str) or len(value) > _TRACESTATE_READ_LIMIT:
        return None
    members: list[str] = []
    keys: set[str] = set()
    for member in value.split(","):
        member = member.strip(" \t")
        if not member:
            continue  # empty members are allowed, and dropped
        key, equals, member_value = member.partition("=")
        if not equals or _KEY.fullmatch(key) is None or _VALUE.fullmatch(member_value) is None:
            return None
        if key in keys:
            return None
        keys.add(key)
        members.append(member)
    members = members[:TRACESTATE_MAX_MEMBERS]
    text = ",".join(members)
    if len(text) > TRACESTATE_MAX_LENGTH:
        members = [m for m in members if len(m) <= _LONG_MEMBER]
        while members and len(",".join(members)) > TRACESTATE_MAX_LENGTH:
            members.pop()
        text = ",".join(members)
    return text or None


def parse(traceparent: str | None, tracestate: str | None) -> tuple[str | None, str | None]:
    """Both headers as they are kept: ``(traceparent, tracestate)``, each None when absent.

    ``tracestate`` is kept only beside a valid ``traceparent``.
    """
    parent = parse_traceparent(traceparent)
    if parent is None:
        return None, None
    return str(parent), parse_tracestate(tracestate)


def headers(traceparent: str | None, tracestate: str | None) -> dict[str, str]:
    """The headers that carry a trace (none when ``traceparent`` is None)."""
    if not traceparent:
        return {}
    if tracestate:
        return {TRACEPARENT: traceparent, TRACESTATE: tracestate}
    return {TRACEPARENT: traceparent}
