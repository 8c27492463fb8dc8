"""The subscriber's edges: a page the database refuses (blocked, parked, re-applied),
handlers that cannot be found, Retry-After values.

The publisher is live_server; the pull runs in the test process (as in
test_client_pull.py), against real PostgreSQL and real HTTP.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

import pubsubpull
from customers.models import Customer
from pubsubpull.client import parking, pulling
from pubsubpull.client.models import ParkedEvent, PullCursor, ReceivedBatch, RemoteSubscription
from pubsubpull.protocol.retry_after import parse_retry_after
from pubsubpull.publisher.api.auth import create_token
from tests import edge_handlers, edge_receiver_urls, services
from tests.services import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

billing_service, billing = services.billing_service, services.billing  # the fixtures


@pytest.fixture(autouse=True)
def _fresh_handlers(settings):
    edge_handlers.seen.clear()
    edge_handlers.refuse.clear()
    edge_handlers.crash.clear()
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


def test_a_refused_feed_page_blocks_then_parks_the_failing_object_and_goes_on(customers_url, token):
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


def _blocked_with_parked(customers_url, token):
    """A cursor whose pull parked b's insert (the database still refuses b)."""
    cursor = pubsubpull.pull(
        customers_url, edge_handlers.strict, auth=token, start="now", enqueue=False
    )
    b = Customer.objects.create(name="b")
    edge_handlers.refuse.add(b.pk)
    assert catch_up(cursor) == "blocked"
    pulling.park([cursor])
    assert catch_up(cursor) == "caught_up"
    return cursor, ParkedEvent.objects.get()


def test_the_cursors_command_pauses_resumes_and_says_what_still_fails(customers_url, token):
    assert command() == "No pull cursors.\n"
    with pytest.raises(CommandError, match=r"Name the cursor\(s\) to pause"):
        command("pause")
    with pytest.raises(CommandError, match="No pull cursor named nope, zz"):
        command("resume", "zz", "nope")

    cursor, parked = _blocked_with_parked(customers_url, token)
    assert command("pause", cursor.name) == f"Paused {cursor.name}.\n"
    cursor.refresh_from_db()
    assert cursor.state == "paused"
    assert pulling.run(cursor.id) == "busy"  # a paused cursor is not run
    assert command("resume", cursor.name) == f"Resumed {cursor.name}.\n"
    cursor.refresh_from_db()
    assert cursor.state == "active" and cursor.failures == 0

    out = command("reapply", cursor.name)
    assert out.splitlines()[0] == "Applied 0 parked event(s); 1 still fail."
    assert out.splitlines()[1].startswith(
        f"  insert customers.customer {parked.object_pk}: DataError"
    )

    # A failing cursor's row says when it runs next; one never successful has no LAST OK.
    PullCursor.objects.filter(pk=cursor.pk).update(
        state="failing", next_run_at=timezone.now() + timedelta(seconds=90)
    )
    fresh = pubsubpull.pull(customers_url, edge_handlers.strict, name="fresh", enqueue=False)
    rows = {line.split()[0]: line.split() for line in command().splitlines()[1:]}
    row = rows[cursor.name]  # ... PARKED, LAST OK "0s ago", NEXT "in 90s", ERROR
    assert row[1] == "failing" and row[4] == "1" and row[6:8] == ["ago", "in"]
    assert row[8] in ("89s", "90s") and row[9] == "DataError:"
    assert rows[fresh.name][1:6] == ["active", "snapshot", "0", "0", "-"]


