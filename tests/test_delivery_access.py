"""Access ends deliveries: a subscription sends only what its owner may still read.

The tokens are made with ``manage.py pubsubpull_token`` and changed the way
an operator does (the command, the admin); the receivers are real HTTP
servers; the worker is the real one.
"""

from __future__ import annotations

import io
import json

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import Client

from customers.models import Address, Customer
from pubsubpull.publisher.delivery.deliver import drain
from pubsubpull.publisher.delivery.models import Subscription
from pubsubpull.publisher.delivery.subscriptions import subscribe

from .delivery_helpers import WorkerThread, drain_settled, settle, use_fast_settings, wait_until
from .receivers import Receiver

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fast(settings):
    use_fast_settings(settings)
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "ACCESS_RECHECK": 0.3}
    return settings


@pytest.fixture
def operator():
    User.objects.create_superuser("ops", "ops@example.com", "pw")
    client = Client()
    client.login(username="ops", password="pw")
    return client


def token(name: str, *models: str) -> str:
    out = io.StringIO()
    call_command("pubsubpull_token", "create", name, "--models", *models, stdout=out,
                 stderr=io.StringIO())  # fmt: skip
    return out.getvalue().strip()


def api(bearer: str, method: str, name: str, body=None):
    return getattr(Client(), method)(
        f"/pubsubpull/subscriptions/{name}/",
        data=json.dumps(body) if body is not None else None,
        content_type="application/json",
        headers={"Authorization": f"Bearer {bearer}"},
    )


def names(receiver) -> list[str]:
    return [c["new"].get("name") or c["new"].get("city") for c in receiver.accepted_changes()]


def state(name="billing") -> Subscription:
    return Subscription.objects.get(name=name)


def status_table() -> str:
    out = io.StringIO()
    call_command("pubsubpull_subscriptions", stdout=out)
    return out.getvalue()


def metrics(operator) -> str:
    return operator.get("/pubsubpull/metrics").content.decode()


def test_a_revoked_token_gets_nothing_more_until_it_is_reactivated(operator):
    bearer = token("billing", "customers.customer")
    with Receiver() as receiver, WorkerThread():
        created = api(bearer, "put", "billing", {"callback": receiver.url(),
                                                 "models": ["customers.customer"]})  # fmt: skip
        assert created.status_code == 201
        Customer.objects.create(name="Ada")
        receiver.wait_for(lambda: names(receiver) == ["Ada"])

        call_command("pubsubpull_token", "revoke", "billing", stdout=io.StringIO())
        Customer.objects.create(name="Grace")
        Customer.objects.create(name="Linus")
        wait_until(lambda: state().state == "forbidden")
        settle()
        subscription = state()
        assert "token 'billing' was revoked" in subscription.state_reason
        assert names(receiver) == ["Ada"]  # nothing was sent, not even a retry
        assert len(receiver.requests) == 1

        # The operator sees why: status table, metrics, admin.
        [row] = [line for line in status_table().splitlines() if line.startswith("billing")]
        assert row.split()[2] == "forbidden" and "revoked" in row
        assert 'state="forbidden"} 1' in metrics(operator)
        page = operator.get(f"/admin/pubsubpull/subscription/{subscription.pk}/change/")
        assert b"was revoked" in page.content
        # The revoked token itself is refused over HTTP.
        assert api(bearer, "get", "billing").status_code == 401

        # Reactivated in the admin: delivery resumes in order, nothing skipped.
        operator.post(
            "/admin/pubsubpull/servicetoken/",
            {"action": "reactivate", "_selected_action": [subscription.owner.split(":")[1]]},
        )
        receiver.wait_for(lambda: names(receiver) == ["Ada", "Grace", "Linus"])
        # (The receiver has answered; the worker records it a moment later.)
        wait_until(lambda: api(bearer, "get", "billing").json()["lag"]["changes"] == 0)
        shown = api(bearer, "get", "billing").json()
        assert shown["state"] == "active" and shown["state_reason"] == ""


