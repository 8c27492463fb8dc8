"""A model published from a second database is served from that database's change log.

The publisher test service keeps its ledger app in the database "other": the
capture trigger records ledger.entry's changes in that database's own change
log, so its feed, its snapshot's feed_position and its long polls read there.
A feed page (and its cursor) follows one log, so a request naming models of
two databases is refused, and so is a subscription to a model that delivery
(which follows the main log) cannot deliver.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from django.db import connections

from customers.models import Customer
from ledger.models import Entry
from pubsubpull.publisher import feed, longpoll
from pubsubpull.publisher.api.auth import create_token

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])


@pytest.fixture(autouse=True)
def _empty_other_log():
    with connections["other"].cursor() as cursor:
        cursor.execute("TRUNCATE pubsubpull_change, pubsubpull_request")
    yield
    longpoll.stop_listening()  # the long polls' connections to both test databases


@pytest.fixture
def api(live_server):
    token = create_token("ledger-reader", ["*"])[1]
    client = httpx.Client(
        base_url=live_server.url + "/pubsubpull/",
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    with client:
        yield client


def labels(body):
    return [(c["model"], c["op"]) for c in body["changes"]]


def test_the_service_documents_changes_link_of_a_second_database_model_serves_it(api):
    Customer.objects.create(name="Ada")
    entry = Entry.objects.create(customer_id=1, points=50, reason="signup")
    document = api.get("").json()
    (ledger,) = [m for m in document["models"] if m["model"] == "ledger.entry"]

    body = api.get(ledger["changes"]).json()
    assert labels(body) == [("ledger.entry", "insert")]
    assert body["changes"][0]["pk"] == entry.pk
    assert body["changes"][0]["new"]["points"] == 50
    # And the main feed still serves the main database's models.
    main = api.get(document["links"]["changes"]).json()
    assert ("customers.customer", "insert") in labels(main)
    assert "ledger.entry" not in {c["model"] for c in main["changes"]}


def test_following_a_second_database_model_from_its_snapshot_misses_nothing(api):
    Entry.objects.create(customer_id=1, points=10)
    first = api.get("models/ledger.entry/instances/").json()
    assert [i["fields"]["points"] for i in first["instances"]] == [10]
    # Changes in the main database move its own log on, not this one's.
    for n in range(3):
        Customer.objects.create(name=f"c{n}")
    Entry.objects.create(customer_id=2, points=20)

    body = api.get(first["changes"]).json()
    # At least once: a change the snapshot already showed may come again
    # (a transaction elsewhere on the server held the snapshot's position
    # back); its sequence says it is not news.
    (seen,) = first["instances"]
    news = [c for c in body["changes"] if c["sequence"] > seen["sequence"]]
    assert [c["new"]["points"] for c in news] == [20]
    assert api.get(body["next"]).json()["changes"] == []


def test_a_feed_of_models_from_two_databases_is_refused_with_what_to_ask_instead(api):
    response = api.get("changes/", params={"models": "customers.customer,ledger.entry"})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "several_databases"
    assert body["models"] == [["customers.customer"], ["ledger.entry"]]
    assert "models=customers.customer and models=ledger.entry" in body["detail"]
    with pytest.raises(feed.SeveralDatabases):
        feed.read_changes(None, models=["customers.customer", "ledger.entry"])


def test_a_caller_who_may_read_only_the_second_database_gets_its_feed_by_default(live_server):
    Entry.objects.create(customer_id=1, points=5)
    Customer.objects.create(name="not for this caller")
    token = create_token("ledger-only", ["ledger.entry"])[1]
    response = httpx.get(
        live_server.url + "/pubsubpull/changes/",
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert labels(response.json()) == [("ledger.entry", "insert")]


def test_a_long_poll_on_a_second_database_model_wakes_when_it_changes(api):
    head = api.get("changes/", params={"models": "ledger.entry"}).json()["cursor"]
    timer = threading.Timer(0.5, lambda: Entry.objects.create(customer_id=3, points=7))
    started = time.monotonic()
    timer.start()
    response = api.get(
        "changes/", params={"models": "ledger.entry", "after": head, "wait": 30}, timeout=60
    )
    timer.join()
    assert response.status_code == 200
    assert [c["new"]["points"] for c in response.json()["changes"]] == [7]
    assert time.monotonic() - started < 20


def test_subscribing_to_a_second_database_model_is_refused_at_subscribe_time(api):
    response = api.put(
        "subscriptions/ledger/",
        json={"callback": "http://127.0.0.1:9/hooks/", "models": ["ledger.entry"]},
    )
    assert response.status_code == 400
    body = response.json()
    assert "ledger.entry" in body["fields"]["models"]
    assert "pull" in body["fields"]["models"]
    mixed = api.put(
        "subscriptions/ledger/",
        json={
            "callback": "http://127.0.0.1:9/hooks/",
            "models": ["customers.customer", "ledger.entry"],
        },
    )
    assert mixed.status_code == 400
