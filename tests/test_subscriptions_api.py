"""Subscribing over HTTP: PUT, GET, DELETE /pubsubpull/subscriptions/<name>/."""

from __future__ import annotations

import json

import psycopg
import pytest
from django.test import Client
from standardwebhooks import Webhook

from customers.models import Customer
from pubsubpull.publisher import feed
from pubsubpull.publisher.api.auth import create_token
from pubsubpull.publisher.delivery.models import Subscription

from .conftest import dsn
from .delivery_helpers import drain_settled, settle, use_fast_settings
from .receivers import Receiver

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/pubsubpull/subscriptions/billing/"


class Api:
    def __init__(self, token=None):
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def put(self, body, url=URL):
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        return self.client.put(url, data, content_type="application/json", headers=self.headers)

    def get(self, url=URL):
        return self.client.get(url, headers=self.headers)

    def delete(self, url=URL):
        return self.client.delete(url, headers=self.headers)


@pytest.fixture
def billing():
    return Api(create_token("billing", ["customers.customer", "customers.address"])[1])


@pytest.fixture
def receiver(settings):
    use_fast_settings(settings)
    with Receiver() as receiver:
        yield receiver


def body(receiver, **fields):
    return {"callback": receiver.url(), "models": ["customers.customer"], **fields}


def test_subscribe_inspect_and_unsubscribe(billing, receiver):
    created = billing.put(body(receiver, start="beginning"))
    assert created.status_code == 201, created.content
    secret = created.json()["secret"]
    assert secret.startswith("whsec_")
    again = billing.put(body(receiver, start="beginning"))
    assert again.status_code == 200 and "secret" not in again.json()
    assert Subscription.objects.count() == 1

    Customer.objects.create(name="Ada")
    Customer.objects.create(name="Grace")
    state = billing.get().json()
    assert state["state"] == "active" and state["lag"]["changes"] == 2
    assert state["last_attempt"] is None and "secret" not in state

    assert drain_settled(Subscription.objects.get().pk) == "caught_up"
    [request] = receiver.requests
    Webhook(secret).verify(request.body, request.headers)
    state = billing.get().json()
    assert state["lag"] == {"changes": 0, "seconds": 0.0}
    assert state["delivered"] == 2
    assert state["last_attempt"]["status"] == 200 and state["last_attempt"]["changes"] == 2
    assert feed.Position.decode(state["position"]) >= feed.Position.decode(
        request.changes[-1]["cursor"]
    )
    listed = billing.get("/pubsubpull/subscriptions/").json()["subscriptions"]
    assert [s["name"] for s in listed] == ["billing"]

    assert billing.delete().status_code == 204
    assert billing.delete().status_code == 404
    assert billing.get().status_code == 404
    assert not Subscription.objects.exists()


def test_start_now_skips_the_past_and_a_cursor_starts_after_it(billing, receiver):
    Customer.objects.create(name="Before")
    settle()  # "now" is the fence: changes of transactions that have all ended
    assert billing.put(body(receiver)).status_code == 201  # start: now
    Customer.objects.create(name="After")
    drain_settled(Subscription.objects.get().pk)
    assert [c["new"]["name"] for c in receiver.accepted_changes()] == ["After"]

    first = feed.read_changes(None, 1, ["customers.customer"]).changes[0]
    response = billing.put(body(receiver, start=first.cursor))
    assert response.status_code == 200
    drain_settled(Subscription.objects.get().pk)
    assert [c["new"]["name"] for c in receiver.accepted_changes()][1:] == ["After"]


def test_a_long_transaction_in_another_database_does_not_move_now_back(billing, receiver):
    # Another service (or test run) on the same server holds a transaction
    # open in its own database: it cannot write to this change log, so "now"
    # must not fall back before what this database's feed already serves.
    with psycopg.connect(dsn("postgres")) as elsewhere:
        elsewhere.execute("SELECT pg_current_xact_id()")  # takes an xid, holds it
        Customer.objects.create(name="Before")
        settle()
        assert billing.put(body(receiver)).status_code == 201  # start: now
        Customer.objects.create(name="After")
        drain_settled(Subscription.objects.get().pk)
        assert [c["new"]["name"] for c in receiver.accepted_changes()] == ["After"]
        elsewhere.rollback()


def test_rotating_the_secret_returns_a_new_one_and_both_sign_for_a_while(billing, receiver):
    old = billing.put(body(receiver, start="beginning")).json()["secret"]
    rotated = billing.put({"rotate_secret": True})
    assert rotated.status_code == 200
    new = rotated.json()["secret"]
    assert new != old and rotated.json()["previous_secret_expires"]
    Customer.objects.create(name="Ada")
    drain_settled(Subscription.objects.get().pk)
    [request] = receiver.requests
    Webhook(old).verify(request.body, request.headers)
    Webhook(new).verify(request.body, request.headers)


def test_subscriptions_belong_to_their_caller(billing, receiver):
    billing.put(body(receiver))
    comms = Api(create_token("comms", ["*"])[1])
    assert comms.get().status_code == 404
    assert comms.delete().status_code == 404
    assert comms.get("/pubsubpull/subscriptions/").json() == {"subscriptions": []}
    # The same name is comms' own subscription, not billing's.
    assert comms.put(body(receiver, models=["customers.country"])).status_code == 201
    assert billing.get().json()["models"] == ["customers.customer"]
    assert Subscription.objects.count() == 2


@pytest.mark.django_db  # nothing to commit: validation only
def test_a_model_the_caller_may_not_read_is_403_and_creates_nothing(billing, receiver):
    response = billing.put(body(receiver, models=["customers.contract"]))
    assert response.status_code == 403
    assert "customers.contract" in response.json()["detail"]
    assert not Subscription.objects.exists()


