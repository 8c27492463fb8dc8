"""Keep callbacks from reaching what they must not: the SSRF guard.

A callback URL is checked when it is subscribed (a clear 400) and again on
every connection, by the transport itself: the host name is resolved once,
every address it resolves to is checked, and the socket is opened to a checked
address. So DNS rebinding (a name that resolves to a public address when
checked and to 169.254.169.254 a moment later) cannot swap the target. The
URL's host still goes into the ``Host`` header and the TLS SNI and certificate
check, because only the TCP connection is redirected to the checked address.

Refused unless ``PUBSUBPULL["CALLBACK_ALLOW"]`` names the host, the address
or a network that holds it: every address of the IANA IPv4 and IPv6
special-purpose address registries that is not globally reachable (the
tables below, written from the registries rather than taken from Python's
``ipaddress.is_global``, whose tables differ between the Python versions we
support), multicast, IPv6 outside the global unicast space ``2000::/3``, and
the cloud metadata endpoints. An IPv6 address that carries an IPv4 address
(NAT64, 6to4, Teredo, IPv4-compatible, IPv4-mapped) is judged by the IPv4
address inside it as well, so ``[64:ff9b::a9fe:a9fe]`` is refused as the
metadata address it translates to.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from pubsubpull import conf
from pubsubpull.exceptions import CallbackRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Block:
    """One row of an IANA special-purpose address registry."""

    network: IPNetwork
    name: str
    rfc: str
    globally_reachable: bool


def _block(network: str, name: str, rfc: str, globally_reachable: bool = False) -> Block:
    return Block(ipaddress.ip_network(network), name, rfc, globally_reachable)


# https://www.iana.org/assignments/iana-ipv4-special-registry (updated 2025).
# The most specific block holding an address decides; the globally reachable
# rows are the exceptions inside blocks that are not.
IPV4_SPECIAL = (
    _block("0.0.0.0/8", '"this network"', "RFC 791"),
    _block("0.0.0.0/32", '"this host on this network"', "RFC 1122"),
    _block("10.0.0.0/8", "private-use", "RFC 1918"),
    _block("100.64.0.0/10", "shared address space (carrier-grade NAT)", "RFC 6598"),
    _block("127.0.0.0/8", "loopback", "RFC 1122"),
    _block("169.254.0.0/16", "link-local", "RFC 3927"),
    _block("172.16.0.0/12", "private-use", "RFC 1918"),
    _block("192.0.0.0/24", "IETF protocol assignments", "RFC 6890"),
    _block("192.0.0.0/29", "IPv4 service continuity prefix", "RFC 7335"),
    _block("192.0.0.8/32", "IPv4 dummy address", "RFC 7600"),
    _block("192.0.0.9/32", "Port Control Protocol anycast", "RFC 7723", True),
    _block("192.0.0.10/32", "TURN anycast", "RFC 8155", True),
    _block("192.0.0.170/32", "NAT64/DNS64 discovery", "RFC 7050"),
    _block("192.0.0.171/32", "NAT64/DNS64 discovery", "RFC 7050"),
    _block("192.0.2.0/24", "documentation (TEST-NET-1)", "RFC 5737"),
    _block("192.31.196.0/24", "AS112-v4", "RFC 7535", True),
    _block("192.52.193.0/24", "AMT", "RFC 7450", True),
    # Deprecated; refused as a whole rather than trusted for its anycast relays.
    _block("192.88.99.0/24", "deprecated 6to4 relay anycast", "RFC 7526"),
    _block("192.168.0.0/16", "private-use", "RFC 1918"),
    _block("192.175.48.0/24", "AS112 direct delegation", "RFC 7534", True),
    _block("198.18.0.0/15", "benchmarking", "RFC 2544"),
    _block("198.51.100.0/24", "documentation (TEST-NET-2)", "RFC 5737"),
    _block("203.0.113.0/24", "documentation (TEST-NET-3)", "RFC 5737"),
    _block("240.0.0.0/4", "reserved", "RFC 1112"),
    _block("255.255.255.255/32", "limited broadcast", "RFC 919"),
    # Not in the special-purpose registry (it has its own): never a callback.
    _block("224.0.0.0/4", "multicast", "RFC 5771"),
)

# https://www.iana.org/assignments/iana-ipv6-special-registry (updated 2025).
# The embedding blocks (::ffff:0:0/96, 64:ff9b::/96, 2002::/16, 2001::/32 and
# IPv4-compatible ::/96) are judged by the IPv4 address inside: see embedded().
IPV6_SPECIAL = (
    _block("::1/128", "loopback", "RFC 4291"),
    _block("::/128", "unspecified", "RFC 4291"),
    _block("::ffff:0:0/96", "IPv4-mapped", "RFC 4291"),
    _block("64:ff9b::/96", "NAT64 well-known prefix", "RFC 6052", True),
    _block("64:ff9b:1::/48", "NAT64 local-use prefix", "RFC 8215"),
    _block("100::/64", "discard-only", "RFC 6666"),
    _block("100:0:0:1::/64", "dummy IPv6 prefix", "RFC 9780"),
    _block("2001::/23", "IETF protocol assignments", "RFC 2928"),
    _block("2001::/32", "Teredo", "RFC 4380", True),
    _block("2001:1::1/128", "Port Control Protocol anycast", "RFC 7723", True),
    _block("2001:1::2/128", "TURN anycast", "RFC 8155", True),
    _block("2001:1::3/128", "DNS-SD service registration anycast", "RFC 9665", True),
    _block("2001:2::/48", "benchmarking", "RFC 5180"),
    _block("2001:3::/32", "AMT", "RFC 7450", True),
    _block("2001:4:112::/48", "AS112-v6", "RFC 7535", True),
    _block("2001:10::/28", "deprecated ORCHID", "RFC 4843"),
    _block("2001:20::/28", "ORCHIDv2", "RFC 7343", True),
    _block("2001:30::/28", "drone remote ID entity tags", "RFC 9374", True),
    _block("2001:db8::/32", "documentation", "RFC 3849"),
    _block("2002::/16", "6to4", "RFC 3056", True),
    _block("2620:4f:8000::/48", "AS112 direct delegation", "RFC 7534", True),
    _block("3fff::/20", "documentation", "RFC 9637"),
    _block("5f00::/16", "segment routing (SRv6) SIDs", "RFC 9602"),
    _block("fc00::/7", "unique-local", "RFC 4193"),
    _block("fe80::/10", "link-local", "RFC 4291"),
    # From the IPv6 address space registry: multicast, and the deprecated
    # site-local block (which the rule below refuses anyway).
    _block("ff00::/8", "multicast", "RFC 4291"),
    _block("fec0::/10", "deprecated site-local", "RFC 3879"),
)

GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")

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

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_COMPATIBLE = ipaddress.ip_network("::/96")
_SIXTOFOUR = ipaddress.ip_network("2002::/16")
_TEREDO = ipaddress.ip_network("2001::/32")
_LOW32 = 0xFFFFFFFF


def special_block(address: IPAddress) -> Block | None:
    """The most specific special-purpose registry block holding ``address``."""
    table = IPV4_SPECIAL if address.version == 4 else IPV6_SPECIAL
    found = [b for b in table if address in b.network]
    return max(found, key=lambda b: b.network.prefixlen, default=None)


def embedded(address: IPAddress) -> tuple[str, list[ipaddress.IPv4Address]] | None:
    """The IPv4 addresses an IPv6 address carries, and the form that carries them.

    NAT64 (well-known and local-use prefix, RFC 6052 /96 layout: the last 32
    bits), IPv4-mapped and IPv4-compatible (the last 32 bits), 6to4 (bits
    16-47) and Teredo (the server in bits 32-63, the client in the last 32
    bits with every bit flipped).
    """
    if address.version != 6:
        return None
    value = int(address)
    low = ipaddress.IPv4Address(value & _LOW32)
    if address in _MAPPED:
        return "IPv4-mapped", [low]
    if address in _NAT64:
        return "NAT64", [low]
    if address in _NAT64_LOCAL:
        return "local-use NAT64", [low]
    if address in _SIXTOFOUR:
        return "6to4", [ipaddress.IPv4Address((value >> 80) & _LOW32)]
    if address in _TEREDO:
        server = ipaddress.IPv4Address((value >> 64) & _LOW32)
        client = ipaddress.IPv4Address(~value & _LOW32)
        return "Teredo", [server, client]
    # :: and ::1 are the unspecified and loopback addresses, not IPv4 forms.
    if address in _COMPATIBLE and value > 1:
        return "IPv4-compatible", [low]
    return None


def _own_refusal(address: IPAddress) -> str | None:
    """Why ``address`` itself (not what it carries) is refused, or None."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    block = special_block(address)
    if block is not None and not block.globally_reachable:
        return f"{block.name} ({block.network}, {block.rfc}), not globally reachable"
    if address.version == 6 and block is None and address not in GLOBAL_UNICAST:
        return f"outside the global unicast space {GLOBAL_UNICAST} (reserved by the IETF)"
    return None


