"""CloudEvents framing: notifications and feed pages as CloudEvents 1.0 JSON batches.

What we send is read back with the ``cloudevents`` library's own parser (its
JSON event format), over real HTTP: the worker PUTs to a recording receiver
and to a live pubsubpull receiver, and the feed is read from a live server.
"""

from __future__ import annotations

import json

import httpx
import pytest
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from standardwebhooks import Webhook

import pubsubpull
from customers.models import Customer
from pubsubpull.client.models import RemoteSubscription
from pubsubpull.publisher import feed
from pubsubpull.publisher.api.auth import create_token
from pubsubpull.publisher.delivery import parking
from pubsubpull.publisher.delivery.models import Subscription
from tests import receiver_urls

from .delivery_helpers import (
    WorkerThread,
    drain_settled,
    make_subscription,
    use_fast_settings,
    wait_until,
)
from .receivers import Answer, Receiver

pytestmark = pytest.mark.django_db(transaction=True)

BATCH = "application/cloudevents-batch+json"


@pytest.fixture(autouse=True)
def fast(settings):
    return use_fast_settings(settings)


def parse_batch(body: bytes) -> list[CloudEvent]:
    """A JSON batch, each event read by the cloudevents library (which validates it)."""
    events = json.loads(body)
    assert isinstance(events, list)
    return [JSONFormat().read(CloudEvent, json.dumps(event)) for event in events]


def feed_items(models=("customers.customer",)):
    return [c.as_json() for c in feed.read_from(feed.START, 10_000, list(models)).changes]


def test_a_cloudevents_subscription_sends_batches_the_cloudevents_library_reads():
    with Receiver() as receiver:
        subscribed = make_subscription(receiver.url(), format="cloudevents")
        ada = Customer.objects.create(name="Ada", email="ada@example.com")
        Customer.objects.filter(pk=ada.pk).update(name="Ada L.")
        Customer.objects.filter(pk=ada.pk).delete()
        assert drain_settled(subscribed.subscription.pk) == "caught_up"

    [request] = receiver.requests
    assert request.headers["content-type"] == BATCH
    # Signed like any notification: the Standard Webhooks library verifies it.
    Webhook(subscribed.secret).verify(request.body, request.headers)
    events = parse_batch(request.body)
    items = feed_items()
    assert [e.get_id() for e in events] == [str(item["id"]) for item in items]
    assert [e.get_type() for e in events] == [
        "org.pubsubpull.customers.customer.insert",
        "org.pubsubpull.customers.customer.update",
        "org.pubsubpull.customers.customer.delete",
    ]
    for event, item in zip(events, items, strict=True):
        assert event.get_specversion() == "1.0"
        assert event.get_source() == "/pubsubpull/"
        assert event.get_subject() == str(ada.pk)
        assert event.get_time() is not None and event.get_time().tzinfo is not None
        assert event.get_datacontenttype() == "application/json"
        assert event.get_data() == item  # the change item, as the default framing has it
        assert event.get_extension("pubsubpullcursor") == item["cursor"]
        assert event.get_extension("pubsubpullseq") == str(item["sequence"])
        assert event.get_extension("pubsubpullsub") == "billing"


def test_a_redelivered_batch_carries_the_same_event_ids(settings):
    settings.PUBSUBPULL = {
        **settings.PUBSUBPULL,
        "CLOUDEVENTS_SOURCE": "https://customers.example/pubsubpull/",
        "CLOUDEVENTS_TYPE_PREFIX": "com.example.customers",
    }

    def first_fails(received, n):
        return Answer(503) if n == 0 else Answer()

    with Receiver(first_fails) as receiver:
        make_subscription(receiver.url(), format="cloudevents")
        Customer.objects.create(name="Grace")
        Customer.objects.create(name="Linus")
        with WorkerThread():
            receiver.wait_for(lambda: len(receiver.accepted()) == 1)

    failed, accepted = receiver.requests
    assert failed.webhook_id == accepted.webhook_id
    assert failed.body == accepted.body  # at least once: the same events, the same ids
    events = parse_batch(accepted.body)
    assert {e.get_source() for e in events} == {"https://customers.example/pubsubpull/"}
    assert {e.get_type() for e in events} == {"com.example.customers.customers.customer.insert"}


def test_a_parked_change_sent_again_is_one_event_marked_parked():
    with Receiver(lambda received, n: Answer(422) if n < 2 else Answer()) as receiver:
        make_subscription(receiver.url(), format="cloudevents")
        Customer.objects.create(name="Poison")
        with WorkerThread():
            wait_until(lambda: Subscription.objects.get().state == "blocked")
        subscription = Subscription.objects.get()
        [change] = feed_items()
        parked, _ = parking.park(subscription, change["id"])
        parking.resend(parked)

    resent = receiver.requests[-1]
    assert resent.headers["content-type"] == BATCH
    [event] = parse_batch(resent.body)
    assert event.get_id() == str(change["id"])
    assert event.get_extension("pubsubpullparked") is True
    assert event.get_data() == change


@pytest.fixture
def token():
    return create_token("billing", ["*"])[1]


