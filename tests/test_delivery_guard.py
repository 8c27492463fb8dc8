"""The SSRF guard: callbacks reach globally reachable addresses, or what the settings allow.

An attacker who may subscribe chooses the callback URL, and so the address the
publisher's worker connects to. These tests send what such an attacker would:
each special-purpose address family as a literal callback (refused when
subscribing, with a 400 naming why) and as the DNS answer at delivery time
(refused before connecting).
"""

from __future__ import annotations

import ipaddress
import re

import httpcore
import httpx
import pytest

from customers.models import Customer
from pubsubpull.publisher.api.auth import create_token
from pubsubpull.publisher.delivery import guard
from pubsubpull.publisher.delivery.models import Attempt, Subscription
from pubsubpull.publisher.delivery.subscriptions import InvalidSubscription

from .delivery_helpers import drain_settled, make_subscription, use_fast_settings
from .receivers import Receiver

PUBLIC_V4 = "93.184.215.14"  # globally reachable; never connected to by these tests
METADATA_INSIDE = re.escape("169.254.169.254, a cloud metadata")


@pytest.fixture
def allow(settings):
    def set_allowed(*entries):
        settings.PUBSUBPULL = {**settings.PUBSUBPULL, "CALLBACK_ALLOW": list(entries)}

    set_allowed()  # the default: nothing allowed
    return set_allowed


@pytest.fixture
def dns(monkeypatch):
    """Fake DNS answers for made-up names (the one thing tests cannot cause for real)."""
    answers: dict[str, list[list[str]]] = {}
    real = guard.resolve

    def resolve(host, port):
        if host in answers:
            queue = answers[host]
            addresses = queue.pop(0) if len(queue) > 1 else queue[0]
            return [ipaddress.ip_address(a) for a in addresses]
        return real(host, port)

    monkeypatch.setattr(guard, "resolve", resolve)
    return answers


@pytest.fixture
def connections(monkeypatch):
    """Every TCP connection the delivery opens, and a net under the guard.

    The guard is what is tested; if it ever let a refused address through,
    this keeps the test from sending a packet to it (the metadata service of
    the machine running the tests, say): only loopback, where the test
    receiver listens, is really connected to.
    """
    opened: list[str] = []
    real = httpcore.SyncBackend.connect_tcp

    def connect_tcp(self, host, port, *args, **kwargs):
        opened.append(host)
        if not ipaddress.ip_address(host).is_loopback:
            raise httpcore.ConnectError(f"test safety net: no connection to {host}")
        return real(self, host, port, *args, **kwargs)

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", connect_tcp)
    return opened


def embed(form: str, ipv4: str) -> str:
    """``ipv4`` written in one of the IPv6 forms that carry an IPv4 address."""
    v4 = int(ipaddress.IPv4Address(ipv4))
    value = {
        "nat64": int(ipaddress.IPv6Address("64:ff9b::")) | v4,
        "nat64-local": int(ipaddress.IPv6Address("64:ff9b:1::")) | v4,
        "6to4": int(ipaddress.IPv6Address("2002::")) | v4 << 80 | 1,
        # Teredo: server 93.184.215.14, the client's address with every bit flipped.
        "teredo": int(ipaddress.IPv6Address("2001::"))
        | int(ipaddress.IPv4Address(PUBLIC_V4)) << 64
        | (~v4 & 0xFFFFFFFF),
        "compatible": v4,
        "mapped": int(ipaddress.IPv6Address("::ffff:0:0")) | v4,
    }[form]
    return str(ipaddress.IPv6Address(value))


FORMS = ["nat64", "nat64-local", "6to4", "teredo", "compatible", "mapped"]