def test_the_admin_pauses_resumes_and_warns_when_a_reapply_still_fails(
    admin_client, customers_url, token
):
    cursor, parked = _blocked_with_parked(customers_url, token)
    changelist = "/admin/pubsubpull/pullcursor/"
    answer = admin_client.post(
        changelist, {"action": "pause", "_selected_action": [cursor.pk]}, follow=True
    )
    assert b"Paused 1 cursor(s)." in answer.content
    cursor.refresh_from_db()
    assert cursor.state == "paused"
    answer = admin_client.post(
        changelist, {"action": "resume", "_selected_action": [cursor.pk]}, follow=True
    )
    assert b"Resumed 1 cursor(s)." in answer.content
    cursor.refresh_from_db()
    assert cursor.state == "active"
    page = admin_client.get(f"/admin/pubsubpull/pullcursor/{cursor.pk}/change/")
    assert page.status_code == 200 and b"smallint out of range" in page.content  # the inline

    parked_list = admin_client.get("/admin/pubsubpull/parkedevent/")
    assert b"DataError: smallint out of range" in parked_list.content
    answer = admin_client.post(
        "/admin/pubsubpull/parkedevent/",
        {"action": "reapply", "_selected_action": [parked.pk]},
        follow=True,
    )
    assert b"Applied 0 parked event(s); 1 still fail." in answer.content
    assert b"warning" in answer.content
    parked.refresh_from_db()
    assert parked.attempts == 2


def test_a_handler_that_cannot_be_imported_is_refused_when_the_pull_is_made(customers_url):
    with pytest.raises(ImportError, match=r"No handler at 'nosuch\.module\.on_change'"):
        pubsubpull.pull(customers_url, "nosuch.module.on_change", enqueue=False)
    with pytest.raises(ImportError, match=r"No handler at 'tests\.edge_handlers\.missing'"):
        pubsubpull.pull(customers_url, "tests.edge_handlers.missing", enqueue=False)
    assert not PullCursor.objects.exists()


def test_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after(None) is None and parse_retry_after("") is None
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("soon") is None
    later = datetime.now(UTC) + timedelta(seconds=60)
    assert 55 < parse_retry_after(email.utils.format_datetime(later, usegmt=True)) <= 60
    past = email.utils.format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(past) == 0.0
    # A date without a zone (-0000) is read as UTC.
    naive = email.utils.format_datetime(later.replace(tzinfo=None))
    assert 55 < parse_retry_after(naive) <= 60


# -- the receiver's answers when the handler fails -------------------------

SECRET = "whsec_" + base64.b64encode(b"covclient-edges-secret-32-bytes!").decode()


@pytest.fixture
def hooks(live_server, settings):
    settings.ROOT_URLCONF = edge_receiver_urls.__name__
    RemoteSubscription.objects.create(
        publisher="https://customers.example/pubsubpull/",
        name="users",
        callback=f"{live_server.url}/hooks/strict/",
        model_labels=["auth.user"],
        secret=SECRET,
        position="",
    )
    with httpx.Client(base_url=f"{live_server.url}/hooks/") as client:
        yield client


def signed_batch(webhook_id: str, *pks: int) -> tuple[bytes, dict[str, str]]:
    changes = [{"model": "auth.user", "op": "insert", "pk": pk, "new": {"id": pk}} for pk in pks]
    body = json.dumps(
        {"type": "pubsubpull.changes", "data": {"subscription": "users", "changes": changes}}
    ).encode()
    timestamp = str(int(time.time()))
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return body, {
        "webhook-id": webhook_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        "Content-Type": "application/json",
    }


def test_a_batch_the_database_refuses_is_422_and_a_bug_is_500_nothing_kept(hooks, caplog):
    webhook_id = f"msg_{uuid.uuid4().hex}"
    body, headers = signed_batch(webhook_id, 1, 2)
    edge_handlers.refuse.add(2)
    answer = hooks.put("strict/", content=body, headers=headers)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "cannot_apply"
    assert answer.json()["detail"].startswith("The handler's database refused the batch (DataError")
    assert "nothing was kept" in answer.json()["detail"]
    assert not ReceivedBatch.objects.exists()
    assert RemoteSubscription.objects.get().received == 0

    edge_handlers.refuse.clear()
    edge_handlers.crash.add(1)
    answer = hooks.put("strict/", content=body, headers=headers)
    assert answer.status_code == 500
    assert answer.json() == {
        "status": 500,
        "error": "handler_failed",
        "detail": "The handler failed; nothing was kept. Send it again.",
    }
    assert "RuntimeError: a bug on 1" in caplog.text
    assert not ReceivedBatch.objects.exists()

    # Fixed: the same batch sent again is taken, once.
    edge_handlers.crash.clear()
    edge_handlers.seen.clear()
    assert hooks.put("strict/", content=body, headers=headers).status_code == 204
    assert hooks.put("strict/", content=body, headers=headers).status_code == 204
    assert edge_handlers.seen == [("insert", 1), ("insert", 2)]
    assert RemoteSubscription.objects.get().received == 2