@pytest.mark.django_db  # nothing to commit: validation only
def test_no_credentials_is_401(receiver):
    assert Api().put(body(receiver)).status_code == 401
    assert Api("psp_wrong").get().status_code == 401
    assert not Subscription.objects.exists()


@pytest.mark.django_db  # nothing to commit: validation only
@pytest.mark.parametrize(
    "payload, field",
    [
        ({"models": ["customers.customer"]}, "callback"),
        ({"callback": "RECEIVER"}, "models"),
        ({"callback": "RECEIVER", "models": ["customers.nothing"]}, "models"),
        ({"callback": "RECEIVER", "models": ["customers.internalnote"]}, "models"),
        ({"callback": "RECEIVER", "models": "customers.customer"}, "models"),
        ({"callback": "RECEIVER", "models": []}, "models"),
        ({"callback": "RECEIVER", "models": [1]}, "models"),
        ({"callback": 42, "models": ["customers.customer"]}, "callback"),
        ({"callback": "not a url", "models": ["customers.customer"]}, "callback"),
        ({"callback": "http://169.254.169.254/", "models": ["customers.customer"]}, "callback"),
        (
            {"callback": "RECEIVER", "models": ["customers.customer"], "batch_size": "ten"},
            "batch_size",
        ),
        ({"callback": "RECEIVER", "models": ["customers.customer"], "batch_size": 0}, "batch_size"),
        (
            {"callback": "RECEIVER", "models": ["customers.customer"], "batch_size": True},
            "batch_size",
        ),
        ({"callback": "RECEIVER", "models": ["customers.customer"], "start": "yesterday"}, "start"),
        ({"callback": "RECEIVER", "models": ["customers.customer"], "start": 5}, "start"),
        (
            {"callback": "RECEIVER", "models": ["customers.customer"], "rotate_secret": "yes"},
            "rotate_secret",
        ),
        ({"callback": "RECEIVER", "models": ["customers.customer"], "colour": "red"}, "body"),
        (["RECEIVER"], "body"),
    ],
)
def test_bad_bodies_are_400_and_create_nothing(billing, receiver, payload, field):
    text = json.dumps(payload).replace("RECEIVER", receiver.url())
    response = billing.put(text)
    assert response.status_code == 400, response.content
    error = response.json()
    assert error["error"] == "invalid_subscription"
    assert field in error["fields"], error
    assert not Subscription.objects.exists()


@pytest.mark.django_db  # nothing to commit: validation only
@pytest.mark.parametrize(
    "text, status, code",
    [
        ("{not json", 400, "invalid_json"),
        ("", 400, "invalid_json"),
        (b"\xff\xfe", 400, "invalid_json"),
        ('{"callback": "' + "a" * (1024 * 1024) + '"}', 413, "body_too_large"),
    ],
)
def test_unreadable_bodies_are_400_and_huge_ones_413(billing, text, status, code):
    response = billing.put(text)
    assert response.status_code == status
    assert response.json()["error"] == code
    assert not Subscription.objects.exists()


@pytest.mark.django_db  # nothing to commit: validation only
def test_a_bad_name_is_400_and_other_verbs_are_405(billing, receiver):
    response = billing.put(body(receiver), url="/pubsubpull/subscriptions/-bad/")
    assert response.status_code == 400 and response.json()["error"] == "invalid_name"
    response = billing.client.post(URL, headers=billing.headers)
    assert response.status_code == 405 and response.headers["Allow"] == "GET, PUT, DELETE"


def test_updating_keeps_the_position_unless_start_is_given(billing, receiver):
    billing.put(body(receiver, start="beginning"))
    Customer.objects.create(name="Ada")
    drain_settled(Subscription.objects.get().pk)
    position = billing.get().json()["position"]
    changed = billing.put(body(receiver, batch_size=7))
    assert changed.status_code == 200
    assert changed.json()["batch_size"] == 7 and changed.json()["position"] == position


@pytest.mark.django_db  # nothing to commit: validation only
@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"callback": "http://a\\u0000b/", "models": ["customers.customer"]}',
        '{"callback": "http://' + "a" * 300 + '/", "models": ["customers.customer"]}',
        '{"callback": "http://exa mple.com/", "models": ["customers.customer"]}',
        '{"callback": "http://[fe80::1%eth0]/", "models": ["customers.customer"]}',
        '{"callback": "RECEIVER", "models": ["customers.customer\\u0000"]}',
        '{"callback": "RECEIVER", "models": ["customers.customer"], "start": "\\u0000"}',
        '{"callback": "RECEIVER", "models": ["customers.customer"], "batch_size": 1e400}',
    ],
)
def test_hostile_bodies_are_400_never_500(billing, receiver, text):
    response = billing.put(text.replace("RECEIVER", receiver.url()))
    assert response.status_code == 400, response.content
    assert not Subscription.objects.exists()


def test_fuzzing_the_subscription_endpoints_finds_no_server_error(live_server, settings):
    import httpx
    import schemathesis
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings
    from schemathesis.checks import positive_data_acceptance

    use_fast_settings(settings)
    token = create_token("fuzz", ["*"])[1]
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=live_server.url + "/pubsubpull", headers=headers) as client:
        schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith("/subscriptions/"):
            continue

        @given(case=operation.as_strategy())
        @hypothesis_settings(
            max_examples=30,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case):
            case.call_and_validate(
                base_url=live_server.url + "/pubsubpull",
                headers=headers,
                # A body can match the schema and still be refused: the
                # callback must resolve to an allowed address, the models be
                # published. Everything else (no 5xx, documented statuses,
                # response schemas) is checked.
                excluded_checks=[positive_data_acceptance],
            )

        try:
            check()
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
