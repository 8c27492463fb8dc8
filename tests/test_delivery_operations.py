"""Operating subscriptions: the admin (pause, resume, replay), the status table, pruning."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from customers.models import Customer
from pubsubpull.publisher import feed
from pubsubpull.publisher.delivery.attempts import prune_attempts
from pubsubpull.publisher.delivery.models import Attempt, Subscription

from .delivery_helpers import drain_settled, make_subscription, use_fast_settings
from .receivers import Answer, Receiver

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/pubsubpull/subscription/"


@pytest.fixture
def staff(settings):
    use_fast_settings(settings)
    User.objects.create_superuser("ops", "ops@example.com", "pw")
    client = Client()
    client.login(username="ops", password="pw")
    return client


def action(client, name, subscription, **extra):
    return client.post(
        CHANGELIST, {"action": name, "_selected_action": [subscription.pk], **extra}, follow=True
    )


def test_pause_resume_and_replay_from_the_admin(staff):
    with Receiver() as receiver:
        subscription = make_subscription(receiver.url()).subscription
        Customer.objects.create(name="Ada")
        assert drain_settled(subscription.pk) == "caught_up"

        page = staff.get(CHANGELIST)
        assert page.status_code == 200 and b"billing" in page.content
        detail = staff.get(f"{CHANGELIST}{subscription.pk}/change/")
        assert detail.status_code == 200 and b"1 attempts" in detail.content

        action(staff, "pause", subscription)
        assert Subscription.objects.get().state == "paused"
        Customer.objects.create(name="Grace")
        assert drain_settled(subscription.pk) == "busy"
        action(staff, "resume", subscription)
        assert Subscription.objects.get().state == "active"
        assert drain_settled(subscription.pk) == "caught_up"

        # Replay from a time: everything since then comes again, in order.
        form = action(staff, "replay", subscription)
        assert b"Replay" in form.content
        since = (timezone.now() - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
        action(staff, "replay", subscription, apply="1", since=since)
        assert drain_settled(subscription.pk) == "caught_up"
        names = [c["new"]["name"] for c in receiver.accepted_changes()]
        assert names == ["Ada", "Grace", "Ada", "Grace"]

        # Replay from a cursor: after Ada.
        ada = feed.read_changes(None, 1, ["customers.customer"]).changes[0]
        action(staff, "replay", subscription, apply="1", cursor=ada.cursor)
        assert drain_settled(subscription.pk) == "caught_up"
        assert [c["new"]["name"] for c in receiver.accepted_changes()][4:] == ["Grace"]

        bad = action(staff, "replay", subscription, apply="1", cursor="nonsense")
        assert b"not a feed cursor" in bad.content


def test_the_status_table_lists_every_subscription(settings):
    use_fast_settings(settings)
    with Receiver() as receiver:
        make_subscription(receiver.url(), name="billing")
        make_subscription(receiver.url(), name="comms", owner="token:2")
        Customer.objects.create(name="Ada")
        out = io.StringIO()
        call_command("pubsubpull_subscriptions", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:4] == ["NAME", "OWNER", "STATE", "LAG"]
    assert [line.split()[:4] for line in lines[1:]] == [
        ["billing", "token:1", "active", "1"],
        ["comms", "token:2", "active", "1"],
    ]


def test_old_attempts_are_pruned(settings):
    use_fast_settings(settings)
    with Receiver() as receiver:
        subscription = make_subscription(receiver.url()).subscription
        Customer.objects.create(name="Ada")
        drain_settled(subscription.pk)
    Attempt.objects.update(at=timezone.now() - timedelta(days=30))
    Customer.objects.create(name="Grace")
    with Receiver() as receiver:
        Subscription.objects.update(callback=receiver.url())
        drain_settled(subscription.pk)
    assert prune_attempts() == 1
    assert Attempt.objects.count() == 1


def test_a_replay_while_a_batch_is_in_flight_is_not_undone(settings):
    from django.db import connection

    from pubsubpull.publisher.delivery.subscriptions import replay

    use_fast_settings(settings)

    def answer(received, n):
        if n == 1:  # Grace's batch: the operator replays from the start meanwhile
            replay(Subscription.objects.get(), feed.START)
            connection.close()  # this is the receiver's thread
        return Answer()

    with Receiver(answer) as receiver:
        subscription = make_subscription(receiver.url()).subscription
        Customer.objects.create(name="Ada")
        assert drain_settled(subscription.pk) == "caught_up"
        Customer.objects.create(name="Grace")
        assert drain_settled(subscription.pk) == "lost"  # its batch was forgotten
        assert drain_settled(subscription.pk) == "caught_up"
    names = [c["new"]["name"] for c in receiver.accepted_changes()]
    assert names == ["Ada", "Grace", "Ada", "Grace"]
