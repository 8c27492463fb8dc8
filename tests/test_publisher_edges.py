"""The publisher's edges: callers who get it wrong, odd rows, owners who lose access.

Each test is what a user, an operator or an attacker would do, on real
PostgreSQL through the real views (Django's test client), and real HTTP
receivers on 127.0.0.1 where something is delivered.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.urls import resolve, reverse
from standardwebhooks import Webhook

from customers.models import Country, Customer
from pubsubpull.models import Change, ServiceToken
from pubsubpull.publisher.api.auth import create_token
from pubsubpull.publisher.api.openapi import field_schema
from pubsubpull.publisher.delivery.models import Attempt, ParkedChange, Subscription

from .delivery_helpers import drain_settled, make_subscription, use_fast_settings
from .receivers import Answer, Receiver

BASE = "/pubsubpull/"


def put_json(client, path, body, **kwargs):
    return client.put(path, json.dumps(body), content_type="application/json", **kwargs)


# --- Who is calling ------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_empty_bearer_header_is_refused_saying_so(client):
    response = client.get(f"{BASE}changes/", headers={"Authorization": "Bearer   "})
    assert response.status_code == 401
    assert response.json()["detail"] == "The Authorization header has no bearer token."


@pytest.mark.django_db
def test_basic_credentials_are_left_to_django_and_the_session_user_reads(client):
    """A proxy's Basic header is not a bearer token: the logged-in user is the caller."""
    user = User.objects.create_user("clerk")
    user.user_permissions.add(Permission.objects.get(codename="view_customer"))
    client.force_login(user)
    response = client.get(
        f"{BASE}changes/?models=customers.customer",
        headers={"Authorization": "Basic cHJveHk6cHc="},
    )
    assert response.status_code == 200
    anonymous = Client().get(f"{BASE}changes/", headers={"Authorization": "Basic cHJveHk6cHc="})
    assert anonymous.status_code == 401


@pytest.mark.django_db
def test_a_logged_in_user_subscribing_from_another_site_is_stopped_by_csrf():
    user = User.objects.create_user("clerk")
    user.user_permissions.add(Permission.objects.get(codename="view_customer"))
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    body = {"callback": "https://billing.example/hook", "models": ["customers.customer"]}
    forged = put_json(browser, f"{BASE}subscriptions/b/", body)
    assert forged.status_code == 403
    assert forged.json()["detail"] == "CSRF verification failed."
    assert not Subscription.objects.exists()
    # The same user's reads need no token.
    assert browser.get(f"{BASE}changes/?models=customers.customer").status_code == 200


@pytest.mark.django_db
def test_anonymous_readers_may_read_but_not_subscribe_nor_see_metrics(client, settings):
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "ANONYMOUS_MODELS": ["customers.country"]}
    assert client.get(f"{BASE}changes/?models=customers.country").status_code == 200
    body = {"callback": "https://billing.example/hook", "models": ["customers.country"]}
    subscribing = put_json(client, f"{BASE}subscriptions/b/", body)
    assert subscribing.status_code == 401
    assert "Subscribing needs an identity" in subscribing.json()["detail"]
    assert client.get(f"{BASE}subscriptions/").status_code == 401
    metrics = client.get(f"{BASE}metrics")
    assert metrics.status_code == 401
    assert "Metrics need credentials" in metrics.json()["detail"]


@pytest.mark.django_db(transaction=True)
def test_health_answers_503_when_the_database_is_unreachable(client):
    """A real outage: the connection goes to a port nothing listens on."""
    db = connection.settings_dict
    port = db["PORT"]
    connection.close()
    db["PORT"] = "1"
    try:
        response = client.get(f"{BASE}health/")
    finally:
        connection.close()
        db["PORT"] = port
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "unreachable"}
    assert client.get(f"{BASE}health/").json()["database"] != "unreachable"


# --- URLs and the document -----------------------------------------------------------------


@pytest.mark.django_db
def test_a_project_reversing_an_instance_url_gets_one_that_serves_it():
    """Primary keys are any text: the URL converter passes them through both ways."""
    country = Country.objects.create(code="f/", name="France")
    url = reverse("pubsubpull:instance", args=["customers.country", country.pk])
    assert resolve(url).kwargs == {"model": "customers.country", "pk": "f/"}
    user = User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 200 and "France" in response.text


def test_a_json_column_may_hold_any_json_value_in_the_document():
    from django.db import models

    assert field_schema(models.JSONField(null=True)) == {}
    assert field_schema(models.IntegerField(null=True)) == {"type": ["integer", "null"]}


# --- Delivery: owners, callbacks, parked changes -------------------------------------------


