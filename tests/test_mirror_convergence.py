"""Mirrors always converge: billing (its own processes) mirrors customers (live_server).

A re-snapshot after a 410 ends with exactly the publisher's rows, tombstones
do not pile up, unmapped fields get their defaults (or the mirror is refused
when declared), and a page that can never apply blocks the mirror visibly
until it is parked, the rest going on in order.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest

from customers.models import Country, Customer
from pubsubpull.publisher import retention

from . import newer_publisher_urls, services
from .delivery_helpers import WorkerThread, use_fast_settings
from .services import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

billing_service, billing = services.billing_service, services.billing  # the fixtures


def published() -> dict[int, tuple]:
    return {c.pk: (c.name, c.country_id) for c in Customer.objects.all()}


def mirrored(billing, table="billing_customercountry") -> dict[int, tuple]:
    return {
        r[0]: (r[1], r[2]) for r in billing.sql(f"SELECT remote_id, name, country FROM {table}")
    }


def cursor(billing, name: str) -> dict:
    rows = billing.sql(
        "SELECT row_to_json(c)::text FROM pubsubpull_pullcursor AS c WHERE name = %s", [name]
    )
    return json.loads(rows[0][0]) if rows else {}


def test_after_a_pruned_gap_the_new_snapshot_ends_with_exactly_the_publishers_rows(billing):
    fr = Country.objects.create(code="FR", name="France")
    Customer.objects.bulk_create(Customer(name=f"c{i}", country=fr) for i in range(60))
    billing.overrides["PULL_PAGE_SIZE"] = 7  # a snapshot of many pages
    billing.extra_env["BILLING_HANDLER_DELAY"] = "0"
    worker = billing.start_worker()
    billing.shell("from billing.mirrors import customers; customers.pull()")
    wait_until(lambda: mirrored(billing) == published(), timeout=60)

    # Billing is down for a while; customers go, come and change, and the
    # publisher prunes its log past billing's cursor.
    worker.kill()
    ids = sorted(published())
    gone = ids[::5]  # in every part of the key range, the first and the last too
    gone.append(ids[-1])
    Customer.objects.filter(pk__in=gone).delete()
    Customer.objects.filter(pk__in=ids[1::5]).update(name="renamed")
    Customer.objects.bulk_create(Customer(name=f"new{i}") for i in range(5))
    assert retention.prune(timedelta(0)).changes > 0

    # While it takes the new snapshot, no live row is ever missing from the copy.
    kept = set(ids) - set(gone)
    missing: list[set] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            keys = {r[0] for r in billing.sql("SELECT remote_id FROM billing_customercountry")}
            if not kept <= keys:
                missing.append(kept - keys)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        billing.start_worker()
        wait_until(lambda: cursor(billing, "mirror:billing.customercountry")["snapshots"] == 2)
        wait_until(lambda: mirrored(billing) == published(), timeout=60)
    finally:
        stop.set()
        watcher.join()
    assert missing == []
    assert not set(gone) & set(mirrored(billing))
    assert billing.sql("SELECT count(*) FROM pubsubpull_mirrorseen") == [(0,)]

    # And it goes on following the feed from there.
    Customer.objects.filter(pk=ids[2]).update(name="after")
    wait_until(lambda: mirrored(billing) == published())


def test_a_first_copy_into_a_table_with_rows_ends_with_exactly_the_publishers_rows(billing):
    Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(9))
    # Left from another cursor, or written by hand: not the publisher's.
    billing.sql(
        "INSERT INTO billing_customercountry (remote_id, remote_sequence, name) "
        "VALUES (999999, 1, 'stale')"
    )
    billing.overrides["PULL_PAGE_SIZE"] = 4
    billing.start_worker()
    billing.shell("from billing.mirrors import customers; customers.pull()")
    wait_until(lambda: mirrored(billing) == published(), timeout=60)
    assert billing.sql("SELECT count(*) FROM pubsubpull_mirrorseen") == [(0,)]


def test_tombstones_are_pruned_once_they_can_no_longer_matter(billing):
    customers = Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(3))
    billing.start_worker()
    billing.shell("from billing.mirrors import customers; customers.pull()")
    wait_until(lambda: mirrored(billing) == published())

    customers[0].delete()
    wait_until(lambda: len(billing.sql("SELECT object_pk FROM pubsubpull_mirrortombstone")) == 1)
    # A week later (the default MIRROR_TOMBSTONE_RETENTION), the next delete prunes it.
    billing.sql("UPDATE pubsubpull_mirrortombstone SET at = now() - interval '8 days'")
    second = str(customers[1].pk)
    customers[1].delete()
    wait_until(lambda: mirrored(billing) == published())
    wait_until(
        lambda: billing.sql("SELECT object_pk FROM pubsubpull_mirrortombstone") == [(second,)]
    )


def test_unmapped_fields_get_the_models_defaults(billing):
    fr = Country.objects.create(code="FR", name="France")
    Customer.objects.bulk_create(Customer(name=f"c{i}", country=fr) for i in range(12))
    billing.overrides["PULL_PAGE_SIZE"] = 5
    billing.start_worker()
    billing.shell("from billing.mirrors import cards; cards.pull()")
    wait_until(lambda: mirrored(billing, "billing_customercard") == published())

    rows = billing.sql(
        "SELECT card, tier, limits::text, score, issued, touched FROM billing_customercard"
    )
    assert len({card for card, *_ in rows}) == 12  # a callable default is called per row
    assert {(tier, limits, score) for _, tier, limits, score, _, _ in rows} == {
        ("standard", "{}", 7)  # a default, a callable's JSON, a db_default
    }
    assert all(issued is not None and touched is not None for *_, issued, touched in rows)

    # An update changes the mapped fields and auto_now, never the defaults.
    first = Customer.objects.order_by("pk").first()
    [(card, issued, touched)] = billing.sql(
        "SELECT card, issued, touched FROM billing_customercard WHERE remote_id = %s", [first.pk]
    )
    first.name = "renamed"
    first.save()
    wait_until(lambda: mirrored(billing, "billing_customercard") == published())
    [(card2, issued2, touched2)] = billing.sql(
        "SELECT card, issued, touched FROM billing_customercard WHERE remote_id = %s", [first.pk]
    )
    assert (card2, issued2) == (card, issued) and touched2 > touched


def test_a_required_field_the_mirror_cannot_fill_is_refused_when_it_is_declared(billing):
    # The README's mirror of the use-case page's CustomerCountry, whose name is required.
    with pytest.raises(AssertionError) as refused:
        billing.shell(
            "import pubsubpull\n"
            "from billing.models import CustomerCountry\n"
            "pubsubpull.mirror('http://customers.internal/pubsubpull/models/"
            "customers.customer/instances/', CustomerCountry, fields={'country': 'country'})"
        )
    message = str(refused.value)
    assert "ImproperlyConfigured" in message
    assert "billing.CustomerCountry.name is NOT NULL without a default" in message
    assert '"name": "<remote field>"' in message and "null=True" in message


def test_a_page_that_can_never_apply_blocks_the_mirror_until_it_is_parked(billing):
    Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(10))
    long = Customer.objects.create(name="Maria Salomea Skłodowska-Curie")  # 30: billing keeps 20
    Customer.objects.bulk_create(Customer(name=f"d{i}") for i in range(4))
    billing.overrides["PULL_PAGE_SIZE"] = 5
    billing.start_worker()
    billing.shell("from billing.mirrors import cards; cards.pull()")

    # Blocked, saying where and why; not retried.
    wait_until(lambda: cursor(billing, "mirror:cards").get("state") == "blocked", timeout=60)
    state = cursor(billing, "mirror:cards")
    assert "DataError" in state["last_error"] and "value too long" in state["last_error"]
    assert "snapshot" in state["last_error"] and "park" in state["last_error"]
    before = mirrored(billing, "billing_customercard")
    assert long.pk not in before and len(before) == 10  # the two pages before it
    time.sleep(2)  # ten sweeps of the worker
    assert cursor(billing, "mirror:cards")["failures"] == state["failures"] == 1
    assert mirrored(billing, "billing_customercard") == before

    # The operator parks what fails; the rest goes on, in order.
    status = billing.manage("pubsubpull_cursors")
    assert "mirror:cards" in status and "blocked" in status and "DataError" in status
    billing.manage("pubsubpull_cursors", "park", "mirror:cards")
    expected = {pk: row for pk, row in published().items() if pk != long.pk}
    wait_until(lambda: mirrored(billing, "billing_customercard") == expected, timeout=60)
    # Its snapshot row is parked (and any later event of it behind it: an
    # object's events keep their order); nothing else is held up.
    wait_until(lambda: cursor(billing, "mirror:cards")["phase"] == "feed")
    Customer.objects.create(name="later")
    wait_until(lambda: len(mirrored(billing, "billing_customercard")) == len(expected) + 1)
    parked = billing.sql("SELECT object_pk, op, error, attempts FROM pubsubpull_parkedevent")
    assert parked[0][:2] == (str(long.pk), "snapshot") and "value too long" in parked[0][2]
    assert {(pk, attempts) for pk, _, _, attempts in parked} == {(str(long.pk), 1)}
    assert all("Behind a parked event" in error for _, _, error, _ in parked[1:])
    assert cursor(billing, "mirror:cards")["state"] == "active"
    n = len(parked)

    # Re-applied as it is, it fails again and stays parked, in order.
    def reapply():
        return billing.manage("pubsubpull_cursors", "reapply", "mirror:cards").splitlines()[0]

    assert reapply() == f"Applied 0 parked event(s); {n} still fail."
    attempts = billing.sql("SELECT attempts FROM pubsubpull_parkedevent ORDER BY id")
    assert attempts == [(2,)] + [(1,)] * (n - 1)

    # Billing fixes the cause (a migration widens the column); re-applied, all is there.
    billing.sql("ALTER TABLE billing_customercard ALTER name TYPE varchar(40)")
    assert reapply() == f"Applied {n} parked event(s); 0 still fail."
    assert billing.sql("SELECT count(*) FROM pubsubpull_parkedevent") == [(0,)]
    assert mirrored(billing, "billing_customercard") == published()
    billing.stop_all()
    billing.sql("TRUNCATE billing_customercard")  # as the model says, for the next test
    billing.sql("ALTER TABLE billing_customercard ALTER name TYPE varchar(20)")


def test_a_pushed_change_that_can_never_apply_blocks_the_subscription_until_parked(
    billing, settings
):
    """Push mode: the receiver says 422 for what its database refuses, never 500.

    A 500 means "try again later", and the publisher would retry it on the
    backoff for days. 422 lets it narrow the batch to the change and block on it,
    naming it, until the operator parks it; the rest then goes on in order.
    """
    use_fast_settings(settings)
    from pubsubpull.publisher.delivery.models import Attempt, Subscription
    from pubsubpull.publisher.delivery.parking import next_change, park

    billing.start_server()
    billing.shell(
        f"from billing.mirrors import cards; cards.subscribe('{billing.url}/hooks/cards/')"
    )
    with WorkerThread():
        Customer.objects.create(name="a")
        long = Customer.objects.create(name="Maria Salomea Skłodowska-Curie")  # 30 > 20
        Customer.objects.create(name="b")
        wait_until(lambda: Subscription.objects.get().state == "blocked", timeout=60)
        subscription = Subscription.objects.get()
        assert f"customers.customer {long.pk}" in subscription.state_reason
        refused = Attempt.objects.filter(status=422)
        assert refused.exists() and not Attempt.objects.filter(status=500).exists()
        assert all("cannot_apply" in a.response and "DataError" in a.response for a in refused)
        assert [n for n, _ in mirrored(billing, "billing_customercard").values()] == ["a"]

        park(subscription, next_change(subscription).id, by="test")
        expected = {pk: row for pk, row in published().items() if pk != long.pk}
        wait_until(lambda: mirrored(billing, "billing_customercard") == expected, timeout=60)
        assert Subscription.objects.get().state == "active"
    billing.stop_all()
    billing.sql("TRUNCATE billing_customercard")  # as the model says, for the next test


def test_catching_up_applies_a_change_whose_cursor_it_cannot_place(billing, settings):
    """A later publisher version may spell a cursor this client cannot read: catch_up
    applies that change (at least once) and still drops the one it has handled,
    instead of failing to compare the unreadable cursor with its position."""
    settings.ROOT_URLCONF = newer_publisher_urls.__name__
    newer = billing.customers_url.replace("/pubsubpull/", "/newer/")
    out = billing.shell(
        "from billing.models import CustomerCountry\n"
        "from pubsubpull.client.mirror import Mirror\n"
        "from pubsubpull.client.models import RemoteSubscription\n"
        f"m = Mirror({newer + 'models/customers.customer/instances/'!r}, CustomerCountry,\n"
        "           fields={'name': 'name', 'country': 'country'}, name='newer')\n"
        "sub = RemoteSubscription.objects.create(publisher=m.service_url, name='newer',\n"
        "    owner=RemoteSubscription.owner_for(''), callback='http://billing.invalid/',\n"
        f"    secret='whsec_x', position={newer_publisher_urls.HANDLED.encode()!r})\n"
        "print(m.catch_up(sub))\n"
        "sub.refresh_from_db()\n"
        "print(sub.position)\n"
    )
    applied, position = out.split()
    assert applied == "1"
    assert mirrored(billing) == {2: ("from the future", None)}
    assert position == newer_publisher_urls.FOLLOWING.encode()
