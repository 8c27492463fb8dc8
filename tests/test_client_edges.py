"""The subscriber's edges: a page the database refuses (blocked, parked, re-applied),
handlers that cannot be found, Retry-After values.

The publisher is live_server; the pull runs in the test process (as in
test_client_pull.py), against real PostgreSQL and real HTTP.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command

import pubsubpull
from customers.models import Customer
from pubsubpull.client import parking, pulling
from pubsubpull.client.models import ParkedEvent, PullCursor
from pubsubpull.protocol.retry_after import parse_retry_after
from pubsubpull.publisher.api.auth import create_token
from tests import edge_handlers

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_handlers(settings):
    edge_handlers.seen.clear()
    edge_handlers.refuse.clear()
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "PULL_WAIT": 0.2}


@pytest.fixture
def customers_url(live_server):
    return live_server.url + "/pubsubpull/models/customers.customer/instances/"


@pytest.fixture
def token():
    return create_token("billing", ["*"])[1]


def catch_up(cursor):
    outcome = pulling.run(cursor.id, stop_when_caught_up=True, now=True)
    cursor.refresh_from_db()
    return outcome


def command(*args):
    from io import StringIO

    out = StringIO()
    call_command("pubsubpull_cursors", *args, stdout=out)
    return out.getvalue()


def test_a_refused_feed_page_blocks_then_parks_the_failing_object_and_goes_on(
    customers_url, token
):
    cursor = pubsubpull.pull(
        customers_url, edge_handlers.strict, auth=token, start="now", enqueue=False
    )
    a = Customer.objects.create(name="a")
    b = Customer.objects.create(name="b")
    b.name = "b2"
    b.save()
    c = Customer.objects.create(name="c")
    edge_handlers.refuse.add(b.pk)

    # The database refuses b's insert: retrying cannot help, the cursor blocks.
    assert catch_up(cursor) == "blocked"
    assert cursor.state == "blocked" and cursor.failures == 1
    assert cursor.last_error.startswith("DataError:")
    assert "This page can never apply" in cursor.last_error
    assert "(at the feed after " in cursor.last_error
    assert edge_handlers.seen == [("insert", a.pk)]  # a's page rolled back with the rest
    assert pulling.run(cursor.id) == "busy"  # blocked waits for an operator
    assert "blocked" in command() and "DataError" in command()

    # Park: the next page is applied event by event; b's insert fails and is
    # set aside, b's update waits behind it, a and c go on.
    edge_handlers.seen.clear()
    assert "will be parked" in command("park", cursor.name)
    assert catch_up(cursor) == "caught_up"
    assert cursor.state == "active" and not cursor.park_failures
    assert edge_handlers.seen == [("insert", a.pk), ("insert", c.pk)]
    parked = list(ParkedEvent.objects.order_by("id").values_list("op", "object_pk", "error"))
    assert [p[:2] for p in parked] == [("insert", str(b.pk)), ("update", str(b.pk))]
    assert parked[0][2].startswith("DataError:")
    assert parked[1][2] == "Behind a parked event of the same object."

    # A later change of b, on an ordinary page, is parked behind too; others apply.
    b.name = "b3"
    b.save()
    d = Customer.objects.create(name="d")
    edge_handlers.seen.clear()
    assert catch_up(cursor) == "caught_up"
    assert edge_handlers.seen == [("insert", d.pk)]
    assert ParkedEvent.objects.filter(object_pk=str(b.pk)).count() == 3
    listing = command()
    assert cursor.name in listing and "  3  " in listing

    # Re-applied while the cause is still there: the first fails again and the
    # rest of b wait behind it, untried.
    assert parking.reapply(ParkedEvent.objects.all()) == (0, 3)
    first = ParkedEvent.objects.order_by("id").first()
    assert first.attempts == 2 and first.error.startswith("DataError:")
    assert [p.attempts for p in ParkedEvent.objects.order_by("id")][1:] == [1, 1]

    # Fixed: reapply from the command applies b's events in order.
    edge_handlers.refuse.clear()
    edge_handlers.seen.clear()
    assert command("reapply", cursor.name) == "Applied 3 parked event(s); 0 still fail.\n"
    assert edge_handlers.seen == [("insert", b.pk), ("update", b.pk), ("update", b.pk)]
    assert not ParkedEvent.objects.exists()
