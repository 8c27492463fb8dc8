"""What the feed's order means, claim by claim (docs/guarantees.rst, "Order").

The feed is in transaction-id order, not commit order: a transaction is
served once it and every transaction that took its id before it have ended.
Each claim is tested with real concurrent transactions, one psycopg
connection each, on the publisher's real PostgreSQL.
"""

from __future__ import annotations

import itertools
import random
import threading
import time

import httpx
import psycopg
import pytest

from customers.models import Customer
from pubsubpull.publisher import feed, longpoll
from pubsubpull.publisher.api.auth import create_token
from pubsubpull.publisher.delivery.deliver import drain
from tests.conftest import dsn
from tests.delivery_helpers import make_subscription, settle, use_fast_settings
from tests.receivers import Receiver

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True, scope="module")
def _close_listeners():
    yield
    longpoll.stop_listening()


INSERT_CUSTOMER = (
    "INSERT INTO customers_customer (name, email, newsletter, notes, created, updated) "
    "VALUES (%s, '', false, '', now(), now()) RETURNING id"
)
INSERT_COUNTRY = "INSERT INTO customers_country (code, name) VALUES (%s, %s)"
INSERT_ADDRESS = (
    "INSERT INTO customers_address (customer_id, line1, city, postcode) "
    "VALUES (%s, %s, 'Paris', '') RETURNING id"
)


def follow(after=None, **kwargs) -> list[feed.FeedChange]:
    """Every change the feed serves from ``after`` until it is caught up."""
    seen = []
    while True:
        page = feed.read_changes(after, **kwargs)
        seen.extend(page.changes)
        after = page.next
        if not page.changes and not page.held_back:
            return seen


def label(change: feed.FeedChange) -> str:
    values = change.new or change.old
    return values.get("name") or values.get("line1")


def is_contiguous(groups: list) -> bool:
    """True when equal items stand together: no group is split by another."""
    finished = set()
    for previous, current in itertools.pairwise(groups):
        if current != previous:
            finished.add(previous)
            if current in finished:
                return False
    return True


def test_a_transaction_that_took_its_id_first_is_served_first_even_if_it_commits_last():
    """Not commit order, not change-id order: transaction-id order."""
    with psycopg.connect(dsn()) as older, psycopg.connect(dsn()) as younger:
        older.execute(INSERT_CUSTOMER, ["older, first write"])  # takes its txid now
        younger.execute(INSERT_CUSTOMER, ["younger"])
        younger.commit()

        # The younger one has committed, but an older one is still open and
        # could still write: nothing after the older one's id is served yet.
        page = feed.read_changes(None)
        assert page.changes == [] and page.held_back

        older.execute(INSERT_CUSTOMER, ["older, written after the younger committed"])
        older.commit()

    served = follow()
    assert [label(c) for c in served] == [
        "older, first write",
        "older, written after the younger committed",
        "younger",
    ]
    # The older transaction's second change took a higher change id than the
    # younger's and committed after it; it is served before it all the same.
    assert served[1].id > served[2].id
    assert served[0].txid == served[1].txid < served[2].txid
    assert [c.position for c in served] == sorted(c.position for c in served)


def test_a_transactions_changes_are_contiguous_in_the_feed_however_they_interleave(live_server):
    """Two transactions write in alternation (one through a savepoint), commit in
    the other order; every page size, the HTTP pages and the delivered batches
    show each transaction's changes together, in the order they were written."""
    with psycopg.connect(dsn()) as a, psycopg.connect(dsn()) as b:
        for n in range(5):
            if n == 2:
                with a.transaction():  # a savepoint: same transaction id
                    a.execute(INSERT_CUSTOMER, [f"a{n}"])
            else:
                a.execute(INSERT_CUSTOMER, [f"a{n}"])
            b.execute(INSERT_CUSTOMER, [f"b{n}"])
            b.execute(INSERT_COUNTRY, [f"B{n}", f"b-country{n}"])
        b.commit()
        a.commit()

    expected = [f"a{n}" for n in range(5)] + [
        name for n in range(5) for name in (f"b{n}", f"b-country{n}")
    ]
    for limit in (1, 2, 3, 7, 100):
        served = follow(limit=limit)
        assert [label(c) for c in served] == expected, limit
        assert is_contiguous([c.txid for c in served])
        # Within a transaction, change ids follow the order of its statements.
        assert [c.id for c in served[:5]] == sorted(c.id for c in served[:5])

    # Filtered to one model: the same order, the other model's changes left out.
    customers = [label(c) for c in follow(limit=3, models=["customers.customer"])]
    assert customers == [name for name in expected if "country" not in name]

    # Over HTTP, three to a page: one transaction's changes span pages, but
    # no other transaction's change comes between them.
    _, token = create_token("ordering", ["*"])
    url = f"{live_server.url}/pubsubpull/changes/?limit=3"
    pages = []
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        while True:
            body = client.get(url).raise_for_status().json()
            if not body["changes"]:
                break
            pages.append(body["changes"])
            url = body["next"]
    served = [c for page in pages for c in page]
    assert [(c["new"]["name"]) for c in served] == expected
    assert any({c["new"]["name"][0] for c in page} == {"a", "b"} for page in pages), (
        "no page holds the end of one transaction and the start of the next"
    )