def test_a_receiver_without_a_handler_answers_500_and_keeps_nothing(hooks, caplog):
    body, headers = signed_batch(f"msg_{uuid.uuid4().hex}", 1)
    answer = hooks.put("none/", content=body, headers=headers)
    assert answer.status_code == 500 and answer.json()["error"] == "handler_failed"
    assert "TypeError: Receiver needs a handler" in caplog.text
    assert not ReceivedBatch.objects.exists()


# -- mirrors (billing, its own processes) --------------------------------------


def mirrored(billing, table="billing_customercountry") -> dict[int, str]:
    return dict(billing.sql(f"SELECT remote_id, name FROM {table}"))


def published() -> dict[int, str]:
    return dict(Customer.objects.values_list("pk", "name"))


@pytest.mark.slow
def test_a_truncate_at_the_publisher_empties_the_mirror_and_what_follows_is_copied(billing):
    Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(3))
    billing.start_worker()
    billing.shell("from billing.mirrors import customers; customers.pull()")
    wait_until(lambda: mirrored(billing) == published() != {})

    # A change, the truncate and a new row: likely on one feed page, so what
    # the page had before the truncate is dropped too.
    Customer.objects.filter(name="c0").update(name="c0 renamed")
    with connection.cursor() as db:
        db.execute("TRUNCATE customers_customer CASCADE")
    after = Customer.objects.create(name="after")
    wait_until(lambda: mirrored(billing) == {after.pk: "after"})


@pytest.mark.slow
def test_a_mirror_says_what_it_copies_and_refuses_a_url_without_a_model(billing):
    out = billing.shell(
        "import pubsubpull\n"
        "from django.conf import settings\n"
        "from billing.mirrors import customers\n"
        "from billing.models import CustomerCountry\n"
        "print(repr(customers))\n"
        "try:\n"
        "    pubsubpull.mirror(settings.CUSTOMERS_URL, CustomerCountry, fields={'name': 'name'})\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    lines = out.splitlines()
    assert lines[0] == "<Mirror customers.customer -> billing.CustomerCountry>"
    assert lines[1].startswith("mirror() needs one model's instances URL, like http://host/")


@pytest.mark.slow
def test_subscribing_a_mirror_whose_copy_is_blocked_says_why(billing):
    Customer.objects.create(name="Maria Salomea Skłodowska-Curie")  # billing's cards keep 20
    with pytest.raises(AssertionError) as failed:
        billing.shell(
            f"from billing.mirrors import cards; cards.subscribe('{billing.url}/hooks/cards/')"
        )
    assert (
        "RuntimeError: The copy of customers.customer into billing.CustomerCard is blocked: "
        "DataError: value too long" in str(failed.value)
    )
    assert billing.sql("SELECT count(*) FROM pubsubpull_remotesubscription") == [(0,)]


@pytest.mark.slow
def test_a_parked_first_snapshot_page_still_sweeps_the_rows_the_publisher_does_not_have(billing):
    # Billing's card table has a row the publisher never had; the first page
    # of the snapshot holds a name too long for billing's cards.
    billing.shell(
        "from billing.models import CustomerCard; "
        "CustomerCard.objects.create(remote_id=999999, remote_sequence=1, name='stale')"
    )
    long = Customer.objects.create(name="Maria Salomea Skłodowska-Curie")  # billing keeps 20
    Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(3))
    billing.start_worker()
    billing.shell("from billing.mirrors import cards; cards.pull()")
    wait_until(lambda: billing.sql(
        "SELECT state FROM pubsubpull_pullcursor WHERE name = 'mirror:cards'"
    ) == [("blocked",)], timeout=60)  # fmt: skip
    assert mirrored(billing, "billing_customercard") == {999999: "stale"}  # nothing applied

    billing.manage("pubsubpull_cursors", "park", "mirror:cards")
    expected = {pk: name for pk, name in published().items() if pk != long.pk}
    # The parked page was the snapshot's first and last: its start and its end
    # (the sweep of what the snapshot did not write) happen as for any other.
    wait_until(lambda: mirrored(billing, "billing_customercard") == expected, timeout=60)
    assert billing.sql("SELECT object_pk, op FROM pubsubpull_parkedevent") == [
        (str(long.pk), "snapshot")
    ]
    assert billing.sql("SELECT count(*) FROM pubsubpull_mirrorseen") == [(0,)]