@pytest.fixture
def fast(settings):
    return use_fast_settings(settings)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("owner", "reason"),
    [
        ("user:not-a-key", "Its user (user:not-a-key) was deleted: nothing is sent."),
        ("service:billing", "Its owner 'service:billing' is neither a service token nor a user."),
    ],
)
def test_an_owner_that_is_no_token_or_user_is_sent_nothing(fast, owner, reason):
    with Receiver() as receiver:
        subscription = make_subscription(receiver.url(), owner=owner).subscription
        Customer.objects.create(name="Ada")
        assert drain_settled(subscription.pk) == "forbidden"
    assert receiver.requests == []
    assert reason in Subscription.objects.get(pk=subscription.pk).state_reason


@pytest.mark.django_db
def test_a_callback_with_a_fragment_is_refused(fast):
    _, token = create_token("billing", ["customers.customer"])
    client = Client(headers={"Authorization": f"Bearer {token}"})
    body = {"callback": "http://127.0.0.1:9/hook#part", "models": ["customers.customer"]}
    response = put_json(client, f"{BASE}subscriptions/billing/", body)
    assert response.status_code == 400
    assert "may not have a #fragment" in response.json()["detail"]
    assert not Subscription.objects.exists()


def refusing_poison(state):
    def answer(received, n):
        if not state["fixed"] and any(c["new"]["name"] == "poison" for c in received.changes):
            return Answer(400, body=b'{"error": "cannot take this"}')
        return Answer()

    return answer


@pytest.mark.django_db(transaction=True)
def test_a_parked_change_resent_after_a_rotation_is_signed_with_both_secrets(fast):
    state = {"fixed": False}
    record, token = create_token("billing", ["customers.customer"])
    client = Client(headers={"Authorization": f"Bearer {token}"})
    with Receiver(refusing_poison(state)) as receiver:
        made = make_subscription(receiver.url(), owner=f"token:{record.pk}")
        Customer.objects.create(name="poison")
        assert drain_settled(made.subscription.pk) == "failed"
        [attempt] = Attempt.objects.all()
        assert str(attempt) == f"{attempt.webhook_id} → 400"
        [change_id] = client.get(f"{BASE}subscriptions/billing/").json()["pending"]["changes"]
        parked = put_json(client, f"{BASE}subscriptions/billing/parked/{change_id}/",
                          {"action": "park"})  # fmt: skip
        assert parked.status_code == 201

        rotated = put_json(client, f"{BASE}subscriptions/billing/", {"rotate_secret": True})
        new = rotated.json()["secret"]
        state["fixed"] = True
        resent = put_json(client, f"{BASE}subscriptions/billing/parked/{change_id}/",
                          {"action": "resend"})  # fmt: skip
        assert resent.status_code == 200 and resent.json()["resent"] is True
        last = receiver.requests[-1]
        # A receiver that has not switched yet still verifies it; so does one that has.
        for secret in (made.secret, new):
            assert Webhook(secret).verify(last.body, last.headers)["data"]["parked"] is True


@pytest.mark.django_db(transaction=True)
def test_a_parked_change_is_not_resent_to_an_owner_who_lost_the_model(fast):
    state = {"fixed": False}
    record, token = create_token("billing", ["customers.customer"])
    client = Client(headers={"Authorization": f"Bearer {token}"})
    User.objects.create_superuser("ops", "ops@example.com", "pw")
    admin = Client()
    admin.login(username="ops", password="pw")
    with Receiver(refusing_poison(state)) as receiver:
        subscription = make_subscription(receiver.url(), owner=f"token:{record.pk}").subscription
        Customer.objects.create(name="poison")
        assert drain_settled(subscription.pk) == "failed"
        [change_id] = client.get(f"{BASE}subscriptions/billing/").json()["pending"]["changes"]
        path = f"{BASE}subscriptions/billing/parked/{change_id}/"
        assert put_json(client, path, {"action": "park"}).status_code == 201
        sent = len(receiver.requests)

        ServiceToken.objects.filter(pk=record.pk).update(scope=["customers.country"])
        state["fixed"] = True
        refused = put_json(client, path, {"action": "resend"})
        assert refused.status_code == 403 and refused.json()["error"] == "permission_denied"
        assert "may no longer read customers.customer" in refused.json()["detail"]

        parked = ParkedChange.objects.get()
        page = admin.post(
            "/admin/pubsubpull/parkedchange/",
            {"action": "resend", "_selected_action": [parked.pk]},
            follow=True,
        )
        assert f"Change {change_id}: " in page.text and "may no longer read" in page.text
        assert len(receiver.requests) == sent  # nothing went out
        parked.refresh_from_db()
        assert not parked.resent


