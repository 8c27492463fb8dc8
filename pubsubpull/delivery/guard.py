"""Keep callbacks from reaching what they must not: the SSRF guard.

A callback URL is checked when it is subscribed (a clear 400) and again on
every connection, by the transport itself: the host name is resolved once,
every address it resolves to is checked, and the socket is opened to a checked
address. So DNS rebinding (a name that resolves to a public address when
checked and to 169.254.169.254 a moment later) cannot swap the target. The
URL's host still goes into the ``Host`` header and the TLS SNI and certificate
check, because only the TCP connection is redirected to the checked address.

Refused unless ``PUBSUBPULL["CALLBACK_ALLOW"]`` names the host, the address
or a network that holds it: every address that is not globally routable
(private, loopback, link-local, shared, reserved, unspecified), multicast,
and the cloud metadata endpoints.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from .. import conf

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, …
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
)


class CallbackRefused(ValueError):
    """The callback URL may not be used; the message says why and what to do."""


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (tests replace this to fake DNS)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as e:  # unknown, or not a valid name
        raise CallbackRefused(f"the callback host {host!r} does not resolve: {e}") from None
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))


def _allowed(host: str, address: IPAddress, allow: Iterable[str]) -> bool:
    for entry in allow:
        if entry.lower() == host.lower():
            return True
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue  # a host name that is not this one
    return False


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` is refused by default, or None if it is a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "not a globally routable address"
    return None


def check_address(host: str, address: IPAddress) -> None:
    """Raise CallbackRefused unless ``host`` may be reached at ``address``."""
    why = refusal(address)
    if why and not _allowed(host, address, conf.get("CALLBACK_ALLOW")):
        raise CallbackRefused(
            f"the callback host {host!r} resolves to {address}, {why}; "
            "list the host or its network in PUBSUBPULL['CALLBACK_ALLOW'] to allow it"
        )


def checked_addresses(host: str, port: int) -> list[IPAddress]:
    """Resolve ``host`` and check every address it has (any refused one refuses all)."""
    try:
        addresses = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        addresses = resolve(host, port)
    if not addresses:
        raise CallbackRefused(f"the callback host {host!r} has no address")
    for address in addresses:
        check_address(host, address)
    return addresses


def check_url(url: str) -> None:
    """Raise CallbackRefused unless ``url`` is an acceptable callback right now."""
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise CallbackRefused(
            "the callback is not a valid URL: it contains spaces or control characters"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise CallbackRefused(f"the callback is not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise CallbackRefused("the callback must be an http:// or https:// URL")
    if not parts.hostname:
        raise CallbackRefused("the callback URL has no host")
    if parts.username is not None or parts.password is not None:
        raise CallbackRefused(
            "the callback URL may not carry credentials; the signature authenticates "
            "notifications (put a token in the path if the receiver needs one)"
        )
    if parts.fragment:
        raise CallbackRefused("the callback URL may not have a #fragment")
    checked_addresses(parts.hostname, port or (443 if parts.scheme == "https" else 80))


class _GuardedBackend(httpcore.NetworkBackend):
    """Opens TCP connections only to addresses the guard has checked."""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = checked_addresses(host, port)
        except CallbackRefused as e:
            raise httpcore.ConnectError(str(e)) from e
        error: Exception | None = None
        for address in addresses:
            try:
                return self._backend.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                error = e
        assert error is not None
        raise error

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("pubsubpull does not deliver to unix sockets")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def client(**kwargs: Any) -> httpx.Client:
    """An httpx client whose every connection passes the guard.

    No proxies from the environment (they would connect on our behalf to
    unchecked addresses), no redirects, timeouts from the settings.
    """
    transport = httpx.HTTPTransport(retries=0)
    # httpx has no parameter for httpcore's network backend; its pool is
    # built in __init__ and reads the attribute on each new connection.
    transport._pool._network_backend = _GuardedBackend()
    return httpx.Client(
        transport=transport,
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(conf.get("TIMEOUT"), connect=conf.get("CONNECT_TIMEOUT")),
        **kwargs,
    )
