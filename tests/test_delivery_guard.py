"""The SSRF guard: callbacks reach public addresses, or what the settings allow."""

from __future__ import annotations

import ipaddress

import pytest

from customers.models import Customer
from pubsubpull.delivery import guard
from pubsubpull.delivery.models import Attempt, Subscription
from pubsubpull.delivery.subscriptions import InvalidSubscription

from .delivery_helpers import drain_settled, make_subscription, use_fast_settings
from .receivers import Receiver


@pytest.fixture
def allow(settings):
    def set_allowed(*entries):
        settings.PUBSUBPULL = {**settings.PUBSUBPULL, "CALLBACK_ALLOW": list(entries)}

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


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://[::1]:8000/hook/", "loopback"),
        ("http://127.0.0.1:8000/hook/", "loopback"),
        ("http://10.1.2.3/hook/", "private"),
        ("http://192.168.0.10/hook/", "private"),
        ("http://[fe80::1]/", "link-local"),
        ("http://224.0.0.1/", "multicast"),
        ("http://0.0.0.0/", "private"),
        ("http://100.64.1.1/", "not a globally routable"),
        ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
    ],
)
def test_private_loopback_link_local_and_metadata_addresses_are_refused(allow, url, why):
    allow()
    with pytest.raises(guard.CallbackRefused, match=why):
        guard.check_url(url)


def test_a_name_resolving_to_a_refused_address_is_refused(allow, dns):
    allow()
    dns["metadata.example"] = [["169.254.169.254"]]
    dns["mixed.example"] = [["93.184.215.14", "10.0.0.7"]]  # any bad address refuses
    dns["public.example"] = [["93.184.215.14"]]
    for host in ("metadata.example", "mixed.example"):
        with pytest.raises(guard.CallbackRefused):
            guard.check_url(f"https://{host}/hook/")
    guard.check_url("https://public.example/hook/")  # only checked: nothing is sent


def test_the_setting_allows_named_hosts_and_networks(allow, dns):
    dns["billing.internal"] = [["10.20.0.5"]]
    allow("billing.internal", "192.168.0.0/16", "::1")
    guard.check_url("http://billing.internal/hook/")
    guard.check_url("http://192.168.7.7/hook/")
    guard.check_url("http://[::1]:8000/hook/")
    with pytest.raises(guard.CallbackRefused):
        guard.check_url("http://10.20.0.5/hook/")  # the name was allowed, not the address
    with pytest.raises(guard.CallbackRefused, match="metadata"):
        guard.check_url("http://169.254.169.254/")


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
    allow()
    with pytest.raises(InvalidSubscription) as error:
        make_subscription("http://169.254.169.254/latest/meta-data/")
    assert "CALLBACK_ALLOW" in error.value.errors["callback"]
    assert not Subscription.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_dns_rebinding_cannot_swap_the_address_after_the_check(settings, allow, dns):
    use_fast_settings(settings)
    with Receiver() as receiver:
        # Public when subscribed, loopback when the worker connects.
        dns["rebind.example"] = [["93.184.215.14"], ["127.0.0.1"]]
        allow()
        subscription = make_subscription(f"http://rebind.example:{receiver.port}/").subscription
        Customer.objects.create(name="Ada")
        assert drain_settled(subscription.pk) == "failed"
        assert receiver.requests == []
        assert "loopback" in Attempt.objects.get().error


@pytest.mark.django_db(transaction=True)
def test_the_connection_goes_to_the_checked_address_with_the_right_host(settings, allow, dns):
    use_fast_settings(settings)
    with Receiver() as receiver:
        dns["billing.example"] = [["127.0.0.1"]]
        allow("127.0.0.0/8")
        subscription = make_subscription(f"http://billing.example:{receiver.port}/h/").subscription
        Customer.objects.create(name="Ada")
        assert drain_settled(subscription.pk) == "caught_up"
        [request] = receiver.requests
        assert request.headers["host"] == f"billing.example:{receiver.port}"