@pytest.mark.django_db
def test_parking_in_the_admin_a_subscription_that_is_not_failing_parks_nothing(fast):
    User.objects.create_superuser("ops", "ops@example.com", "pw")
    admin = Client()
    admin.login(username="ops", password="pw")
    subscription = make_subscription("http://127.0.0.1:9/hook").subscription
    page = admin.post(
        "/admin/pubsubpull/subscription/",
        {"action": "park", "_selected_action": [subscription.pk]},
        follow=True,
    )
    assert "Billing: nothing is failing, so nothing was parked." in page.text  # capfirst
    assert not ParkedChange.objects.exists()


# --- The admin meets rows the log keeps: retired models, truncates, pruned requests --------


def insert_change(model, object_pk, op, old, new, request_id=None):
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO pubsubpull_change (txid, model, object_pk, op, at, request_id, old, new) "
            "VALUES (pg_current_xact_id()::text::bigint, %s, %s, %s, now(), %s, %s, %s) "
            "RETURNING id",
            [model, object_pk, op, request_id, json.dumps(old), json.dumps(new)],
        )
        return cursor.fetchone()[0]


def insert_request():
    request_id = uuid.uuid4()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO pubsubpull_request (id, method, path, query_string, user_agent, "
            "request_id, started, metadata) VALUES (%s, 'PUT', '/import/', '', 'curl', '', "
            "now(), '{}')",
            [request_id],
        )
    return request_id


@pytest.mark.django_db
def test_the_admin_shows_changes_of_a_retired_model_plainly(admin_client):
    """The app is gone from the project; its changes stay readable, with no dead links."""
    gone = uuid.uuid4()  # its request row was pruned
    retired = insert_change(
        "retired.widget", "7", "update", {"tags": ["a"], "n": 1}, {"tags": ["a", "b"], "n": 1}, gone
    )
    listing = admin_client.get("/admin/pubsubpull/change/")
    assert listing.status_code == 200 and "retired.widget" in listing.text
    assert "/admin/retired/" not in listing.text
    assert f"/admin/pubsubpull/request/{gone}/change/" in listing.text  # labelled by its id

    detail = admin_client.get(f"/admin/pubsubpull/change/{retired}/change/")
    assert detail.status_code == 200
    # Headings are the column names; a list is shown as JSON.
    assert "<th>tags</th>" in detail.text or ">tags<" in detail.text
    assert "[&quot;a&quot;, &quot;b&quot;]" in detail.text


@pytest.mark.django_db
def test_the_admin_shows_a_truncate_and_a_model_without_admin_with_no_links(admin_client):
    truncate = insert_change("customers.customer", None, "truncate", None, None)
    ledger = insert_change("ledger.entry", "3", "insert", None, {"id": 3})
    detail = admin_client.get(f"/admin/pubsubpull/change/{truncate}/change/")
    assert detail.status_code == 200
    readonly = re.findall(r'<div class="readonly">(.*?)</div>', detail.text, re.S)
    assert readonly.count("—") >= 4  # object, diff, before, after
    page = admin_client.get(f"/admin/pubsubpull/change/{ledger}/change/")
    assert page.status_code == 200 and "/admin/ledger/" not in page.text


@pytest.mark.django_db
def test_a_request_page_links_its_objects_or_says_none_survived(admin_client):
    empty = insert_request()
    page = admin_client.get(f"/admin/pubsubpull/request/{empty}/change/")
    assert "None survived: they were rolled back, or pruned." in page.text

    customer = Customer.objects.create(name="Ada")
    made = insert_request()
    insert_change("customers.customer", str(customer.pk), "update", {"name": "A"},
                  {"name": "Ada"}, made)  # fmt: skip
    page = admin_client.get(f"/admin/pubsubpull/request/{made}/change/")
    assert f'<a href="/admin/customers/customer/{customer.pk}/change/">{customer.pk}</a>' in (
        page.text
    )


# --- Two transactions commit out of order --------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_drain_waits_behind_an_open_transaction_then_delivers_in_commit_order(
    fast, raw_connection
):
    from pubsubpull.publisher.delivery.deliver import drain

    with Receiver() as receiver:
        subscription = make_subscription(receiver.url()).subscription
        ada = Customer.objects.create(name="Ada")
        assert drain_settled(subscription.pk) == "caught_up"

        raw_connection.execute("BEGIN")
        raw_connection.execute(
            "UPDATE customers_customer SET name = 'Ada L.' WHERE id = %s", [ada.pk]
        )
        Customer.objects.create(name="Grace")  # commits first, its txid is younger
        started = time.monotonic()
        assert drain(subscription.pk, budget=0.3) == "held_back"
        assert 0.25 < time.monotonic() - started < 2.0  # it waited, within its budget
        assert len(receiver.requests) == 1  # Grace is not sent ahead of the open update

        raw_connection.execute("COMMIT")
        assert drain_settled(subscription.pk) == "caught_up"
    names = [(c["op"], c["new"]["name"]) for c in receiver.accepted_changes()]
    assert names == [("insert", "Ada"), ("update", "Ada L."), ("insert", "Grace")]