@pytest.mark.slow
def test_a_mirror_called_directly_applies_its_models_events_and_skips_the_others(billing):
    billing.shell(
        "from pubsubpull.protocol.events import Event\n"
        "from billing.mirrors import customers\n"
        "customers.handle_events([\n"
        "    Event('customers.country', 'FR', 'insert', 5, {'name': 'France'}),\n"
        "    Event('customers.customer', 41, 'insert', 6, {'name': 'Ada', 'country': 'FR'}),\n"
        "])\n"
        "customers(Event('customers.customer', 42, 'insert', 7, {'name': 'Bob'}))\n"
    )
    assert mirrored(billing) == {41: "Ada", 42: "Bob"}


# -- pull options ---------------------------------------------------------------


def test_a_pull_can_start_at_a_feed_cursor_it_was_given(customers_url, token):
    first = pubsubpull.pull(
        customers_url, edge_handlers.strict, auth=token, name="first", start="now", enqueue=False
    )
    Customer.objects.create(name="before")
    catch_up(first)
    later = Customer.objects.create(name="later")
    edge_handlers.seen.clear()
    # A second cursor from where the first one got to: no snapshot, only what came after.
    second = pubsubpull.pull(
        customers_url, edge_handlers.strict, auth=token, name="second",
        start=first.feed_position, enqueue=False,
    )  # fmt: skip
    assert second.phase == "feed" and second.feed_position == first.feed_position
    assert catch_up(second) == "caught_up"
    assert edge_handlers.seen == [("insert", later.pk)]


def test_a_finished_pull_down_pulled_again_follows_the_feed(customers_url, token):
    a = Customer.objects.create(name="a")
    cursor = pubsubpull.pull_down(customers_url, edge_handlers.strict, auth=token, enqueue=False)
    assert pulling.run(cursor.id, now=True) == "done"
    cursor.refresh_from_db()
    assert cursor.phase == "done"
    assert edge_handlers.seen[0] == ("snapshot", a.pk)

    edge_handlers.seen.clear()
    again = pubsubpull.pull(customers_url, edge_handlers.strict, auth=token, enqueue=False)
    assert again.pk == cursor.pk and again.phase == "feed" and not again.once
    b = Customer.objects.create(name="b")
    assert catch_up(again) == "caught_up"
    # No new snapshot: the feed from where the pull_down stopped.
    assert edge_handlers.seen[-1] == ("insert", b.pk)
    assert all(op != "snapshot" for op, _ in edge_handlers.seen)


def test_a_token_that_may_read_no_model_skips_the_snapshot_and_the_feed_says_why(live_server):
    Customer.objects.create(name="hidden")
    scoped = create_token("billing", ["nosuch.model"])[1]
    cursor = pubsubpull.pull(
        live_server.url + "/pubsubpull/", edge_handlers.strict, auth=scoped, enqueue=False
    )
    assert cursor.phase == "snapshot"
    assert catch_up(cursor) == "failed"
    assert cursor.phase == "feed" and cursor.snapshots == 0  # nothing to copy
    assert "answered 403: The token billing may read no model." in cursor.last_error
    assert cursor.state == "failing" and edge_handlers.seen == []


def test_a_pull_every_n_seconds_is_due_again_n_seconds_after_it_caught_up(customers_url, token):
    cursor = pubsubpull.pull(
        customers_url, edge_handlers.strict, auth=token, every=60, enqueue=False
    )
    assert pulling.run(cursor.id, now=True) == "caught_up"  # no stop_when_caught_up needed
    cursor.refresh_from_db()
    assert 50 < (cursor.next_run_at - timezone.now()).total_seconds() <= 60
    assert pulling.run(cursor.id) == "busy"  # not due yet


# -- subscribing and unsubscribing ------------------------------------------------