def test_a_token_narrowed_after_subscribing_stops_the_whole_subscription(operator):
    bearer = token("billing", "customers.customer", "customers.address")
    with Receiver() as receiver:
        models = ["customers.address", "customers.customer"]
        assert api(bearer, "put", "billing", {"callback": receiver.url(), "models": models,
                                              "start": "beginning"}).status_code == 201  # fmt: skip
        ada = Customer.objects.create(name="Ada")
        assert drain_settled(state().pk) == "caught_up"
        assert names(receiver) == ["Ada"]

        # The operator takes customers.address away from the token.
        record = state().owner.split(":")[1]
        response = operator.post(
            f"/admin/pubsubpull/servicetoken/{record}/change/",
            {"name": "billing", "scope": '["customers.customer"]', "is_active": "on"},
        )
        assert response.status_code == 302
        Address.objects.create(customer=ada, line1="1 Main St", city="Paris")
        Customer.objects.create(name="Grace")
        assert drain_settled(state().pk) == "forbidden"
        reason = state().state_reason
        assert "customers.address" in reason and "customers.customer" not in reason
        assert names(receiver) == ["Ada"]  # not even the customer it may still read

        # Given back: both follow, in feed order, nothing skipped.
        operator.post(
            f"/admin/pubsubpull/servicetoken/{record}/change/",
            {"name": "billing", "scope": '["customers.customer", "customers.address"]',
             "is_active": "on"},
        )  # fmt: skip
        wait_until(lambda: drain_settled(state().pk) == "caught_up")
        assert names(receiver) == ["Ada", "Paris", "Grace"]
        assert state().state == "active"

        # Or the subscriber narrows its subscription to what it may read.
        operator.post(
            f"/admin/pubsubpull/servicetoken/{record}/change/",
            {"name": "billing", "scope": '["customers.customer"]', "is_active": "on"},
        )
        Customer.objects.create(name="Linus")
        assert drain_settled(state().pk) == "forbidden"
        narrowed = api(bearer, "put", "billing", {"models": ["customers.customer"]})
        assert narrowed.status_code == 200
        wait_until(lambda: drain_settled(state().pk) == "caught_up")
        assert names(receiver) == ["Ada", "Paris", "Grace", "Linus"]


def test_a_deleted_token_ends_deliveries_for_good():
    bearer = token("billing", "customers.customer")
    with Receiver() as receiver:
        body = {"callback": receiver.url(), "models": ["customers.customer"]}
        api(bearer, "put", "billing", body)
        call_command("pubsubpull_token", "delete", "billing", stdout=io.StringIO())
        Customer.objects.create(name="Ada")
        assert drain_settled(state().pk) == "forbidden"
        assert "was deleted" in state().state_reason
        assert receiver.requests == []


def test_a_user_deactivated_stripped_of_permission_or_deleted_gets_nothing():
    user = User.objects.create_user("comms", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="view_customer"))
    owner = f"user:{user.pk}"
    with Receiver() as receiver:
        data = {"callback": receiver.url(), "models": ["customers.customer"], "start": "beginning"}
        subscription = subscribe(owner, "comms", data).subscription
        Customer.objects.create(name="Ada")
        assert drain_settled(subscription.pk) == "caught_up"

        User.objects.filter(pk=user.pk).update(is_active=False)
        Customer.objects.create(name="Grace")
        assert drain_settled(subscription.pk) == "forbidden"
        assert "'comms'" in state("comms").state_reason
        assert "inactive" in state("comms").state_reason
        assert drain(subscription.pk) == "busy"  # rechecked after ACCESS_RECHECK only

        User.objects.filter(pk=user.pk).update(is_active=True)
        wait_until(lambda: drain_settled(subscription.pk) == "caught_up")
        assert names(receiver) == ["Ada", "Grace"]

        user.user_permissions.clear()
        Customer.objects.create(name="Linus")
        assert drain_settled(subscription.pk) == "forbidden"
        assert "may no longer read customers.customer" in state("comms").state_reason

        user.delete()
        wait_until(lambda: drain_settled(subscription.pk) == "forbidden"
                   and "was deleted" in state("comms").state_reason)  # fmt: skip
        assert names(receiver) == ["Ada", "Grace"]


def test_a_subscription_without_backlog_says_so_when_access_returns(operator):
    bearer = token("billing", "customers.customer")
    with Receiver() as receiver, WorkerThread():
        body = {"callback": receiver.url(), "models": ["customers.customer"]}
        api(bearer, "put", "billing", body)
        call_command("pubsubpull_token", "revoke", "billing", stdout=io.StringIO())
        Customer.objects.create(name="Ada")
        wait_until(lambda: state().state == "forbidden")
        operator.post(
            "/admin/pubsubpull/servicetoken/",
            {"action": "reactivate", "_selected_action": [state().owner.split(":")[1]]},
        )
        # The sweep checks a forbidden subscription again, backlog or not.
        wait_until(lambda: state().state == "active")
        receiver.wait_for(lambda: names(receiver) == ["Ada"])
