"""Whole transactions: a page or batch never holds part of a publisher's transaction.

A receiver or a pull that applies each batch or page in one database
transaction then never shows half of one. Real PostgreSQL, real HTTP (the
feed from live_server, batches to a receiver on 127.0.0.1), transactions
larger than the page limit and the batch size, and a writer committing on
its own connections while the pages are read.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest
from django.db import transaction

import pubsubpull
from customers.models import Customer
from pubsubpull.client import pulling
from pubsubpull.protocol.cursor import Position
from pubsubpull.publisher import feed, longpoll
from pubsubpull.publisher.api.auth import create_token
from pubsubpull.publisher.delivery import parking
from pubsubpull.publisher.delivery.models import ParkedChange, Subscription
from tests.conftest import dsn

from . import services
from .delivery_helpers import drain_settled, make_subscription, settle, use_fast_settings
from .receivers import Answer, Receiver
from .services import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

# Transactions of these sizes, in this order: larger than the page limit and
# the batch size used below (5), mixed with single-row ones.
SIZES = [1, 12, 1, 3, 3, 1, 7, 2, 1, 5, 6, 1]


@pytest.fixture(autouse=True)
def fast(settings):
    yield use_fast_settings(settings)
    longpoll.stop_listening()


def write_transactions(sizes, prefix="t"):
    """One database transaction per size; rows named ``<prefix><k>-<i>``. Their sizes by name."""
    for k, size in enumerate(sizes):
        with transaction.atomic():
            for i in range(size):
                Customer.objects.create(name=f"{prefix}{k}-{i}")
    return {f"{prefix}{k}": size for k, size in enumerate(sizes)}


def group(item) -> str:
    values = item["new"] or item["old"]
    return values["name"].split("-")[0]


def txid(item) -> int:
    return Position.decode(item["cursor"]).txid


def split_transactions(pages) -> list[int]:
    """The txids whose changes are spread over more than one page or batch."""
    where: dict[int, set[int]] = {}
    for n, items in enumerate(pages):
        for item in items:
            where.setdefault(txid(item), set()).add(n)
    return sorted(t for t, found in where.items() if len(found) > 1)


def assert_complete(pages, sizes):
    """Each page holds only complete transactions."""
    for items in pages:
        for name, count in Counter(group(i) for i in items).items():
            assert count == sizes[name], (name, count, [group(i) for i in items])


def assert_whole(pages, sizes):
    """Each page holds only whole transactions, and all of them, in feed order, once."""
    assert not split_transactions(pages)
    assert_complete(pages, sizes)
    every = [item for items in pages for item in items]
    assert Counter(group(i) for i in every) == sizes
    positions = [Position.decode(i["cursor"]) for i in every]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)


@pytest.fixture
def api(live_server):
    token = create_token("billing", ["customers.customer"])[1]
    with httpx.Client(
        base_url=f"{live_server.url}/pubsubpull",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ) as client:
        yield client


def read_pages(api, **params):
    """Follow the feed over HTTP by its ``next`` links until an empty page; the pages."""
    pages, url = [], "/changes/"
    body = api.get(url, params={"models": "customers.customer", **params}).json()
    while body["changes"]:
        pages.append(body["changes"])
        body = api.get(body["next"]).json()
    return pages


# -- the feed -------------------------------------------------------------------


def test_feed_pages_hold_whole_transactions_and_a_large_one_alone():
    sizes = write_transactions(SIZES)
    settle()
    pages, after = [], None
    while True:
        page = feed.read_changes(after, 5, ["customers.customer"], whole_transactions=True)
        if not page.changes:
            break
        assert len(page.changes) <= 5 or len({c.txid for c in page.changes}) == 1
        assert not page.caught_up or len(page.changes) < 5
        pages.append([c.as_json() for c in page.changes])
        after = page.next
    assert_whole(pages, sizes)
    # The 12-change transaction came alone and complete; a page stopped short
    # of the limit rather than cut a transaction ([1] then [12], [1, 3] then [3, 1]).
    assert [len(p) for p in pages] == [1, 12, 4, 4, 7, 3, 5, 6, 1]
    # The same changes as the plain feed, in the same order.
    plain = []
    after = None
    while page := feed.read_changes(after, 5, ["customers.customer"]).changes:
        plain += [c.id for c in page]
        after = page[-1].position
    assert [i["id"] for p in pages for i in p] == plain


def test_over_http_the_option_keeps_transactions_whole_and_without_it_pages_split_them(api):
    sizes = write_transactions(SIZES)
    settle()
    plain = read_pages(api, limit=5)
    assert split_transactions(plain)  # what the option is for
    whole = read_pages(api, limit=5, whole_transactions="1")
    assert_whole(whole, sizes)
    assert [i["id"] for p in whole for i in p] == [i["id"] for p in plain for i in p]
    # The next link keeps asking for whole transactions.
    body = api.get("/changes/", params={"limit": 5, "whole_transactions": "true"}).json()
    assert parse_qs(urlsplit(body["next"]).query)["whole_transactions"] == ["1"]
    assert "whole_transactions=1" in api.get(body["next"]).headers["Link"]


def test_a_long_poll_with_the_option_is_woken_with_whole_transactions(api):
    start = api.get("/changes/", params={"limit": 1}).json()["cursor"]
    timer = threading.Timer(0.5, lambda: write_transactions([8]))
    timer.start()
    try:
        body = api.get(
            "/changes/",
            params={"after": start, "limit": 3, "wait": 10, "whole_transactions": 1},
        ).json()
    finally:
        timer.join()
    assert [group(i) for i in body["changes"]] == ["t0"] * 8


@pytest.mark.parametrize("value", ["yes", "2", "TRUE ", "on", "-1", "1.0"])
def test_bad_values_of_the_parameter_are_refused_naming_it(api, value):
    answer = api.get("/changes/", params={"whole_transactions": value})
    assert answer.status_code == 400 and answer.headers["Content-Type"] == "application/json"
    body = answer.json()
    assert body["error"] == "invalid_whole_transactions"
    assert "whole_transactions" in body["detail"] and repr(value) in body["detail"]
    long_poll = api.get("/changes/", params={"whole_transactions": value, "wait": 5})
    assert long_poll.status_code == 400  # at once, not after the wait


def test_a_writer_committing_while_pages_are_read_never_has_a_transaction_split(api):
    """Concurrent transactions on their own connections; pages read over HTTP meanwhile."""
    rng = random.Random(14)
    plan = [[rng.choice([1, 1, 2, 4, 9, 13]) for _ in range(40)] for _ in range(2)]
    sizes = {f"w{w}x{k}": size for w, sizes in enumerate(plan) for k, size in enumerate(sizes)}
    errors: list[BaseException] = []
    insert = (
        "INSERT INTO customers_customer (name, email, newsletter, notes, created, updated) "
        "VALUES (%s, '', false, '', now(), now())"
    )

    def write(w):
        try:
            with psycopg.connect(dsn()) as conn:
                for k, size in enumerate(plan[w]):
                    # Row by row, so a reader's snapshot may fall in the middle.
                    for i in range(size):
                        conn.execute(insert, [f"w{w}x{k}-{i}"])
                    conn.commit()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    pages, after = [], None
    for thread in writers:
        thread.start()
    while True:
        finished = not any(t.is_alive() for t in writers)
        params = {"limit": 5, "whole_transactions": 1, "models": "customers.customer"}
        body = api.get("/changes/", params={**params, **({"after": after} if after else {})})
        body = body.json()
        if body["changes"]:
            pages.append(body["changes"])
        after = body["cursor"]
        if finished and not body["changes"]:
            settle()
            body = api.get("/changes/", params={**params, "after": after}).json()
            if not body["changes"]:
                break
            pages.append(body["changes"])
            after = body["cursor"]
    assert not errors, errors
    assert_whole(pages, sizes)
    assert len(pages) > 10


# -- delivery -------------------------------------------------------------------


def test_delivery_sends_whole_transactions_and_a_large_one_alone():
    with Receiver() as receiver:
        subscription = make_subscription(
            receiver.url(), batch_size=5, whole_transactions=True
        ).subscription
        assert subscription.whole_transactions
        sizes = write_transactions(SIZES)
        assert drain_settled(subscription.pk) == "caught_up"
    batches = [r.changes for r in receiver.accepted()]
    assert_whole(batches, sizes)
    assert [len(b) for b in batches] == [1, 12, 4, 4, 7, 3, 5, 6, 1]
    subscription.refresh_from_db()
    assert subscription.delivered == sum(SIZES)


def test_without_the_option_batches_split_transactions():
    with Receiver() as receiver:
        subscription = make_subscription(receiver.url(), batch_size=5).subscription
        write_transactions(SIZES)
        assert drain_settled(subscription.pk) == "caught_up"
    assert split_transactions([r.changes for r in receiver.accepted()])


def test_a_byte_capped_batch_ends_at_a_transaction_boundary(fast):
    fast.PUBSUBPULL = {**fast.PUBSUBPULL, "BATCH_MAX_BYTES": 2500}
    with Receiver() as receiver:
        subscription = make_subscription(
            receiver.url(), batch_size=100, whole_transactions=True
        ).subscription
        sizes = write_transactions(SIZES)
        assert drain_settled(subscription.pk) == "caught_up"
    batches = [r.changes for r in receiver.accepted()]
    assert_whole(batches, sizes)
    assert len(batches) > 3
    # Over the cap only when one transaction alone is larger than it.
    for r in receiver.accepted():
        assert len(r.body) <= 2500 or len({txid(c) for c in r.changes}) == 1


@pytest.mark.parametrize("status", [413, 422])
def test_a_refused_batch_narrows_to_whole_transactions_then_blocks_and_parks_as_one(status):
    """The receiver cannot take one change of a 3-change transaction."""
    fixed = threading.Event()

    def answer(received, n):
        if not fixed.is_set() and any(c["new"]["name"] == "t3-1" for c in received.changes):
            return Answer(status, body=b'{"error": "cannot take this"}')
        return Answer()

    with Receiver(answer) as receiver:
        subscription = make_subscription(
            receiver.url(), batch_size=20, whole_transactions=True
        ).subscription
        sizes = write_transactions(SIZES)

        def blocked():
            subscription.refresh_from_db()
            return subscription.state == "blocked"

        # The refusals narrow it down, then it blocks.
        wait_until(lambda: drain_settled(subscription.pk) and blocked(), timeout=60)
        # Never part of a transaction, not even while narrowing down.
        assert_complete([r.changes for r in receiver.requests], sizes)
        assert len(receiver.requests) > 3
        refused = [r for r in receiver.requests if r.status == status]
        assert [group(c) for c in refused[-1].changes] == ["t3"] * 3
        first = refused[-1].changes[0]["id"]
        assert f"transaction {txid(refused[-1].changes[0])}" in subscription.state_reason
        assert f"parked/{first}/" in subscription.state_reason
        # What came before the transaction was delivered.
        assert {group(c) for r in receiver.accepted() for c in r.changes} == {"t0", "t1", "t2"}

        # Parking its first change parks the whole transaction, and the rest goes on.
        parked, created = parking.park(subscription, first, by="ops")
        assert created and parked.change_id == first
        stored = ParkedChange.objects.filter(subscription=subscription).order_by("change_id")
        assert [p.change["new"]["name"] for p in stored] == ["t3-0", "t3-1", "t3-2"]
        assert drain_settled(subscription.pk) == "caught_up"
        subscription.refresh_from_db()
        assert subscription.state == "active"
        accepted = [r.changes for r in receiver.accepted()]
        assert_whole(accepted, {k: v for k, v in sizes.items() if k != "t3"})

        # Sent again once the receiver is fixed: the three together, in order.
        fixed.set()
        parking.resend(stored[1])
        last = receiver.requests[-1]
        assert last.json["data"]["parked"] is True
        assert [c["new"]["name"] for c in last.changes] == ["t3-0", "t3-1", "t3-2"]
        assert all(p.resent for p in ParkedChange.objects.filter(subscription=subscription))


def test_a_subscription_put_says_and_keeps_the_option(api, live_server):
    url = "/subscriptions/wholly/"
    callback = f"{live_server.url}/hook/"
    answer = api.put(url, json={"callback": callback, "models": ["customers.customer"]})
    assert answer.status_code == 201 and answer.json()["whole_transactions"] is False
    answer = api.put(url, json={"whole_transactions": True})
    assert answer.status_code == 200 and answer.json()["whole_transactions"] is True
    answer = api.put(url, json={"batch_size": 3})  # left out: kept
    assert answer.json()["whole_transactions"] is True
    assert api.get(url).json()["whole_transactions"] is True


@pytest.mark.parametrize("value", ["yes", 1, None, [True], {"on": True}])
def test_a_bad_whole_transactions_in_a_subscription_is_refused_and_changes_nothing(api, value):
    body = {"callback": "https://93.184.215.14/hook/", "models": ["customers.customer"]}
    answer = api.put("/subscriptions/bad/", json={**body, "whole_transactions": value})
    assert answer.status_code == 400 and answer.headers["Content-Type"] == "application/json"
    assert "whole_transactions" in answer.json()["fields"]
    assert not Subscription.objects.filter(name="bad").exists()


# -- the pull client ------------------------------------------------------------


class Pages:
    """A page handler: remembers each page it was given (one local transaction each)."""

    def __init__(self):
        self.pages: list[list] = []

    def handle_events(self, events):
        self.pages.append(
            [{"cursor": e.cursor, "new": e.data, "old": e.data, "id": e.sequence} for e in events]
        )


recorded = Pages()


@pytest.mark.parametrize("whole", [True, False])
def test_a_pull_with_the_option_handles_whole_transactions_page_by_page(live_server, whole):
    recorded.pages.clear()
    token = create_token("billing", ["*"])[1]
    start = feed.current_position().encode()
    sizes = write_transactions(SIZES)
    settle()
    cursor = pubsubpull.pull(
        live_server.url + "/pubsubpull/models/customers.customer/instances/",
        recorded,
        auth=token,
        start=start,
        page_size=5,
        whole_transactions=whole,
        once=True,
        enqueue=False,
    )
    assert cursor.whole_transactions is whole
    assert pulling.run(cursor.id, stop_when_caught_up=True, now=True) == "done"
    if whole:
        assert_whole(recorded.pages, sizes)
    else:
        assert split_transactions(recorded.pages)
        assert Counter(group(i) for p in recorded.pages for i in p) == sizes


# -- a mirror in another service --------------------------------------------------

billing_service, billing = services.billing_service, services.billing  # the fixtures


@pytest.mark.slow
def test_a_mirror_in_another_service_never_shows_half_of_a_transaction(billing):
    """Billing (its own processes) mirrors customers; its table is read all the while.

    Without the option this fails: pages of 4 apply a 12-change transaction
    in three local transactions, and the watcher sees a part of it.
    """
    billing.start_worker()
    billing.shell(
        "from billing.mirrors import customers; "
        "customers.pull(page_size=4, whole_transactions=True)"
    )
    assert billing.sql("SELECT whole_transactions FROM pubsubpull_pullcursor") == [(True,)]
    wait_until(lambda: billing.sql("SELECT phase FROM pubsubpull_pullcursor") == [("feed",)])
    sizes: dict[str, int] = {}
    observed: list[Counter] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            rows = billing.sql("SELECT name FROM billing_customercountry")
            observed.append(Counter(name.split("-")[0] for (name,) in rows))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for round_ in range(3):
            sizes.update(write_transactions(SIZES, prefix=f"r{round_}t"))
        total = sum(sizes.values())
        wait_until(lambda: len(billing.sql("SELECT 1 FROM billing_customercountry")) == total)
    finally:
        stop.set()
        watcher.join()
    assert len(observed) > 5
    for counts in observed:
        for name, count in counts.items():
            assert count == sizes[name], (name, count)


def test_a_filtered_page_keeps_the_matching_changes_of_a_transaction_together(settings):
    """Filters and whole transactions together: a transaction's matching changes
    are never split, even when the filter's scan bound falls inside it."""
    # Each transaction: some rows that match ("keep-") and some that do not.
    sizes = {}
    for k, (kept, skipped) in enumerate([(3, 4), (1, 0), (6, 9), (0, 5), (2, 2)]):
        with transaction.atomic():
            for i in range(kept + skipped):
                prefix = "keep" if (i % 2 == 0 and i // 2 < kept) or i >= 2 * skipped else "skip"
                Customer.objects.create(name=f"{prefix}{k}-{i}")
        sizes[k] = Customer.objects.filter(name__startswith=f"keep{k}-").count()
    settings.PUBSUBPULL = {"FILTER_SCAN": 3}  # ends scans inside transactions
    label = "customers.customer"
    filters = feed.parse_filters({label: {"where": {"name__startswith": "keep"}}}, [label])
    pages, after = [], None
    while True:
        page = feed.read_changes(after, 2, [label], filters=filters, whole_transactions=True)
        pages.append([(c.txid, c.new["name"]) for c in page.changes])
        if page.caught_up:
            break
        assert page.next > (after or feed.START)
        after = page.next
    served = [name for items in pages for _, name in items]
    assert all(name.startswith("keep") for name in served)
    assert sorted(served) == sorted(
        Customer.objects.filter(name__startswith="keep").values_list("name", flat=True)
    )
    where: dict[int, set[int]] = {}
    for n, items in enumerate(pages):
        for tx, _ in items:
            where.setdefault(tx, set()).add(n)
    assert all(len(found) == 1 for found in where.values()), pages  # none split
    # The three-row and six-row transactions exceed the limit of 2: each came alone.
    largest = max(sizes.values())
    assert any(len(items) == largest for items in pages), pages
