"""What a request row says about the request: method, path, client address, user, trace.

``request_fields`` is read at a request's first write; ``remote_addr`` applies
the trusted-proxy settings (``TRUSTED_PROXY_HEADER``, ``TRUSTED_PROXY_COUNT``).
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject, empty

from pubsubpull import conf, tracing
from pubsubpull.capture.context import _Root


def request_root(request: HttpRequest) -> _Root:
    # Only references: the columns are read at the request's first write,
    # so a request that writes nothing pays for none of this.
    return _Root(
        fields=functools.partial(request_fields, request),
        user=functools.partial(_user_pk, request),
    )


def request_fields(request: HttpRequest) -> dict[str, Any]:
    """The ``pubsubpull_request`` columns that describe ``request``."""
    meta = request.META
    request_id = ""
    header = conf.request_id_header()
    if header:
        # The column holds 200 characters; a longer value must not make the
        # audited write fail.
        request_id = meta.get(_meta_key(header), "")[:200]
    fields = {
        "method": (request.method or "")[:16],
        "path": request.path,
        "query_string": meta.get("QUERY_STRING", ""),
        "remote_addr": remote_addr(request),
        "user_agent": meta.get("HTTP_USER_AGENT", ""),
        "request_id": request_id,
    }
    # W3C trace context: the active OpenTelemetry span's, else the headers,
    # kept only when valid (attacker input); keys only when there is a trace.
    fields.update(tracing.request_trace(meta.get("HTTP_TRACEPARENT"), meta.get("HTTP_TRACESTATE")))
    # jsonb refuses NUL characters, and would make the audited write fail.
    for name, value in fields.items():
        if isinstance(value, str) and "\x00" in value:
            fields[name] = value.replace("\x00", "")
    return fields


@functools.lru_cache(maxsize=64)
def _meta_key(header: str) -> str:
    """``"X-Request-ID"`` -> ``"HTTP_X_REQUEST_ID"``: cheaper than request.headers."""
    return "HTTP_" + header.upper().replace("-", "_")


def _user_pk(request: HttpRequest) -> Any:
    if _anonymous_for_sure(request):
        return None
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user.pk


_AUTH_LAZY_USER = ("django.contrib.auth.middleware", "AuthenticationMiddleware.process_request.")


def _anonymous_for_sure(request: HttpRequest) -> bool:
    """Whether ``request.user`` would resolve to AnonymousUser, known without resolving it.

    True only for the lazy user of Django's AuthenticationMiddleware, not yet
    resolved, on a request without a session (no cookie, nothing stored in
    it): resolving it would find no user id in the empty session. Resolving
    it anyway cost an anonymous writing request about 20 us and made its
    response ``Vary: Cookie`` (the session counted as accessed). Any other
    user object (DRF's, a login() in the view, another middleware's) is read.
    """
    state = request.__dict__
    user = state.get("user")
    if user is None or "_cached_user" in state:
        return False
    if type(user) is not SimpleLazyObject:  # type(): its __class__ is the user's
        return False
    lazy = object.__getattribute__(user, "__dict__")  # its own, not the user's
    setup = lazy.get("_setupfunc")
    if (
        lazy.get("_wrapped") is not empty
        or getattr(setup, "__module__", None) != _AUTH_LAZY_USER[0]
        or not getattr(setup, "__qualname__", "").startswith(_AUTH_LAZY_USER[1])
    ):
        return False
    session = state.get("session")
    return (
        session is not None
        and session.session_key is None
        and "_session_cache" not in session.__dict__
    )


def remote_addr(request: HttpRequest) -> str | None:
    """The client's address: from ``TRUSTED_PROXY_HEADER`` when set, else REMOTE_ADDR.

    With ``TRUSTED_PROXY_HEADER = "X-Forwarded-For"`` and
    ``TRUSTED_PROXY_COUNT = N``, the address is the N-th from the right: the
    one your outermost trusted proxy saw. Entries further left are written by
    the client and could be anything.
    """
    header = conf.trusted_proxy_header()
    if header:
        value = request.META.get(_meta_key(header), "")
        entries = [e.strip() for e in value.split(",") if e.strip()]
        if entries:
            count = max(int(conf.trusted_proxy_count()), 1)
            address = _ip(entries[max(len(entries) - count, 0)])
            if address is not None:
                return address
    return _ip(request.META.get("REMOTE_ADDR", ""))


@functools.lru_cache(maxsize=1024)  # the same clients and proxies, again and again
def _ip(value: str) -> str | None:
    """``value`` as PostgreSQL's inet will take it, or None (never an error)."""
    value = value.strip()
    if value.startswith("[") and "]" in value:  # [2001:db8::1]:443
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # 192.0.2.1:443
        value = value.split(":")[0]
    value = value.split("%")[0]  # fe80::1%eth0: inet has no zone ids
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None