def test_unsubscribe_deletes_it_at_the_publisher_and_here_and_again_is_harmless(live_server, token):
    from pubsubpull.publisher.delivery.models import Subscription

    publisher = live_server.url + "/pubsubpull/"
    callback = live_server.url + "/hooks/customers/"
    record = pubsubpull.subscribe(
        publisher, "edges", callback, models=["customers.customer"], auth=token
    )
    assert record.secret.startswith("whsec_")
    assert Subscription.objects.filter(name="edges").exists()

    # Our copy of the secret lost (a restored database): subscribing again gets a new one.
    RemoteSubscription.objects.all().delete()
    again = pubsubpull.subscribe(
        publisher, "edges", callback, models=["customers.customer"], auth=token, batch_size=7
    )
    assert again.secret.startswith("whsec_") and again.secret != record.secret
    assert Subscription.objects.get(name="edges").batch_size == 7

    pubsubpull.unsubscribe(publisher, "edges", auth=token)
    assert not Subscription.objects.filter(name="edges").exists()
    assert not RemoteSubscription.objects.exists()
    pubsubpull.unsubscribe(publisher, "edges", auth=token)  # gone already: a 404, ignored

    from pubsubpull.client.source import SourceError

    with pytest.raises(SourceError) as refused:
        pubsubpull.unsubscribe(publisher, "edges", auth="psp_not_a_token")
    assert refused.value.status == 401


def test_an_unsubscribe_the_publisher_refuses_is_raised_and_the_secret_kept(live_server, token):
    from pubsubpull.client.source import SourceError

    # Through a proxy that forwards only GET: the DELETE is answered 501.
    switch = services.Switch(live_server.url)
    switch.up()
    try:
        publisher = switch.url + "/pubsubpull/"
        pubsubpull.subscribe(
            live_server.url + "/pubsubpull/", "edges", live_server.url + "/hooks/customers/",
            models=["customers.customer"], auth=token,
        )  # fmt: skip
        RemoteSubscription.objects.update(publisher=publisher)
        with pytest.raises(SourceError) as refused:
            pubsubpull.unsubscribe(publisher, "edges", auth=token)
    finally:
        switch.down()
    assert refused.value.status == 501
    assert RemoteSubscription.objects.filter(name="edges").exists()  # to verify, or try again


# -- a publisher that answers wrong, or not at all ----------------------------------


def test_a_model_the_token_may_not_read_is_named_with_what_the_publisher_offers(
    customers_url,
):
    scoped = create_token("billing", ["customers.country"])[1]
    cursor = pubsubpull.pull(customers_url, edge_handlers.strict, auth=scoped, enqueue=False)
    assert catch_up(cursor) == "failed"
    assert "does not publish 'customers.customer' to us" in cursor.last_error
    assert "lists customers.country); check the label and the token's scope." in cursor.last_error


def test_a_service_url_that_answers_html_is_an_error_saying_so(live_server, token):
    page = live_server.url + "/admin/login/"
    cursor = pubsubpull.pull(page, edge_handlers.strict, auth=token, enqueue=False)
    assert catch_up(cursor) == "failed"
    assert cursor.last_error.startswith(f"SourceError: GET {page} did not answer JSON")


def test_a_publisher_that_is_down_is_retried_with_the_connection_error(token):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    url = f"http://127.0.0.1:{port}/pubsubpull/models/customers.customer/instances/"
    cursor = pubsubpull.pull(url, edge_handlers.strict, auth=token, enqueue=False)
    assert catch_up(cursor) == "failed"
    assert cursor.last_error.startswith(f"SourceError: GET http://127.0.0.1:{port}/pubsubpull/")
    assert "ConnectError" in cursor.last_error
    assert cursor.state == "failing" and cursor.next_run_at > timezone.now()


def test_a_notification_over_receiver_max_bytes_is_413(hooks, settings):
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "RECEIVER_MAX_BYTES": 100}
    body, headers = signed_batch(f"msg_{uuid.uuid4().hex}", *range(1, 10))
    assert len(body) > 100
    answer = hooks.put("strict/", content=body, headers=headers)
    assert answer.status_code == 413
    assert answer.json()["detail"] == "The body must be at most 100 bytes."
    assert not ReceivedBatch.objects.exists()


