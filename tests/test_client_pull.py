"""The pull client in the test process against the publisher served by live_server.

The two-service tests (test_two_services.py) run billing as its own processes;
these check the cursor machinery closely: pages, phases, 410, errors, backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connection
from django.utils import timezone

import pubsubpull
from customers.models import Country, Customer
from pubsubpull.client import pulling
from pubsubpull.client.models import PullCursor
from pubsubpull.publisher.api.auth import create_token
from tests import client_handlers

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_handlers(settings):
    client_handlers.seen.clear()
    client_handlers.fail_on.clear()
    settings.PUBSUBPULL = {
        **settings.PUBSUBPULL,
        "PULL_RETRY_BASE": 0.2,
        "PULL_RETRY_MAX": 30.0,
        "PULL_WAIT": 0.5,
    }


@pytest.fixture
def token():
    return create_token("billing", ["*"])[1]


@pytest.fixture
def customers_url(live_server):
    return live_server.url + "/pubsubpull/models/customers.customer/instances/"


def catch_up(cursor):
    outcome = pulling.run(cursor.id, stop_when_caught_up=True, now=True)
    cursor.refresh_from_db()
    return outcome


def ops(events):
    return [(e.op, e.pk) for e in events]


def test_a_pull_reads_the_instances_then_follows_the_feed(customers_url, token):
    fr = Country.objects.create(code="FR", name="France")
    first = [Customer.objects.create(name=f"c{i}", country=fr) for i in range(5)]
    cursor = pubsubpull.pull(
        customers_url, client_handlers.record, auth=token, page_size=2, enqueue=False
    )
    assert cursor.phase == "snapshot"
    assert catch_up(cursor) == "caught_up"
    assert ops(client_handlers.seen[:5]) == [("snapshot", c.pk) for c in first]
    assert client_handlers.seen[0].data["country_id"] == "FR"
    assert "notes" not in client_handlers.seen[0].data
    assert cursor.phase == "feed" and cursor.snapshots == 1 and cursor.failures == 0

    client_handlers.seen.clear()
    Customer.objects.filter(pk=first[0].pk).update(name="renamed")
    gone = first[1].pk
    first[1].delete()
    late = Customer.objects.create(name="late")
    assert catch_up(cursor) == "caught_up"
    assert ops(client_handlers.seen) == [
        ("update", first[0].pk),
        ("delete", gone),
        ("insert", late.pk),
    ]
    event = client_handlers.seen[0]
    assert event.old["name"] == "c0" and event.data["name"] == "renamed"
    assert event.sequence > 0 and event.cursor
    # 5 + 3, and the snapshot's changes again if its fence lay behind them
    # (another transaction on the server was running): at least once.
    assert 8 <= cursor.rows <= 13


def test_pull_up_starts_at_the_head_and_pull_down_stops(customers_url, token):
    Customer.objects.create(name="old")
    up = pubsubpull.pull_up(customers_url, client_handlers.record, auth=token, enqueue=False)
    new = Customer.objects.create(name="new")
    catch_up(up)
    assert ops(client_handlers.seen) == [("insert", new.pk)]

    client_handlers.seen.clear()
    down = pubsubpull.pull_down(
        customers_url, client_handlers.other, auth=token, enqueue=False, name="down"
    )
    assert catch_up(down) == "done"
    assert down.phase == "done"
    assert sorted({e.pk for _, e in client_handlers.seen}) == sorted(
        Customer.objects.values_list("pk", flat=True)
    )
    assert pulling.run(down.id, now=True) == "busy"  # done: nothing more to do


def test_a_pruned_log_answers_410_and_the_pull_takes_a_new_snapshot(customers_url, token, caplog):
    Customer.objects.create(name="a")
    cursor = pubsubpull.pull(customers_url, client_handlers.record, auth=token, enqueue=False)
    catch_up(cursor)
    b = Customer.objects.create(name="b")
    # Prune the log past the cursor: the feed answers 410 for it.
    with connection.cursor() as db:
        db.execute("DELETE FROM pubsubpull_change")
    client_handlers.seen.clear()
    with caplog.at_level(logging.WARNING, logger="pubsubpull.client"):
        assert catch_up(cursor) == "caught_up"
    assert "taking a new snapshot" in caplog.text
    assert cursor.snapshots == 2 and cursor.phase == "feed"
    assert ("snapshot", b.pk) in ops(client_handlers.seen)


def test_a_handler_error_stops_its_cursor_others_keep_going(customers_url, token):
    customers = [Customer.objects.create(name=f"c{i}") for i in range(4)]
    failing = pubsubpull.pull(
        customers_url, client_handlers.record, auth=token, page_size=2, enqueue=False
    )
    healthy = pubsubpull.pull(
        customers_url, client_handlers.other, auth=token, page_size=2, enqueue=False
    )
    client_handlers.fail_on.add(customers[2].pk)
    assert catch_up(failing) == "failed"
    assert "cannot take" in failing.last_error and failing.failures == 1
    assert failing.state == "failing" and failing.next_run_at > timezone.now()
    assert failing.rows == 2  # the first page committed; the second rolled back
    assert pulling.run(failing.id) == "busy"  # backing off
    assert catch_up(failing) == "failed"
    assert failing.failures == 2

    assert catch_up(healthy) == "caught_up"
    others = [e[1] for e in client_handlers.seen if isinstance(e, tuple)]
    assert [e.pk for e in others if e.op == "snapshot"] == [c.pk for c in customers]

    client_handlers.fail_on.clear()
    assert catch_up(failing) == "caught_up"
    assert failing.failures == 0 and failing.state == "active"
    assert failing.rows >= 4  # and some of the snapshot's changes again if its fence lagged
    recorded = [
        e.pk for e in client_handlers.seen if not isinstance(e, tuple) and e.op == "snapshot"
    ]
    assert recorded == [c.pk for c in customers]  # page 1 once, page 2 once


class _Unavailable(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503)
        self.send_header("Retry-After", "7")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_an_unavailable_publisher_is_retried_with_backoff(live_server, token, settings):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/pubsubpull/"
        cursor = pubsubpull.pull(url, client_handlers.record, auth=token, enqueue=False)
        assert catch_up(cursor) == "failed"
        assert "503" in cursor.last_error
        wait = (cursor.next_run_at - timezone.now()).total_seconds()
        assert 6 < wait <= 7.5  # Retry-After honoured
    finally:
        server.shutdown()
        server.server_close()

    delays = [pulling.backoff(n) for n in range(1, 12)]
    assert delays[0] <= 0.2 and max(delays) <= 30.0
    assert pulling.backoff(10) > pulling.backoff(2)


def test_handlers_are_stored_by_dotted_path(customers_url, token):
    with pytest.raises(ValueError, match="module level"):
        pubsubpull.pull(customers_url, lambda e: None, auth=token, enqueue=False)
    with pytest.raises(ImportError, match="dotted path"):
        pubsubpull.pull(customers_url, "tests.client_handlers.nothing", auth=token)
    cursor = pubsubpull.pull(customers_url, "tests.client_handlers.record", enqueue=False)
    assert PullCursor.objects.get().handler == "tests.client_handlers.record" == cursor.name
    time.sleep(0)


def test_the_pull_command_shows_progress_and_stops_when_caught_up(customers_url, token, capsys):
    from django.core.management import CommandError, call_command

    Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(25))
    with connection.cursor() as db:
        db.execute("ANALYZE customers_customer")  # so the publisher can estimate a total
    call_command(
        "pubsubpull_pull",
        customers_url,
        handler="tests.client_handlers.record",
        token=token,
        page_size=10,
    )
    out, err = capsys.readouterr()
    assert "caught up" in out and "/~25" in err and "rows/s" in err
    assert {e.pk for e in client_handlers.seen} == set(
        Customer.objects.values_list("pk", flat=True)
    )

    # Again: the same cursor, nothing new to do.
    client_handlers.seen.clear()
    call_command("pubsubpull_pull", customers_url, handler="tests.client_handlers.record")
    assert [e for e in client_handlers.seen if e.op == "snapshot"] == []

    # A publisher that refuses (a revoked token): a clear error, no endless retry.
    with pytest.raises(CommandError, match="401"):
        call_command(
            "pubsubpull_pull", customers_url, handler="tests.client_handlers.record", token="nope"
        )


def test_the_receiver_forgets_old_webhook_ids():
    from datetime import timedelta

    from pubsubpull.client.models import ReceivedBatch
    from pubsubpull.client.receiver import prune_received

    ReceivedBatch.objects.create(webhook_id="msg_old")
    ReceivedBatch.objects.create(webhook_id="msg_new")
    ReceivedBatch.objects.filter(webhook_id="msg_old").update(at=timezone.now() - timedelta(days=8))
    assert prune_received() == 1
    assert list(ReceivedBatch.objects.values_list("webhook_id", flat=True)) == ["msg_new"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [{"pk": 1, "fields": {"name": "Ada \\u00e9", "n": 0.5}}], "next": null}',
        # Beyond 64 bits orjson would give a float: the value must stay exact.
        b'{"fields": {"big": 123456789012345678901234567890, "neg": -9223372036854775809}}',
        # What orjson refuses and json accepts.
        b'{"fields": {"nan": NaN, "huge": 1.5e400}}',
    ],
)
def test_publisher_pages_parse_as_json_would(body):
    import json
    import math

    from pubsubpull.client.source import parse_json

    parsed, expected = parse_json(body), json.loads(body)
    if "nan" in expected.get("fields", {}):
        assert math.isnan(parsed["fields"]["nan"]) and parsed["fields"]["huge"] == math.inf
    else:
        assert parsed == expected
        assert repr(parsed) == repr(expected)  # ints stay ints


def test_a_mirror_page_keeps_integers_beyond_64_bits():
    import json

    from pubsubpull.client.mirror import _dumps

    records = [{"k": 1, "s": 2, "f0": "Ada é"}, {"k": 10**30, "s": 3, "f0": None}]
    assert json.loads(_dumps(records)) == records


def test_the_admin_shows_a_blocked_cursor_and_parks_it(admin_client, customers_url, token):
    import dataclasses

    from pubsubpull.client.models import ParkedEvent
    from pubsubpull.protocol.events import Event

    cursor = pubsubpull.pull(customers_url, client_handlers.record, auth=token, enqueue=False)
    PullCursor.objects.filter(pk=cursor.pk).update(
        state=PullCursor.State.BLOCKED, last_error="DataError: value too long (at the feed …)"
    )
    page = admin_client.get("/admin/pubsubpull/pullcursor/")
    assert page.status_code == 200
    assert b"blocked" in page.content and b"value too long" in page.content
    answer = admin_client.post(
        "/admin/pubsubpull/pullcursor/",
        {"action": "park", "_selected_action": [cursor.pk]},
    )
    assert answer.status_code == 302
    cursor.refresh_from_db()
    assert cursor.state == "active" and cursor.park_failures

    # A parked event re-applied from the admin reaches the handler.
    event = dataclasses.asdict(Event("customers.customer", 7, "update", 3, {"name": "x"}))
    parked = ParkedEvent.objects.create(
        cursor=cursor, model="customers.customer", object_pk="7", op="update", event=event,
        error="RuntimeError",
    )  # fmt: skip
    assert admin_client.get(f"/admin/pubsubpull/parkedevent/{parked.pk}/change/").status_code == 200
    answer = admin_client.post(
        "/admin/pubsubpull/parkedevent/", {"action": "reapply", "_selected_action": [parked.pk]}
    )
    assert answer.status_code == 302
    assert not ParkedEvent.objects.exists()
    assert ops(client_handlers.seen) == [("update", 7)]
    assert admin_client.get("/admin/pubsubpull/remotesubscription/").status_code == 200
