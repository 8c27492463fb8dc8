"""Subscriptions delivered to real HTTP receivers on 127.0.0.1 by real workers."""

from __future__ import annotations

import time

import pytest
from django.db import connection
from standardwebhooks import Webhook, WebhookVerificationError

from customers.models import Customer
from pubsubpull.publisher import feed
from pubsubpull.publisher.delivery.deliver import USER_AGENT, backoff, drain
from pubsubpull.publisher.delivery.models import Attempt, Subscription

from .delivery_helpers import (
    WorkerThread,
    drain_settled,
    make_subscription,
    settle,
    use_fast_settings,
    wait_until,
)
from .receivers import Answer, Receiver

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fast(settings):
    return use_fast_settings(settings)


def feed_ids(models=("customers.customer",)):
    return [c.id for c in feed.read_from(feed.Position(0, 0), 10_000, list(models)).changes]


def test_a_billing_service_is_told_about_new_customers(fast):
    with Receiver() as receiver:
        subscribed = make_subscription(receiver.url())
        assert subscribed.created and subscribed.secret.startswith("whsec_")
        Customer.objects.create(name="Ada", email="ada@example.com")
        Customer.objects.bulk_create([Customer(name="Grace"), Customer(name="Linus")])

        assert drain_settled(subscribed.subscription.pk) == "caught_up"

        [request] = receiver.requests
        assert request.headers["user-agent"] == USER_AGENT
        assert request.headers["content-type"] == "application/json"
        # The receiver verifies with the Standard Webhooks library and its secret.
        payload = Webhook(subscribed.secret).verify(request.body, request.headers)
        assert payload["type"] == "pubsubpull.changes"
        changes = payload["data"]["changes"]
        assert [c["new"]["name"] for c in changes] == ["Ada", "Grace", "Linus"]
        assert [c["id"] for c in changes] == feed_ids()
        assert all("notes" not in c["new"] for c in changes)  # excluded field
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "A" * 44).verify(request.body, request.headers)

    subscription = Subscription.objects.get()
    assert subscription.delivered == 3
    assert subscription.state == "active"
    position = feed.Position(subscription.position_txid, subscription.position_id)
    assert position >= feed.Position.decode(changes[-1]["cursor"])
    [attempt] = Attempt.objects.all()
    assert attempt.status == 200 and attempt.changes == 3 and attempt.response == '{"ok": true}'
    assert attempt.webhook_id == request.webhook_id


def test_batches_follow_feed_order_across_models_and_transactions(fast):
    with Receiver() as receiver:
        make_subscription(receiver.url(), batch_size=2, models=["customers.customer"])
        for n in range(7):
            Customer.objects.create(name=f"c{n}")
        Customer.objects.filter(name__in=["c1", "c3"]).update(newsletter=True)
        Customer.objects.filter(name="c4").delete()
        with WorkerThread():
            receiver.wait_for(lambda: len(receiver.accepted_changes()) == 10)
        assert all(len(r.changes) <= 2 for r in receiver.requests)
        assert [c["id"] for c in receiver.accepted_changes()] == feed_ids()
        assert len({r.webhook_id for r in receiver.requests}) == len(receiver.requests)


def test_the_receiver_fails_for_a_while_then_recovers(fast):
    def answer(received, n):
        return Answer(500, body=b"database is down") if n < 4 else Answer()

    with Receiver(answer) as receiver, WorkerThread():
        make_subscription(receiver.url(), batch_size=3)
        for n in range(8):
            Customer.objects.create(name=f"c{n}")
        receiver.wait_for(lambda: len(receiver.accepted_changes()) == 8)

    # Everything once, in order; only the failed batch was sent again, under
    # the same webhook-id and with the same changes.
    assert [c["id"] for c in receiver.accepted_changes()] == feed_ids()
    failed = [r for r in receiver.requests if r.status == 500]
    assert failed
    retried = {r.webhook_id for r in failed}
    for r in receiver.requests:
        same = [o for o in receiver.requests if o.webhook_id == r.webhook_id]
        assert len({o.body and tuple(c["id"] for c in o.changes) for o in same}) == 1
        if len(same) > 1:
            assert r.webhook_id in retried
    subscription = Subscription.objects.get()
    assert subscription.state == "active" and subscription.failures == 0
    errors = Attempt.objects.filter(status=500)
    assert errors.count() == 4 and errors.first().response == "database is down"


def test_a_receiver_that_hangs_past_the_timeout_is_retried(fast):
    def answer(received, n):
        return Answer(delay=3.0) if n == 0 else Answer()

    with Receiver(answer) as receiver:
        subscription = make_subscription(receiver.url()).subscription
        Customer.objects.create(name="Ada")
        settle()
        started = time.monotonic()
        assert drain(subscription.pk) == "failed"
        assert time.monotonic() - started < 2.5  # TIMEOUT is 1 s
        attempt = Attempt.objects.get()
        assert attempt.status is None and "timed out" in attempt.error
        wait_until(lambda: drain_settled(subscription.pk) == "caught_up")
        assert receiver.requests[0].webhook_id == attempt.webhook_id
        assert len(receiver.accepted_changes()) == 1