def test_delivered_batches_keep_each_transactions_changes_together(settings):
    use_fast_settings(settings)
    with psycopg.connect(dsn()) as a, psycopg.connect(dsn()) as b:
        for n in range(4):
            a.execute(INSERT_CUSTOMER, [f"a{n}"])
            b.execute(INSERT_CUSTOMER, [f"b{n}"])
        b.commit()
        a.commit()
    with Receiver() as receiver:
        subscription = make_subscription(receiver.url(), batch_size=3).subscription
        settle()
        for _ in range(10):
            if drain(subscription.pk) == "caught_up":
                break
        delivered = [c["new"]["name"] for c in receiver.accepted_changes()]
    assert delivered == ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"]
    assert [len(r.changes) for r in receiver.accepted()] == [3, 3, 2]


def test_a_child_row_can_be_served_before_its_parent():
    """The child's transaction took its id first; the parent's committed first."""
    with psycopg.connect(dsn()) as child, psycopg.connect(dsn()) as parent:
        child.execute(INSERT_COUNTRY, ["FR", "France"])  # takes the child's txid
        (customer_id,) = parent.execute(INSERT_CUSTOMER, ["the parent"]).fetchone()
        parent.commit()
        # The child sees the committed parent; the foreign key holds.
        child.execute(INSERT_ADDRESS, [customer_id, "the child"])
        child.commit()

    served = [(c.model, label(c)) for c in follow()]
    assert served == [
        ("customers.country", "France"),
        ("customers.address", "the child"),
        ("customers.customer", "the parent"),
    ]


def test_feed_order_is_not_a_rows_order_but_its_sequence_is():
    """Two transactions change one row; the one that committed last took its
    id first, so the feed serves its change first. ``sequence`` still says
    which is newer, and last-writer-wins by sequence ends with the row."""
    customer = Customer.objects.create(name="before")
    with psycopg.connect(dsn()) as older, psycopg.connect(dsn()) as younger:
        older.execute(INSERT_COUNTRY, ["OL", "older's first write"])  # takes its txid
        younger.execute(
            "UPDATE customers_customer SET name = 'younger' WHERE id = %s", [customer.pk]
        )
        younger.commit()
        older.execute("UPDATE customers_customer SET name = 'older' WHERE id = %s", [customer.pk])
        older.commit()
    customer.refresh_from_db()
    assert customer.name == "older"  # it committed last

    updates = [c for c in follow() if c.model == "customers.customer" and c.op == "update"]
    assert [c.new["name"] for c in updates] == ["older", "younger"]  # feed order
    assert updates[0].sequence > updates[1].sequence

    in_feed_order = updates[-1].new["name"]
    by_sequence = max(updates, key=lambda c: c.sequence).new["name"]
    assert in_feed_order == "younger", "applying in feed order would end stale"
    assert by_sequence == customer.name


def test_one_rows_sequence_follows_commit_order_under_concurrent_updates():
    """Writers race to update one row; the row lock serialises them, so its
    changes' sequence order is the order they committed in, whatever order
    the feed serves them in."""
    customer = Customer.objects.create(name="0")
    writers, rounds = 6, 5
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def write(number: int) -> None:
        rng = random.Random(number)
        try:
            with psycopg.connect(dsn()) as conn:
                start.wait(30)
                for r in range(rounds):
                    if rng.random() < 0.5:
                        # Take a transaction id before queueing for the row,
                        # so feed order and commit order disagree.
                        conn.execute(INSERT_COUNTRY, [f"{number}{r}", "elsewhere"])
                    # Each appends to the committed value it waited for: the
                    # final string is the commit order.
                    conn.execute(
                        "UPDATE customers_customer SET name = name || ',' || %s WHERE id = %s",
                        [f"w{number}r{r}", customer.pk],
                    )
                    time.sleep(rng.random() * 0.005)
                    conn.commit()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    customer.refresh_from_db()
    commit_order = customer.name.split(",")[1:]
    assert len(commit_order) == writers * rounds

    updates = [c for c in follow() if c.model == "customers.customer" and c.op == "update"]
    by_sequence = sorted(updates, key=lambda c: c.sequence)
    assert [c.new["name"].split(",")[-1] for c in by_sequence] == commit_order
    assert by_sequence[-1].new["name"] == customer.name