@pytest.mark.django_db(transaction=True)
def test_a_huge_error_page_is_kept_as_an_excerpt_only(fast):
    fast.PUBSUBPULL = {**fast.PUBSUBPULL, "RESPONSE_EXCERPT": 100}
    page = b"<html>" + b"x" * 2_000_000 + b"</html>"
    with Receiver(lambda received, n: Answer(500, body=page)) as receiver:
        subscription = make_subscription(receiver.url()).subscription
        Customer.objects.create(name="Ada")
        assert drain_settled(subscription.pk) == "failed"
    [attempt] = Attempt.objects.all()
    assert attempt.status == 500 and attempt.response == "<html>" + "x" * 94
    assert len(receiver.requests) == 1


@pytest.mark.django_db(transaction=True)
def test_unsubscribing_while_a_batch_is_in_flight_records_nothing_for_it(fast):
    """The owner's DELETE lands while the receiver is still answering."""
    from django.db import connections

    record, token = create_token("billing", ["customers.customer"])

    def unsubscribe_then_answer(received, n):
        owner = Client(headers={"Authorization": f"Bearer {token}"})
        assert owner.delete(f"{BASE}subscriptions/billing/").status_code == 204
        connections.close_all()  # this thread's connection
        return Answer()

    with Receiver(unsubscribe_then_answer) as receiver:
        subscription = make_subscription(receiver.url(), owner=f"token:{record.pk}").subscription
        Customer.objects.create(name="Ada")
        assert drain_settled(subscription.pk) == "lost"
    assert len(receiver.requests) == 1
    assert not Subscription.objects.exists() and not Attempt.objects.exists()


@pytest.mark.django_db
def test_a_replay_with_neither_a_cursor_nor_a_time_asks_for_one(fast, admin_client):
    subscription = make_subscription("http://127.0.0.1:9/hook").subscription
    before = Subscription.objects.values_list("position_txid", "position_id").get()
    for extra in ({}, {"cursor": "x", "since": "2026-01-01 00:00:00"}):
        page = admin_client.post(
            "/admin/pubsubpull/subscription/",
            {"action": "replay", "_selected_action": [subscription.pk], "apply": "1", **extra},
        )
        assert page.status_code == 200 and "Give either a cursor or a time." in page.text
    assert Subscription.objects.values_list("position_txid", "position_id").get() == before


@pytest.mark.django_db(transaction=True)
def test_changes_deleted_by_hand_past_a_subscription_disable_it_saying_why(fast, caplog):
    """An operator DELETEs old changes in psql, behind a subscription that had not got them."""
    record, token = create_token("billing", ["customers.customer"])
    owner = Client(headers={"Authorization": f"Bearer {token}"})
    with Receiver() as receiver:
        subscription = make_subscription(receiver.url(), owner=f"token:{record.pk}").subscription
        Customer.objects.create(name="Ada")
        assert drain_settled(subscription.pk) == "caught_up"
        Customer.objects.create(name="Grace")
        grace = Change.objects.latest("id").pk
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM pubsubpull_change")
        Customer.objects.create(name="Edsger")
        # Nothing can be parked either: what comes next is unknown.
        path = f"{BASE}subscriptions/billing/parked/{grace}/"
        parking = put_json(owner, path, {"action": "park"})
        assert parking.status_code == 410 and parking.json()["error"] == "cursor_expired"
        assert drain_settled(subscription.pk) == "failed"
    assert len(receiver.requests) == 1  # Ada only: nothing sent with a hole in it
    disabled = Subscription.objects.get(pk=subscription.pk)
    assert disabled.state == "disabled"
    assert "pruned past this subscription's position" in disabled.state_reason
    assert "fell behind the pruned change log: disabled" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_a_user_owned_subscription_to_a_model_no_longer_published_is_sent_nothing(fast):
    """The project stopped publishing a model a user's subscription follows."""
    user = User.objects.create_superuser("ops", "ops@example.com", "pw")
    with Receiver() as receiver:
        subscription = make_subscription(receiver.url(), owner=f"user:{user.pk}").subscription
        Subscription.objects.filter(pk=subscription.pk).update(
            model_labels=["customers.customer", "retired.widget"]
        )
        Customer.objects.create(name="Ada")
        assert drain_settled(subscription.pk) == "forbidden"
    assert receiver.requests == []
    reason = Subscription.objects.get(pk=subscription.pk).state_reason
    assert "User ops may no longer read retired.widget" in reason
