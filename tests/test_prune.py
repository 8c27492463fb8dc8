"""Old changes go; what a subscription has not received stays; old cursors get 410."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

import pubsubpull
from customers.models import Customer
from pubsubpull.models import Change, Request
from pubsubpull.publisher import feed
from pubsubpull.publisher.delivery.models import Subscription

pytestmark = pytest.mark.django_db(transaction=True)


def age_everything(days=40):
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE pubsubpull_change SET at = at - interval '{days} days'")
        cursor.execute(f"UPDATE pubsubpull_request SET started = started - interval '{days} days'")


def prune(*args):
    from io import StringIO

    out = StringIO()
    call_command("pubsubpull_prune", *args, stdout=out)
    return out.getvalue()


def test_a_paused_subscription_keeps_its_backlog_and_old_cursors_get_410():
    for i in range(5):
        Customer.objects.create(name=f"c{i}")
    log = list(Change.objects.order_by("txid", "id"))
    delivered = log[1]
    Subscription.objects.create(
        owner="user:1",
        name="billing",
        callback="http://127.0.0.1:9/",
        model_labels=["customers.customer"],
        secret="whsec_dGVzdA==",
        state=Subscription.State.PAUSED,
        position_txid=delivered.txid,
        position_id=delivered.id,
    )
    age_everything()

    out = prune("--older-than", "30d")
    assert "Pruned 2 changes" in out
    remaining = list(Change.objects.order_by("txid", "id").values_list("id", flat=True))
    assert remaining == [c.id for c in log[2:]]

    # The subscription's backlog is whole; a reader still at the first change
    # must re-snapshot, and a new reader starts at the oldest retained change.
    page = feed.read_changes(feed.Position(delivered.txid, delivered.id))
    assert [c.id for c in page.changes] == remaining
    with pytest.raises(feed.CursorExpired):
        feed.read_changes(feed.Position(log[0].txid, log[0].id))
    assert [c.id for c in feed.read_changes(None).changes] == remaining

    Subscription.objects.all().delete()
    Customer.objects.create(name="fresh")
    assert "Pruned 3 changes" in prune("--older-than", "30d")
    assert list(Change.objects.values_list("new__name", flat=True)) == ["fresh"]


def test_pruning_is_logged_with_structured_details(caplog):
    Customer.objects.create(name="old")
    age_everything()
    with caplog.at_level("INFO", logger="pubsubpull"):
        prune("--older-than", "1d")
    (record,) = [r for r in caplog.records if getattr(r, "pubsubpull", {}).get("event") == "pruned"]
    assert record.pubsubpull["changes"] == 1
    assert record.name == "pubsubpull"


def test_requests_go_with_their_last_change_and_young_changes_stay():
    with pubsubpull.context(job="import"):
        Customer.objects.create(name="old")
    age_everything()
    with pubsubpull.context(job="import again"):
        Customer.objects.create(name="young")
    assert Request.objects.count() == 2

    out = prune("--older-than", "7d", "--batch-size", "1")
    assert "Pruned 1 changes, 1 requests" in out
    assert list(Change.objects.values_list("new__name", flat=True)) == ["young"]
    assert list(Request.objects.values_list("metadata__job", flat=True)) == ["import again"]


def test_bad_ages_are_refused():
    with pytest.raises(CommandError, match="is not an age: use a number and a unit"):
        prune("--older-than", "a month")
    with pytest.raises(CommandError, match="--batch-size must be at least 1"):
        prune("--older-than", "1d", "--batch-size", "0")