def refusals(address: IPAddress) -> list[tuple[IPAddress, str]]:
    """Each address to refuse in ``address`` (itself, or an IPv4 inside), and why.

    Empty for a globally reachable address. ``CALLBACK_ALLOW`` must allow every
    one of them: allowing a NAT64 prefix does not allow the metadata address
    translated inside it.
    """
    found: list[tuple[IPAddress, str]] = []
    inside = embedded(address)
    if inside is not None:
        form, ipv4s = inside
        for ipv4 in ipv4s:
            why = _own_refusal(ipv4)
            if why is not None:
                found.append((ipv4, f"{form} of {ipv4}, {why}"))
        if form in ("IPv4-mapped", "IPv4-compatible"):
            return found  # only a spelling of the IPv4 address
    why = _own_refusal(address)
    if why is not None:
        found.append((address, why))
    return found


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` is refused by default, or None if it is globally reachable."""
    found = refusals(address)
    return "; ".join(why for _, why in found) if found else None


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (tests replace this to fake DNS)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as e:  # unknown, or not a valid name
        raise CallbackRefused(f"the callback host {host!r} does not resolve: {e}") from None
    addresses = (ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos)
    return list(dict.fromkeys(addresses))


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


def check_address(host: str, address: IPAddress) -> None:
    """Raise CallbackRefused unless ``host`` may be reached at ``address``."""
    allow = conf.callback_allow()
    refused = [why for judged, why in refusals(address) if not _allowed(host, judged, allow)]
    if refused:
        raise CallbackRefused(
            f"the callback host {host!r} resolves to {address}, {'; '.join(refused)}; "
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
            # An IPv4-mapped address is the IPv4 address: connect to it as such.
            target = getattr(address, "ipv4_mapped", None) or address
            try:
                return self._backend.connect_tcp(
                    str(target), port, timeout, local_address, socket_options
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
        timeout=httpx.Timeout(conf.timeout(), connect=conf.connect_timeout()),
        **kwargs,
    )