def test_the_subscriber_models_say_what_they_are(admin_client):
    """What the admin and a shell show (ruff's DJ008 has every model say it)."""
    from pubsubpull.client.models import MirrorSeen, MirrorTombstone

    subscription = RemoteSubscription.objects.create(
        publisher="https://customers.example/pubsubpull/", name="users", callback="x", secret="s"
    )
    page = admin_client.get(f"/admin/pubsubpull/remotesubscription/{subscription.pk}/change/")
    assert "users at https://customers.example/pubsubpull/" in page.content.decode()
    assert str(ReceivedBatch(webhook_id="msg_1")) == "msg_1"
    assert str(MirrorTombstone(mirror="mirror:cards", object_pk="7", sequence=12)) == (
        "mirror:cards 7 deleted at 12"
    )
    assert str(MirrorSeen(mirror="mirror:cards", object_pk="7")) == "mirror:cards 7"


def test_a_pull_whose_lease_another_worker_took_leaves_the_cursor_to_it(
    customers_url, token, caplog
):
    Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(3))
    cursor = pubsubpull.pull(
        customers_url, edge_handlers.strict, auth=token, page_size=1, enqueue=False
    )

    def lease_lapses_and_a_worker_takes_it(progress):
        PullCursor.objects.filter(pk=cursor.pk).update(
            lease_owner="worker:other", lease_expires=timezone.now() + timedelta(seconds=60)
        )

    with caplog.at_level("WARNING", logger="pubsubpull.client"):
        outcome = pulling.run(
            cursor.id, progress=lease_lapses_and_a_worker_takes_it, now=True,
            stop_when_caught_up=True,
        )  # fmt: skip
    assert outcome == "busy"
    assert "another worker took the cursor; leaving it" in caplog.text
    cursor.refresh_from_db()
    assert cursor.lease_owner == "worker:other"
    assert cursor.rows == 1 and len(edge_handlers.seen) == 1  # its second page was not applied


def test_a_notification_for_a_subscription_this_service_never_made_is_401(hooks):
    body = json.dumps(
        {"type": "pubsubpull.changes", "data": {"subscription": "strangers", "changes": []}}
    ).encode()
    answer = hooks.put("strict/", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 401
    assert answer.json()["error"] == "unknown_subscription"
    assert answer.json()["detail"].startswith(
        "This service has no subscription named 'strangers': subscribe with pubsubpull.subscribe()"
    )
    assert not ReceivedBatch.objects.exists()


def test_a_following_pull_long_polls_until_its_budget_is_spent(customers_url, token):
    cursor = pubsubpull.pull(
        customers_url, edge_handlers.strict, auth=token, start="now", enqueue=False
    )
    started = time.monotonic()
    # Nothing new: long polls of PULL_WAIT (0.2 s) that bring nothing, then "more".
    assert pulling.run(cursor.id, budget=0.8, now=True) == "more"
    assert 0.7 < time.monotonic() - started < 5
    cursor.refresh_from_db()
    assert cursor.state == "active" and cursor.failures == 0 and cursor.rows == 0
    a = Customer.objects.create(name="a")
    assert catch_up(cursor) == "caught_up"
    assert edge_handlers.seen == [("insert", a.pk)]


def test_a_following_pull_whose_lease_was_taken_during_a_long_poll_leaves_it(
    customers_url, token, caplog
):
    cursor = pubsubpull.pull(
        customers_url, edge_handlers.strict, auth=token, start="now", enqueue=False
    )

    def lease_lapses_and_a_worker_takes_it(progress):
        PullCursor.objects.filter(pk=cursor.pk).update(
            lease_owner="worker:other", lease_expires=timezone.now() + timedelta(seconds=60)
        )

    with caplog.at_level("WARNING", logger="pubsubpull.client"):
        # Following: the first poll brings nothing; holding on after the next one fails.
        outcome = pulling.run(
            cursor.id, budget=5.0, progress=lease_lapses_and_a_worker_takes_it, now=True
        )
    assert outcome == "busy"
    assert "another worker took the cursor; leaving it" in caplog.text
    cursor.refresh_from_db()
    assert cursor.lease_owner == "worker:other"