def test_a_receiver_answering_410_disables_the_subscription_and_keeps_the_backlog(fast):
    with Receiver(lambda received, n: Answer(410)) as receiver:
        subscription = make_subscription(receiver.url()).subscription
        Customer.objects.create(name="Ada")
        assert drain_settled(subscription.pk) == "failed"
        subscription.refresh_from_db()
        assert subscription.state == "disabled"
        assert "410" in subscription.state_reason
        assert (subscription.position_txid, subscription.position_id) == (0, 0)
        Customer.objects.create(name="Grace")
        assert drain_settled(subscription.pk) == "busy"  # disabled: nobody delivers
        assert len(receiver.requests) == 1

    # Re-enabled (PUT again), it resumes in order from where it stopped.
    with Receiver() as receiver:
        make_subscription(receiver.url())
        assert drain_settled(subscription.pk) == "caught_up"
        assert [c["new"]["name"] for c in receiver.accepted_changes()] == ["Ada", "Grace"]


def test_429_with_retry_after_is_honoured(fast):
    def answer(received, n):
        return Answer(429, {"Retry-After": "1"}) if n == 0 else Answer()

    with Receiver(answer) as receiver, WorkerThread():
        make_subscription(receiver.url())
        Customer.objects.create(name="Ada")
        receiver.wait_for(lambda: len(receiver.accepted()) == 1)
    first, second = receiver.requests
    assert second.at - first.at >= 0.95
    assert first.webhook_id == second.webhook_id


def test_a_long_failure_streak_disables_and_resuming_delivers_in_order(fast):
    fast.PUBSUBPULL = {**fast.PUBSUBPULL, "DISABLE_AFTER": 0.3}
    with Receiver(lambda received, n: Answer(503)) as receiver:
        subscription = make_subscription(receiver.url(), batch_size=1).subscription
        Customer.objects.create(name="Ada")
        wait_until(
            lambda: drain_settled(subscription.pk) == "busy" and _state(subscription) == "disabled"
        )
        assert Attempt.objects.count() >= 2
    from pubsubpull.publisher.delivery.subscriptions import resume

    Customer.objects.create(name="Grace")
    with Receiver() as receiver:
        Subscription.objects.filter(pk=subscription.pk).update(callback=receiver.url())
        resume(Subscription.objects.get(pk=subscription.pk))
        assert drain_settled(subscription.pk) == "caught_up"
        assert [c["new"]["name"] for c in receiver.accepted_changes()] == ["Ada", "Grace"]


def _state(subscription):
    subscription.refresh_from_db()
    return subscription.state


def test_redirects_are_not_followed(fast):
    with Receiver() as target:
        with Receiver(lambda r, n: Answer(307, {"Location": target.url()})) as receiver:
            subscription = make_subscription(receiver.url()).subscription
            Customer.objects.create(name="Ada")
            assert drain_settled(subscription.pk) == "failed"
        assert target.requests == []
    assert Attempt.objects.get().status == 307


def test_backoff_grows_exponentially_with_jitter_and_a_cap(settings):
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "RETRY_BASE": 2.0, "RETRY_MAX": 3600.0}
    assert 1.0 <= backoff(1) <= 2.0
    assert 4.0 <= backoff(3) <= 8.0
    assert 1800 <= backoff(40) <= 3600
    assert backoff(1, retry_after=30) == 30
    assert backoff(1, retry_after=10**9) == 3600


def test_secret_rotation_signs_with_both_during_the_grace_period(fast):
    with Receiver() as receiver:
        first = make_subscription(receiver.url())
        rotated = make_subscription(receiver.url(), rotate_secret=True)
        assert not rotated.created and rotated.secret and rotated.secret != first.secret
        again = make_subscription(receiver.url())
        assert again.secret is None  # never shown again
        Customer.objects.create(name="Ada")
        drain_settled(first.subscription.pk)
        [request] = receiver.requests
        for secret in (first.secret, rotated.secret):
            Webhook(secret).verify(request.body, request.headers)


def test_unsubscribing_while_a_batch_is_in_flight_is_clean(fast):
    def answer(received, n):
        # The subscriber unsubscribes while its notification is being PUT.
        Subscription.objects.all().delete()
        connection.close()  # this is the receiver's thread
        return Answer()

    with Receiver(answer) as receiver:
        subscription = make_subscription(receiver.url()).subscription
        Customer.objects.create(name="Ada")
        assert drain_settled(subscription.pk) == "lost"
        assert len(receiver.requests) == 1
    assert not Attempt.objects.exists()


def test_start_now_is_not_held_back_by_a_transaction_in_another_database(fast):
    import psycopg

    from .conftest import dsn

    # Another service (or a benchmark) on the same PostgreSQL server keeps a
    # transaction open in its own database the whole time.
    with psycopg.connect(dsn("postgres")) as other, Receiver() as receiver:
        other.execute("SELECT pg_current_xact_id()")
        Customer.objects.create(name="Before")
        settle()
        subscription = make_subscription(receiver.url(), start="now").subscription
        Customer.objects.create(name="After")
        assert drain_settled(subscription.pk) == "caught_up"
        other.rollback()
    assert [c["new"]["name"] for c in receiver.accepted_changes()] == ["After"]