# One address from each block of the IANA special-purpose registries that is
# not globally reachable, typed here from the registries (not from guard.py),
# with a word the refusal must name.
NOT_GLOBALLY_REACHABLE = [
    ("0.1.2.3", "this network"),
    ("0.0.0.0", "this host"),
    ("10.1.2.3", "private-use"),
    ("100.64.1.1", "shared address space"),
    ("100.127.255.254", "shared address space"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.1.1", "link-local"),
    ("172.16.0.1", "private-use"),
    ("172.31.255.254", "private-use"),
    ("192.0.0.1", "service continuity"),
    ("192.0.0.8", "dummy"),
    ("192.0.0.100", "IETF protocol assignments"),
    ("192.0.0.170", "NAT64/DNS64 discovery"),
    ("192.0.0.171", "NAT64/DNS64 discovery"),
    ("192.0.2.10", "documentation"),
    ("192.88.99.1", "6to4 relay"),
    ("192.168.0.10", "private-use"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.254", "benchmarking"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.254", "reserved"),
    ("255.255.255.255", "limited broadcast"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("64:ff9b:1::5db8:d70e", "NAT64 local-use"),
    ("100::1", "discard-only"),
    ("100:0:0:1::1", "dummy"),
    ("2001:2::1", "benchmarking"),
    ("2001:10::1", "ORCHID"),
    ("2001:1ff::1", "IETF protocol assignments"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("3fff:fff:ffff::1", "documentation"),
    ("5f00::1", "segment routing"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("fe80::1", "link-local"),
    ("febf::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("4000::1", "outside the global unicast space"),
    ("1234::1", "outside the global unicast space"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.170.2", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"),
    ("192.0.0.192", "cloud metadata"),
    ("fd00:ec2::254", "cloud metadata"),
]

# Exceptions the registries mark globally reachable, and ordinary public
# addresses: all accepted.
GLOBALLY_REACHABLE = [
    PUBLIC_V4,
    "1.1.1.1",
    "192.0.0.9",
    "192.0.0.10",
    "192.31.196.1",
    "192.52.193.1",
    "192.175.48.1",
    "2606:4700:4700::1111",
    "2001:1::1",
    "2001:1::2",
    "2001:3::1",
    "2001:4:112::1",
    "2001:20::1",
    "2620:4f:8000::1",
]


def literal(address: str) -> str:
    return f"http://[{address}]/hook/" if ":" in address else f"http://{address}/hook/"


@pytest.mark.parametrize("address, why", NOT_GLOBALLY_REACHABLE)
def test_every_block_that_is_not_globally_reachable_is_refused(allow, address, why):
    with pytest.raises(guard.CallbackRefused, match=why):
        guard.check_url(literal(address))


@pytest.mark.parametrize("address", GLOBALLY_REACHABLE)
def test_globally_reachable_addresses_are_accepted(allow, address):
    guard.check_url(literal(address))  # only checked: nothing is sent


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    "inner, why",
    [
        ("169.254.169.254", "cloud metadata"),
        ("127.0.0.1", "loopback"),
        ("10.0.0.7", "private-use"),
        ("100.64.0.1", "shared address space"),
        ("0.0.0.7", "this network"),
    ],
)
def test_an_ipv4_address_inside_an_ipv6_form_is_judged_as_itself(allow, form, inner, why):
    address = embed(form, inner)
    with pytest.raises(guard.CallbackRefused, match=re.escape(f"of {inner}, ") + ".*" + why):
        guard.check_url(literal(address))


@pytest.mark.parametrize("form", [f for f in FORMS if f != "nat64-local"])
def test_an_ipv6_form_of_a_public_ipv4_address_is_accepted(allow, form):
    guard.check_url(literal(embed(form, PUBLIC_V4)))


def test_the_examples_from_the_report_are_refused(allow):
    for url in (
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of the metadata address
        "http://[64:ff9b::169.254.169.254]/",
        "http://[2002:a9fe:a9fe::]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[::169.254.169.254]/",
        "http://[2001:0:5db8:d70e:0:0:5601:5601]/",  # Teredo client 169.254.169.254
    ):
        with pytest.raises(guard.CallbackRefused, match=METADATA_INSIDE):
            guard.check_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",  # 127.0.0.1 as one number
        "http://0x7f.1/",
        "http://0177.0.0.1/",
        "http://127.000.000.001/",
        "http://2852039166/",  # 169.254.169.254
        "http://[::ffff:7f00:1]/",
        "http://[0:0:0:0:0:ffff:127.0.0.1]/",
        "http://[fe80::1%25eth0]/",
    ],
)
def test_other_spellings_of_a_refused_address_are_refused(allow, url):
    """The system resolver turns numeric spellings into the address; the guard judges that."""
    with pytest.raises(guard.CallbackRefused, match=r"not globally reachable|cloud metadata"):
        guard.check_url(url)


def test_a_teredo_server_that_is_not_public_is_refused(allow):
    # Server 10.0.0.1 (bits 32-63), client 93.184.215.14 flipped.
    address = ipaddress.IPv6Address(
        int(ipaddress.IPv6Address("2001::"))
        | int(ipaddress.IPv4Address("10.0.0.1")) << 64
        | (~int(ipaddress.IPv4Address(PUBLIC_V4)) & 0xFFFFFFFF)
    )
    assert address.teredo == (ipaddress.IPv4Address("10.0.0.1"), ipaddress.IPv4Address(PUBLIC_V4))
    with pytest.raises(guard.CallbackRefused, match=re.escape("Teredo of 10.0.0.1")):
        guard.check_url(literal(str(address)))


def _samples(network):
    yield network.network_address
    yield network.network_address + network.num_addresses // 2
    yield network.broadcast_address


def test_the_tables_refuse_everything_python_does_not_call_global(allow):
    """Python's own tables differ between 3.11, 3.12 and 3.13: ours refuse at least as
    much, except where the registries say globally reachable."""
    registry_global = [
        ipaddress.ip_network(n)
        for n in (
            "192.0.0.9/32",
            "192.0.0.10/32",
            "2001:1::1/128",
            "2001:1::2/128",
            "2001:1::3/128",
            "2001:3::/32",
            "2001:4:112::/48",
            "2001:20::/28",
            "2001:30::/28",
            "2002::/16",  # judged by the IPv4 inside (tested above)
            "2001::/32",  # Teredo, likewise
            "::ffff:0:0/96",  # IPv4-mapped, likewise
        )
    ]
    networks = [
        *ipaddress._IPv4Constants._private_networks,  # what is_global is built from
        *ipaddress._IPv6Constants._private_networks,
        ipaddress.ip_network("100.64.0.0/10"),
    ]
    checked = 0
    for network in networks:
        for address in _samples(network):
            if address.is_global or any(address in n for n in registry_global):
                continue
            assert guard.refusal(address), f"{address} is not global to Python but accepted"
            checked += 1
    assert checked > 40


def test_python_versions_disagree_where_the_tables_matter(allow):
    """Addresses is_global got wrong in some supported Python version; the guard never."""
    for text in ("192.0.0.8", "64:ff9b:1::a9fe:a9fe", "2002:a9fe:a9fe::", "3fff::1", "5f00::1"):
        assert guard.refusal(ipaddress.ip_address(text)), text
    for text in ("192.0.0.9", "2001:1::1", "2001:20::1"):
        assert guard.refusal(ipaddress.ip_address(text)) is None, text


def test_the_setting_allows_named_hosts_and_networks(allow, dns):
    dns["billing.internal"] = [["10.20.0.5"]]
    allow("billing.internal", "192.168.0.0/16", "::1")
    guard.check_url("http://billing.internal/hook/")
    guard.check_url("http://192.168.7.7/hook/")
    guard.check_url("http://[::1]:8000/hook/")
    guard.check_url("http://[::ffff:192.168.7.7]/hook/")  # the IPv4 inside is allowed
    with pytest.raises(guard.CallbackRefused):
        guard.check_url("http://10.20.0.5/hook/")  # the name was allowed, not the address
    with pytest.raises(guard.CallbackRefused, match="metadata"):
        guard.check_url("http://169.254.169.254/")


def test_allowing_a_nat64_prefix_does_not_allow_what_it_translates_to(allow):
    # A network behind a local NAT64 (DNS64 answers 64:ff9b:1::/96 addresses).
    allow("64:ff9b:1::/48")
    guard.check_url(literal(embed("nat64-local", PUBLIC_V4)))
    with pytest.raises(guard.CallbackRefused, match=METADATA_INSIDE):
        guard.check_url(literal(embed("nat64-local", "169.254.169.254")))
    # Allowing the IPv4 network allows it in its translated forms too.
    allow("10.0.0.0/8")
    guard.check_url(literal(embed("nat64", "10.1.2.3")))
    guard.check_url(literal(embed("mapped", "10.1.2.3")))
    with pytest.raises(guard.CallbackRefused, match="local-use prefix"):
        guard.check_url(literal(embed("nat64-local", "10.1.2.3")))


def test_a_name_resolving_to_a_refused_address_is_refused(allow, dns):
    dns["metadata.example"] = [["169.254.169.254"]]
    dns["nat64.example"] = [["64:ff9b::a9fe:a9fe"]]
    dns["mixed.example"] = [[PUBLIC_V4, "10.0.0.7"]]  # any bad address refuses
    dns["public.example"] = [[PUBLIC_V4]]
    for host in ("metadata.example", "nat64.example", "mixed.example"):
        with pytest.raises(guard.CallbackRefused):
            guard.check_url(f"https://{host}/hook/")
    guard.check_url("https://public.example/hook/")  # only checked: nothing is sent


@pytest.mark.parametrize(
    "url, why",
    [
        ("ftp://example.com/", "http"),
        ("file:///etc/passwd", "http"),
        ("https://user:secret@example.com/", "credentials"),
        ("https:///hook/", "no host"),
        ("http://[::1/", "not a valid URL"),
    ],
)
def test_only_plain_http_urls_without_credentials(url, why):
    with pytest.raises(guard.CallbackRefused, match=why):
        guard.check_url(url)


@pytest.mark.django_db(transaction=True)
def test_subscribing_to_a_refused_callback_is_a_clear_error_and_creates_nothing(allow):
    with pytest.raises(InvalidSubscription) as error:
        make_subscription("http://169.254.169.254/latest/meta-data/")
    assert "CALLBACK_ALLOW" in error.value.errors["callback"]
    assert not Subscription.objects.exists()


ATTACKS = [
    *(
        (f"{form} of the metadata address", literal(embed(form, "169.254.169.254")))
        for form in FORMS
    ),
    ("the metadata address", "http://169.254.169.254/latest/meta-data/"),
    ("a unique-local address", "http://[fd00::1]/"),
    ("shared address space", "http://100.64.0.1/"),
    ("a documentation address", "http://[3fff::1]/"),
]


@pytest.mark.django_db(transaction=True)
def test_an_attacker_subscribing_a_refused_callback_gets_400_naming_why(live_server, allow):
    token = create_token("attacker", ["customers.customer"])[1]
    for attack, callback in ATTACKS:
        answer = httpx.put(
            f"{live_server.url}/pubsubpull/subscriptions/probe/",
            json={"callback": callback, "models": ["customers.customer"]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 400, (attack, answer.text)
        assert answer.headers["Content-Type"] == "application/json"
        error = answer.json()
        assert error["error"] == "invalid_subscription", (attack, error)
        why = error["fields"]["callback"]
        assert "not globally reachable" in why or "cloud metadata" in why, (attack, why)
        assert "CALLBACK_ALLOW" in why, (attack, why)
    assert not Subscription.objects.exists()


DNS_ATTACKS = [
    *((f"{form} of the metadata address", embed(form, "169.254.169.254")) for form in FORMS),
    ("the metadata address", "169.254.169.254"),
    ("loopback", "127.0.0.1"),
    ("a private address", "192.168.1.1"),
    ("a unique-local address", "fd00::1"),
    ("an IPv4 dummy address", "192.0.0.8"),
]


@pytest.mark.django_db(transaction=True)
def test_a_name_that_resolves_to_a_refused_address_at_delivery_is_never_connected(
    settings, allow, dns, connections
):
    use_fast_settings(settings)
    for number, (attack, address) in enumerate(DNS_ATTACKS):
        # Public when subscribed; the attacker's DNS answers the refused address later.
        host = f"rebind{number}.example"
        dns[host] = [[PUBLIC_V4], [address]]
        subscription = make_subscription(f"http://{host}:8000/", name=f"s{number}").subscription
        Customer.objects.create(name="Ada")
        assert drain_settled(subscription.pk) == "failed", attack
        assert connections == [], attack
        error = Attempt.objects.get(subscription=subscription).error
        assert host in error and "CALLBACK_ALLOW" in error, (attack, error)


@pytest.mark.django_db(transaction=True)
def test_dns_rebinding_cannot_swap_the_address_after_the_check(settings, allow, dns, connections):
    use_fast_settings(settings)
    with Receiver() as receiver:
        # Public when subscribed, loopback when the worker connects.
        dns["rebind.example"] = [[PUBLIC_V4], ["127.0.0.1"]]
        subscription = make_subscription(f"http://rebind.example:{receiver.port}/").subscription
        Customer.objects.create(name="Ada")
        assert drain_settled(subscription.pk) == "failed"
        assert receiver.requests == [] and connections == []
        assert "loopback" in Attempt.objects.get().error


@pytest.mark.django_db(transaction=True)
def test_the_connection_goes_to_the_checked_address_with_the_right_host(
    settings, allow, dns, connections
):
    use_fast_settings(settings)
    with Receiver() as receiver:
        dns["billing.example"] = [["127.0.0.1"]]
        allow("127.0.0.0/8")
        subscription = make_subscription(f"http://billing.example:{receiver.port}/h/").subscription
        Customer.objects.create(name="Ada")
        assert drain_settled(subscription.pk) == "caught_up"
        [request] = receiver.requests
        assert request.headers["host"] == f"billing.example:{receiver.port}"
        assert connections == ["127.0.0.1"]


@pytest.mark.django_db(transaction=True)
def test_an_allowed_mapped_loopback_callback_is_delivered(settings, allow, dns, connections):
    """CALLBACK_ALLOW keeps working for the IPv4 inside an IPv6 spelling."""
    use_fast_settings(settings)
    with Receiver() as receiver:
        dns["billing.example"] = [["::ffff:127.0.0.1"]]
        allow("127.0.0.1")
        subscription = make_subscription(f"http://billing.example:{receiver.port}/h/").subscription
        Customer.objects.create(name="Ada")
        assert drain_settled(subscription.pk) == "caught_up"
        assert len(receiver.requests) == 1