def test_the_feed_serves_a_cloudevents_batch_by_accept_header_or_format(live_server, token):
    Customer.objects.create(name="Ada")
    Customer.objects.create(name="Grace")
    url = f"{live_server.url}/pubsubpull/changes/"
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(headers=auth) as client:
        plain = client.get(url, params={"models": "customers.customer"})
        by_accept = client.get(
            url, params={"models": "customers.customer"}, headers={"Accept": BATCH}
        )
        by_format = client.get(url, params={"models": "customers.customer", "limit": 1,
                                            "format": "cloudevents"})  # fmt: skip
        refused = client.get(url, params={"format": "xml"})
        following = client.get(by_format.links["next"]["url"])

    # The default stays as it is.
    assert plain.headers["content-type"] == "application/json"
    page = plain.json()
    assert [c["new"]["name"] for c in page["changes"]] == ["Ada", "Grace"]

    assert by_accept.status_code == 200
    assert by_accept.headers["content-type"] == BATCH
    events = parse_batch(by_accept.content)
    assert [e.get_data() for e in events] == page["changes"]
    assert [e.get_id() for e in events] == [str(c["id"]) for c in page["changes"]]
    # A batch is a JSON array: the page's cursor and next link are headers.
    cursor = by_accept.headers["pubsubpull-cursor"]
    assert feed.Position.decode(cursor) >= feed.Position.decode(page["changes"][-1]["cursor"])
    assert f"after={cursor}" in by_accept.links["next"]["url"]

    [first] = parse_batch(by_format.content)
    assert first.get_data() == page["changes"][0]
    assert "format=cloudevents" in by_format.links["next"]["url"]  # the next page too
    [second] = parse_batch(following.content)
    assert second.get_data() == page["changes"][1]

    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_format"
    assert "cloudevents" in refused.json()["detail"]


def test_a_receiver_takes_cloudevents_and_the_default_alike(live_server, token, settings):
    settings.ROOT_URLCONF = receiver_urls.__name__
    receiver_urls.HANDLED.clear()
    publisher = f"{live_server.url}/pubsubpull/"
    callback = f"{live_server.url}/hooks/fuzz/"
    pubsubpull.subscribe(
        publisher, "billing", callback, models=["customers.customer"], auth=token,
        format="cloudevents",
    )  # fmt: skip
    subscription = Subscription.objects.get()
    assert subscription.framing == "cloudevents"
    Customer.objects.create(name="Ada")
    assert drain_settled(subscription.pk) == "caught_up"
    assert [(e.op, e.data["name"]) for e in receiver_urls.HANDLED] == [("insert", "Ada")]
    remote = RemoteSubscription.objects.get()
    assert remote.position == receiver_urls.HANDLED[0].cursor  # the receiver moved on

    # Back to the default framing: subscribing again says so, position kept.
    pubsubpull.subscribe(
        publisher, "billing", callback, models=["customers.customer"], auth=token,
        format="pubsubpull",
    )  # fmt: skip
    Customer.objects.create(name="Grace")
    assert drain_settled(subscription.pk) == "caught_up"
    assert [e.data["name"] for e in receiver_urls.HANDLED] == ["Ada", "Grace"]
    assert Subscription.objects.get().framing == "pubsubpull"


def test_a_cloudevents_batch_that_is_not_one_is_400(live_server, settings):
    settings.ROOT_URLCONF = receiver_urls.__name__
    from pubsubpull.publisher.delivery import signing

    secret = signing.new_secret()
    RemoteSubscription.objects.create(
        publisher="https://customers.example/pubsubpull/", name="users",
        callback=f"{live_server.url}/hooks/fuzz/", model_labels=["auth.user"], secret=secret,
    )  # fmt: skip
    bad = [{"specversion": "1.0", "id": "1", "source": "/x", "type": "t",
            "pubsubpullsub": "users", "data": {"nothing": "here"}}]  # fmt: skip
    body = json.dumps(bad).encode()
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    headers = {
        "content-type": BATCH,
        "webhook-id": "msg_bad",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signing.signature([secret], "msg_bad", now, body.decode()),
    }
    answer = httpx.put(f"{live_server.url}/hooks/fuzz/", content=body, headers=headers)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_body"
    assert "data is not a pubsubpull change" in answer.json()["detail"]


def test_a_pull_reads_the_feed_as_cloudevents_and_gets_the_same_events(live_server, token):
    from pubsubpull.client import pulling
    from pubsubpull.exceptions import InvalidOption
    from tests import client_handlers

    client_handlers.seen.clear()
    url = f"{live_server.url}/pubsubpull/models/customers.customer/instances/"
    ada = Customer.objects.create(name="Ada")
    plain = pubsubpull.pull(
        url, client_handlers.record, auth=token, name="plain", start="beginning", enqueue=False
    )
    framed = pubsubpull.pull(
        url, client_handlers.record, auth=token, name="framed", start="beginning",
        page_size=1, enqueue=False, format="cloudevents",
    )  # fmt: skip
    assert framed.framing == "cloudevents"
    for cursor in (plain, framed):
        assert pulling.run(cursor.id, stop_when_caught_up=True, now=True) == "caught_up"
    client_handlers.seen.clear()
    Customer.objects.filter(pk=ada.pk).update(name="Ada L.")
    Customer.objects.create(name="Grace")
    got = {}
    for cursor in (plain, framed):
        assert pulling.run(cursor.id, stop_when_caught_up=True, now=True) == "caught_up"
        got[cursor.name] = list(client_handlers.seen)
        client_handlers.seen.clear()
        cursor.refresh_from_db()
    assert [(e.op, e.data["name"]) for e in got["framed"]] == [("update", "Ada L."),
                                                             ("insert", "Grace")]  # fmt: skip
    assert got["framed"] == got["plain"]
    assert plain.feed_position and framed.feed_position
    with pytest.raises(InvalidOption, match="cloudevents"):
        pubsubpull.pull(url, client_handlers.record, auth=token, name="x", format="xml")
