"""``manage.py pubsubpull_pull`` when things go wrong: what the operator is told.

The command runs in the test process (call_command) against the publisher
served by live_server: real HTTP, real PostgreSQL.
"""

from __future__ import annotations

import re
import threading
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from customers.models import Customer
from pubsubpull.client.models import PullCursor
from pubsubpull.publisher.api.auth import create_token
from tests import edge_handlers
from tests.services import Switch

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_handlers():
    edge_handlers.seen.clear()
    edge_handlers.refuse.clear()
    edge_handlers.crash.clear()


@pytest.fixture
def customers_url(live_server):
    return live_server.url + "/pubsubpull/models/customers.customer/instances/"


@pytest.fixture
def token():
    return create_token("billing", ["*"])[1]


def pull(url, handler="tests.edge_handlers.strict", **options):
    call_command("pubsubpull_pull", url, handler=handler, **options)


def test_a_refused_page_stops_the_command_blocked_and_a_rerun_after_the_fix_goes_on(
    customers_url, token, capsys
):
    a, b = Customer.objects.create(name="a"), Customer.objects.create(name="b")
    edge_handlers.refuse.add(b.pk)
    with pytest.raises(CommandError) as refused:
        pull(customers_url, token=token)
    message = str(refused.value)
    assert message.startswith(
        "The handler's database refused a page (DataError: smallint out of range, "
        "at the snapshot page 1 of customers.customer"
    )
    assert "Nothing of it was kept and the cursor is blocked" in message
    assert "manage.py pubsubpull_cursors park tests.edge_handlers.strict" in message
    assert PullCursor.objects.get().state == "blocked"
    assert edge_handlers.seen == [("snapshot", a.pk)]  # rolled back with its page

    # Fixed: running the command again unblocks the cursor and applies the page.
    edge_handlers.refuse.clear()
    edge_handlers.seen.clear()
    capsys.readouterr()
    pull(customers_url, token=token)
    # Both rows (and their inserts again, from the feed, if the snapshot's fence lagged).
    handled = re.search(r"caught up: (\d+) rows handled in all", capsys.readouterr().out)
    assert handled and 2 <= int(handled[1]) <= 4
    assert edge_handlers.seen[:2] == [("snapshot", a.pk), ("snapshot", b.pk)]
    assert PullCursor.objects.get().state == "active"


def test_a_handler_bug_or_a_missing_handler_is_a_command_error(customers_url, token):
    c = Customer.objects.create(name="c")
    edge_handlers.crash.add(c.pk)
    failed = (
        r"^The handler failed: RuntimeError: a bug on \d+\. "
        r"Nothing of its page was kept; fix it and run again to resume\.$"
    )
    with pytest.raises(CommandError, match=failed):
        pull(customers_url, "tests.edge_handlers.strict_or_crash", token=token)
    with pytest.raises(CommandError, match=r"No handler at 'tests\.edge_handlers\.nope'"):
        pull(customers_url, "tests.edge_handlers.nope", token=token)


def test_a_cursor_a_worker_holds_is_refused_with_who_holds_it(customers_url, token):
    pull(customers_url, token=token, name="held")
    PullCursor.objects.filter(name="held").update(
        lease_owner="worker:elsewhere", lease_expires=timezone.now() + timedelta(seconds=60)
    )
    with pytest.raises(CommandError, match="The cursor 'held' is held by worker:elsewhere until"):
        pull(customers_url, token=token, name="held")


def test_a_pruned_log_says_a_new_snapshot_is_taken(customers_url, token, capsys):
    Customer.objects.create(name="a")
    pull(customers_url, token=token)
    Customer.objects.create(name="b")
    with connection.cursor() as db:
        db.execute("DELETE FROM pubsubpull_change")  # prune the log past the cursor: 410
    capsys.readouterr()
    pull(customers_url, token=token)
    out, err = capsys.readouterr()
    assert "the publisher's log no longer reaches the cursor: new snapshot" in err
    assert "caught up" in out
    assert PullCursor.objects.get().snapshots == 2


def test_the_command_rides_out_a_publisher_that_is_down_for_a_moment(
    live_server, token, capsys, settings
):
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "PULL_RETRY_BASE": 0.2, "PULL_RETRY_MAX": 1.0}
    a = Customer.objects.create(name="a")
    switch = Switch(live_server.url)  # down: connections refused
    threading.Timer(1.0, switch.up).start()
    try:
        pull(
            switch.url + "/pubsubpull/models/customers.customer/instances/",
            token=token,
            name="through-the-switch",
        )
    finally:
        switch.down()
    out, err = capsys.readouterr()
    assert "SourceError: GET " in err and "ConnectError" in err and "retrying in " in err
    assert "caught up" in out
    assert edge_handlers.seen[0] == ("snapshot", a.pk)
    cursor = PullCursor.objects.get(name="through-the-switch")
    assert cursor.state == "active" and cursor.failures == 0


def test_a_refused_token_on_a_new_cursor_is_a_clear_error(customers_url):
    with pytest.raises(CommandError, match="answered 401"):
        pull(customers_url, token="psp_not_a_token", name="refused")
    assert PullCursor.objects.get(name="refused").phase == "snapshot"
