"""Read your writes across services.

The customers service answers a request that changed published data with
``Pubsubpull-Position``: the feed position after which every change of the
request is visible. Billing, which called it, waits until its own mirror has
applied that position and then reads its copy: it sees what it just caused.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.db import connection, connections, transaction

import pubsubpull
from customers.models import Country, Customer
from ledger.models import Entry
from pubsubpull.capture.middleware import flush
from pubsubpull.exceptions import InvalidCursor, PubsubpullError, WaitTimeout
from pubsubpull.models import Change
from pubsubpull.protocol import cursor as cursors
from pubsubpull.protocol.cursor import Position
from pubsubpull.publisher import feed

from . import services
from .delivery_helpers import WorkerThread, use_fast_settings

billing_service, billing = services.billing_service, services.billing  # the fixtures

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

HEADER = "Pubsubpull-Position"


@pytest.fixture(params=[False, True], ids=["autocommit", "atomic_requests"])
def atomic_requests(request, monkeypatch):
    """Run the test with ATOMIC_REQUESTS off, then on (every alias)."""
    for alias in connections:
        monkeypatch.setitem(connections[alias].settings_dict, "ATOMIC_REQUESTS", request.param)
    return request.param


@pytest.fixture
def ada():
    return Customer.objects.create(name="Ada")


def put(url: str, data) -> httpx.Response:
    response = httpx.put(url, json=data, timeout=30)
    flush(timeout=10)
    return response


def last_change(**filters) -> Position:
    change = Change.objects.filter(**filters).order_by("-txid", "-id").first()
    return Position(change.txid, change.id)


def served_through(position: str) -> list[int]:
    """The ids of the changes the feed serves up to ``position`` (from the start)."""
    page = feed.read_changes(None, limit=10_000)
    until = cursors.Position.decode(position)
    return [c.id for c in page.changes if c.position <= until]


# -- the header ------------------------------------------------------------------


def test_a_write_answers_with_the_position_of_its_last_change(live_server, ada, atomic_requests):
    response = put(f"{live_server.url}/customers/{ada.pk}/", {"name": "Ada L."})
    assert response.status_code == 200
    position = response.headers[HEADER]
    [change] = Change.objects.filter(op="update")
    assert Position.decode(position) == Position(change.txid, change.id)
    # Everything the request changed is served at or before it.
    assert change.id in served_through(position)


def test_a_read_answers_without_a_position_and_without_asking_the_database(live_server, ada):
    response = httpx.get(f"{live_server.url}/customers/{ada.pk}/")
    assert response.status_code == 200 and HEADER not in response.headers
    response = httpx.get(f"{live_server.url}/customers/")
    assert response.status_code == 200 and HEADER not in response.headers


def test_a_read_costs_no_extra_query(client, ada, django_assert_num_queries):
    with django_assert_num_queries(1):  # the view's own SELECT
        response = client.get(f"/customers/{ada.pk}/")
    assert response.status_code == 200 and HEADER not in response.headers


def test_a_write_costs_one_more_query_per_database_it_wrote(client, ada, django_assert_num_queries):
    # update_or_create: SELECT ... FOR UPDATE, UPDATE (savepoint and release
    # around them); then the position lookup.
    with django_assert_num_queries(5) as captured:
        response = client.put(
            f"/customers/{ada.pk}/", {"name": "Ada B."}, content_type="application/json"
        )
    assert response.headers[HEADER]
    assert "request_id" in captured.captured_queries[-1]["sql"]


def test_the_header_can_be_turned_off_and_its_query_with_it(
    client, ada, settings, django_assert_num_queries
):
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "POSITION_HEADER": False}
    with django_assert_num_queries(4):  # the view's own, as without pubsubpull's lookup
        response = client.put(
            f"/customers/{ada.pk}/", {"name": "Ada C."}, content_type="application/json"
        )
    assert response.status_code == 200 and HEADER not in response.headers
    with pubsubpull.context(task="still"):
        Customer.objects.filter(pk=ada.pk).update(name="Ada D.")
        assert Position.decode(pubsubpull.position()) == last_change(op="update")


def test_writing_only_unpublished_tables_gives_no_position(live_server, ada, atomic_requests):
    response = put(f"{live_server.url}/customers/{ada.pk}/note/", {"text": "likes tea"})
    assert response.status_code == 201
    assert HEADER not in response.headers


def test_a_rolled_back_request_gives_no_position(live_server, ada, monkeypatch):
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
    response = put(f"{live_server.url}/customers/{ada.pk}/fail/", {"name": "Never"})
    assert response.status_code == 500
    assert HEADER not in response.headers
    assert not Change.objects.filter(op="update").exists()


def test_a_request_that_committed_then_failed_still_gives_its_position(live_server, ada):
    response = put(f"{live_server.url}/customers/{ada.pk}/fail-after-commit/", {"name": "Kept"})
    assert response.status_code == 500
    assert Position.decode(response.headers[HEADER]) == last_change(op="update")


def test_several_transactions_give_the_position_of_the_last(live_server, ada, atomic_requests):
    for code in ("FR", "DE", "NL"):
        Country.objects.create(code=code, name=code)
    response = put(
        f"{live_server.url}/customers/{ada.pk}/moves/",
        {"name": "Ada M.", "countries": ["FR", "DE", "NL"]},
    )
    assert response.status_code == 200
    position = Position.decode(response.headers[HEADER])
    changes = list(Change.objects.filter(op="update").order_by("txid", "id"))
    assert len(changes) == 4
    assert len({c.txid for c in changes}) == 4  # four transactions (non_atomic_requests)
    assert position == Position(changes[-1].txid, changes[-1].id)
    assert {c.id for c in changes} <= set(served_through(response.headers[HEADER]))
    # pubsubpull.position() in the view gave the position after each write.
    reported = [Position.decode(p) for p in response.json()["positions"]]
    assert reported == [Position(c.txid, c.id) for c in changes]


def test_writes_to_two_databases_give_a_position_in_each(live_server, ada, atomic_requests):
    response = put(f"{live_server.url}/customers/{ada.pk}/points/", {"points": 5, "reason": "x"})
    assert response.status_code == 200
    value = response.headers[HEADER]
    entry = Change.objects.using("other").get(model="ledger.entry", op="insert")
    customer = last_change(op="update")
    # The ledger was written first: the databases come in the order written.
    assert value == (
        f"{Position(entry.txid, entry.id).encode()};db=other, {customer.encode()};db=default"
    )
    assert cursors.from_header(value, "default") == customer
    assert cursors.from_header(value, "other") == Position(entry.txid, entry.id)
    with pytest.raises(InvalidCursor, match="several databases"):
        cursors.from_header(value)
    assert Entry.objects.count() == 1


def test_an_async_view_under_asgi_gives_its_position(async_client, ada):
    response = async_to_sync(async_client.put)(
        f"/async/customers/{ada.pk}/", json.dumps({"name": "Async Ada"}),
        content_type="application/json",
    )  # fmt: skip
    assert response.status_code == 200
    assert Position.decode(response.headers[HEADER]) == last_change(op="update")
    response = async_to_sync(async_client.get)(f"/customers/{ada.pk}/")
    assert HEADER not in response.headers


# -- pubsubpull.position() in code ------------------------------------------------


def test_position_in_a_context_block_and_after_it():

    with pubsubpull.context(command="import"):
        assert pubsubpull.position() is None  # nothing written by this job yet
        Customer.objects.create(name="Imported")
        inside = pubsubpull.position()
        assert Position.decode(inside) == last_change()
        Customer.objects.create(name="Someone else", email="x")  # the job's too
        assert Position.decode(pubsubpull.position()) == last_change()
        after_second = pubsubpull.position()
    # Outside a block: the newest change of the log, which covers the block's.
    assert pubsubpull.position() == after_second
    Customer.objects.create(name="Unattributed")
    assert Position.decode(pubsubpull.position()) == last_change()


def test_position_inside_a_transaction_counts_its_own_changes():
    with transaction.atomic(), pubsubpull.context(task="t"):
        Customer.objects.create(name="In a transaction")
        position = pubsubpull.position()
        assert Position.decode(position) == last_change()
    # Committed: the feed serves it at or before the position.
    assert last_change().id in served_through(position)


def test_position_of_a_database_the_job_did_not_write_is_none(ada):
    with pubsubpull.context(task="points"):
        Customer.objects.filter(pk=ada.pk).update(name="Ada P.")
        assert pubsubpull.position(using="other") is None
        assert pubsubpull.position(using="default") is not None


def test_position_is_public():
    assert "position" in pubsubpull.__all__
    assert pubsubpull.position.__module__ == "pubsubpull.publisher.positions"


# -- waiting on the subscriber side ------------------------------------------------


def test_the_header_value_round_trips():
    one = Position(10, 20)
    assert cursors.from_header(cursors.header_value([("default", one)])) == one
    two = cursors.header_value([("default", one), ('we"ird', Position(3, 4))])
    assert two == f'{one.encode()};db=default, {Position(3, 4).encode()};db="we\\"ird"'
    assert cursors.from_header(two, 'we"ird') == Position(3, 4)
    for bad in ("", "nope", f"{one.encode()};x=y"):
        with pytest.raises(InvalidCursor):
            cursors.from_header(bad)
    # Only another database written: its member says which, so a reader of
    # the default database's feed is not handed a position of another feed.
    other = cursors.header_value([("other", one)])
    assert other == f"{one.encode()};db=other"
    assert cursors.from_header(other) == one == cursors.from_header(other, "other")
    with pytest.raises(InvalidCursor, match="no position in the feed of database 'default'"):
        cursors.from_header(other, "default")


def test_a_wait_that_times_out_says_what_it_waited_for():
    from pubsubpull.client import waiting

    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        waiting.wait_until_applied(
            lambda: Position(1, 1), Position(2, 2).encode(), timeout=0.3, what="The mirror"
        )
    assert 0.3 <= time.monotonic() - started < 1.0
    error = caught.value
    assert isinstance(error, PubsubpullError) and isinstance(error, TimeoutError)
    assert (error.position, error.applied) == (Position(2, 2).encode(), Position(1, 1).encode())
    assert "pubsubpull_worker" in str(error)
    # Nothing to wait for (no header): at once.
    assert waiting.wait_until_applied(lambda: None, None, timeout=5, what="x") is None


def test_a_pull_cursor_and_a_receiver_wait_for_another_connections_commit():
    """The worker applying changes is another process: the wait sees its commits."""
    import threading

    from django.db import connection as this_connection

    from pubsubpull.client import pulling, receiver
    from pubsubpull.client.models import PullCursor, RemoteSubscription

    cursor = PullCursor.objects.create(
        name="ryw", source="http://x/", service_url="http://x/", handler="h", phase="snapshot"
    )
    subscription = RemoteSubscription.objects.create(
        publisher="http://x/", name="ryw", callback="http://y/", secret="s"
    )
    wanted = Position(100, 7)

    def apply_later():
        time.sleep(0.3)
        try:
            PullCursor.objects.filter(pk=cursor.pk).update(
                phase="feed", feed_position=Position(100, 9).encode()
            )
            RemoteSubscription.objects.filter(pk=subscription.pk).update(
                position=Position(101, 1).encode()
            )
        finally:
            this_connection.close()

    # Past its snapshot's position but still in the snapshot: not applied yet.
    PullCursor.objects.filter(pk=cursor.pk).update(feed_position=Position(200, 0).encode())
    with pytest.raises(WaitTimeout, match="The pull 'ryw'"):
        pulling.wait_for("ryw", wanted.encode(), timeout=0.1)
    with pytest.raises(WaitTimeout, match="subscription 'ryw'"):
        receiver.wait_for("ryw", wanted, timeout=0.1)

    worker = threading.Thread(target=apply_later)
    started = time.monotonic()
    worker.start()
    assert pulling.wait_for(cursor, wanted.encode(), timeout=10) == Position(100, 9)
    assert receiver.wait_for(subscription, wanted.encode(), timeout=10) == Position(101, 1)
    waited = time.monotonic() - started
    worker.join()
    assert 0.3 <= waited < 1.0  # polls with a backoff capped at 0.1 s
    assert pulling.wait_for(cursor.pk, None) is None


def invoice(billing, pk: int, country: str, timeout: float = 20) -> httpx.Response:
    return httpx.put(
        f"{billing.url}/invoices/{pk}/", json={"country": country, "timeout": timeout}, timeout=60
    )


def mirrored_country(billing, pk: int):
    rows = billing.sql("SELECT country FROM billing_customercountry WHERE remote_id = %s", [pk])
    return rows[0][0] if rows else "missing"


@pytest.mark.slow
def test_billing_reads_the_country_it_just_set_pull_mode(billing):
    countries = ["FR", "DE", "NL", "IT", "NZ"]
    for code in countries:
        Country.objects.create(code=code, name=code)
    ada = Customer.objects.create(name="Ada", country_id="FR")
    billing.start_worker()
    billing.start_server()
    billing.shell("from billing.mirrors import customers; customers.pull()")
    services.wait_until(lambda: mirrored_country(billing, ada.pk) == "FR", timeout=60)

    for code in countries[1:] * 2:
        answer = invoice(billing, ada.pk, code)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        # Read from billing's own copy, right after the change was made elsewhere.
        assert body["country"] == code
        assert Position.decode(body["position"]) == last_change(op="update")
    [(phase, position)] = billing.sql("SELECT phase, feed_position FROM pubsubpull_pullcursor")
    assert phase == "feed"
    latest = last_change(op="update")
    assert Position.decode(position) >= latest
    # The same through the pull cursor, in another process.
    out = billing.shell(
        "from pubsubpull.client import pulling; "
        "print(pulling.wait_for("
        f"'mirror:billing.customercountry', '{latest.encode()}').encode())"
    )
    assert Position.decode(out.strip()) >= latest


@pytest.mark.slow
def test_billing_reads_the_country_it_just_set_push_mode(billing, settings):
    use_fast_settings(settings)
    for code in ("FR", "DE", "NL"):
        Country.objects.create(code=code, name=code)
    ada = Customer.objects.create(name="Ada", country_id="FR")
    billing.start_server()
    billing.shell(
        "from billing.mirrors import customers; "
        f"customers.subscribe('{billing.url}/hooks/customers/')"
    )
    assert billing.sql("SELECT count(*) FROM pubsubpull_pullcursor WHERE phase = 'done'") == [(1,)]
    with WorkerThread():  # the publisher's delivery worker
        for code in ("DE", "NL", "FR", "DE"):
            answer = invoice(billing, ada.pk, code)
            assert answer.status_code == 200, answer.text
            assert answer.json()["country"] == code
    [(position,)] = billing.sql("SELECT position FROM pubsubpull_remotesubscription")
    latest = last_change(op="update")
    assert Position.decode(position) >= latest
    # The same through the receiver's subscription, in another process.
    out = billing.shell(
        "from pubsubpull.client import receiver; "
        f"print(receiver.wait_for('mirror-billing.customercountry', '{latest.encode()}').encode())"
    )
    assert Position.decode(out.strip()) >= latest


@pytest.mark.slow
def test_billing_answers_503_when_its_copy_is_not_there_in_time(billing):
    Country.objects.create(code="NZ", name="NZ")
    ada = Customer.objects.create(name="Ada")
    billing.start_server()
    # A pull that no worker runs: the copy never moves.
    billing.shell("from billing.mirrors import customers; customers.pull(enqueue=False)")
    started = time.monotonic()
    answer = invoice(billing, ada.pk, "NZ", timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 10
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
    body = answer.json()
    assert body["error"] == "not_yet_applied" and "0.5 s" in body["detail"]
    assert Position.decode(body["position"]) == last_change(op="update")
    assert Customer.objects.get().country_id == "NZ"  # the change itself was made


@pytest.mark.slow
def test_with_delivery_down_billing_still_reads_its_write_by_catching_up(billing, settings):
    """Push mode with no delivery worker at customers: after a second short, the
    wait pulls the feed once from the subscription's position, and the copy has it."""
    use_fast_settings(settings)
    Country.objects.create(code="NZ", name="NZ")
    ada = Customer.objects.create(name="Ada")
    billing.start_server()
    billing.shell(
        "from billing.mirrors import customers; "
        f"customers.subscribe('{billing.url}/hooks/customers/')"
    )
    started = time.monotonic()
    answer = invoice(billing, ada.pk, "NZ")  # no WorkerThread: nothing is delivered
    waited = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert answer.json()["country"] == "NZ"
    assert 1.0 <= waited < 15
    [(position,)] = billing.sql("SELECT position FROM pubsubpull_remotesubscription")
    assert Position.decode(position) >= last_change(op="update")
