"""Nothing wedges a subscription: byte-capped batches, blocked states, parked changes.

Real receivers on 127.0.0.1 that refuse what a real one would (a body too
large, a change they cannot take); the operator's tools are the HTTP API and
the admin.
"""

from __future__ import annotations

import io
import json

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from standardwebhooks import Webhook

from customers.models import Customer
from pubsubpull.publisher.api.auth import create_token
from pubsubpull.publisher.delivery.models import Attempt, ParkedChange, Subscription

from .delivery_helpers import drain_settled, make_subscription, use_fast_settings, wait_until
from .receivers import Answer, Receiver

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fast(settings):
    return use_fast_settings(settings)


def names(changes) -> list[str]:
    return [c["new"]["name"] for c in changes]


def refusing(status, poison=lambda change: change["new"]["name"] == "poison"):
    """A receiver that answers ``status`` to any batch holding a poison change."""
    state = {"fixed": False}

    def answer(received, n):
        if not state["fixed"] and any(poison(c) for c in received.changes):
            return Answer(status, body=b'{"error": "cannot take this"}')
        return Answer()

    return answer, state


class Owner:
    """A subscriber with a real token, speaking the HTTP API."""

    def __init__(self, models=("customers.customer",)):
        self.record, self.token = create_token("billing", list(models))
        self.owner = f"token:{self.record.pk}"
        self.client = Client(headers={"Authorization": f"Bearer {self.token}"})

    def subscribe(self, callback, **fields):
        return make_subscription(callback, owner=self.owner, **fields)

    def get(self, path):
        return self.client.get(f"/pubsubpull/subscriptions/{path}")

    def put(self, path, body):
        return self.client.put(
            f"/pubsubpull/subscriptions/{path}", json.dumps(body), content_type="application/json"
        )

    def delete(self, path):
        return self.client.delete(f"/pubsubpull/subscriptions/{path}")


def test_batches_are_capped_by_bytes(fast):
    fast.PUBSUBPULL = {**fast.PUBSUBPULL, "BATCH_MAX_BYTES": 2000}
    with Receiver() as receiver:
        subscription = make_subscription(receiver.url(), batch_size=100).subscription
        Customer.objects.bulk_create(Customer(name=f"c{n:02d}" + "x" * 150) for n in range(30))
        assert drain_settled(subscription.pk) == "caught_up"
    assert all(len(r.body) <= 2000 for r in receiver.requests)
    assert all(len(r.changes) > 1 for r in receiver.requests[:-1])  # full, not one by one
    assert names(receiver.accepted_changes()) == [f"c{n:02d}" + "x" * 150 for n in range(30)]


def test_a_change_larger_than_the_cap_goes_alone(fast):
    fast.PUBSUBPULL = {**fast.PUBSUBPULL, "BATCH_MAX_BYTES": 1000}
    with Receiver() as receiver:
        subscription = make_subscription(receiver.url()).subscription
        Customer.objects.create(name="a")
        Customer.objects.create(name="b")
        big = Customer.objects.create(name="B" * 200)
        Customer.objects.filter(pk=big.pk).update(email="e" * 200 + "@example.com")
        Customer.objects.create(name="c")
        assert drain_settled(subscription.pk) == "caught_up"
    sizes = [(len(r.changes), len(r.body)) for r in receiver.requests]
    # a and b together; the large insert and the larger update each alone.
    assert [n for n, _ in sizes] == [2, 1, 1, 1]
    assert all(size <= 1000 for n, size in sizes if n > 1)
    assert sizes[2][1] > 1000
    ops = [(c["op"], c["new"]["name"][:1]) for c in receiver.accepted_changes()]
    assert ops == [("insert", "a"), ("insert", "b"), ("insert", "B"), ("update", "B"),
                   ("insert", "c")]  # fmt: skip


def test_a_413_narrows_the_batch_then_blocks_naming_the_change(fast):
    answer, receiver_state = refusing(413)
    owner = Owner()
    with Receiver(answer) as receiver:
        subscription = owner.subscribe(receiver.url(), batch_size=10).subscription
        for name in ("c0", "c1", "poison", "c3", "c4"):
            Customer.objects.create(name=name)
        poison = Customer.objects.get(name="poison")
        assert drain_settled(subscription.pk) == "failed"

        # c0 and c1 got through in a smaller batch; the poison change was
        # then sent alone, refused, and the subscription is blocked on it.
        assert names(receiver.accepted_changes()) == ["c0", "c1"]
        assert [len(r.changes) for r in receiver.requests] == [5, 2, 3, 1]
        shown = owner.get("billing/").json()
        assert shown["state"] == "blocked"
        [change_id] = shown["pending"]["changes"]
        assert Attempt.objects.get(webhook_id=shown["pending"]["webhook_id"]).status == 413
        assert f"change {change_id} (customers.customer {poison.pk})" in shown["state_reason"]
        assert f"parked/{change_id}/" in shown["state_reason"]
        assert shown["parked"] == 0

        # Blocked is not failing-until-disabled: it keeps retrying on the
        # backoff, the streak never disables it, and it stays blocked.
        fast.PUBSUBPULL = {**fast.PUBSUBPULL, "DISABLE_AFTER": 0.01}
        wait_until(lambda: drain_settled(subscription.pk) == "failed")
        assert owner.get("billing/").json()["state"] == "blocked"

        # The operator parks it; the rest goes on, in order.
        parked = owner.put(f"billing/parked/{change_id}/", {"action": "park"})
        assert parked.status_code == 201, parked.content
        body = parked.json()
        assert body["change"]["new"]["name"] == "poison" and body["resent"] is False
        assert [a["status"] for a in body["attempts"]] == [413, 413, 413]
        assert body["parked_by"] == owner.owner and "HTTP 413" in body["reason"]
        again = owner.put(f"billing/parked/{change_id}/", {"action": "park"})
        assert again.status_code == 200  # idempotent
        assert drain_settled(subscription.pk) == "caught_up"
        assert names(receiver.accepted_changes()) == ["c0", "c1", "c3", "c4"]
        shown = owner.get("billing/").json()
        assert shown["state"] == "active" and shown["pending"] is None and shown["parked"] == 1
        listed = owner.get("billing/parked/").json()["parked"]
        assert [p["change_id"] for p in listed] == [change_id]
        assert listed[0]["url"].endswith(f"/subscriptions/billing/parked/{change_id}/")

        # The receiver is fixed: the parked change is sent again, signed.
        receiver_state["fixed"] = True
        resent = owner.put(f"billing/parked/{change_id}/", {"action": "resend"})
        assert resent.status_code == 200
        assert resent.json()["resent"] is True and resent.json()["resent_status"] == 200
        last = receiver.requests[-1]
        payload = Webhook(subscription.secret).verify(last.body, last.headers)
        assert payload["data"]["parked"] is True and "cursor" not in payload["data"]
        assert [c["id"] for c in payload["data"]["changes"]] == [change_id]

        # Forgotten: gone from the list.
        assert owner.delete(f"billing/parked/{change_id}/").status_code == 204
        assert owner.get("billing/parked/").json() == {"parked": []}
        assert owner.get(f"billing/parked/{change_id}/").status_code == 404


def test_a_repeated_4xx_blocks_and_the_fixed_receiver_unblocks_it(fast):
    answer, receiver_state = refusing(422)
    with Receiver(answer) as receiver:
        subscription = make_subscription(receiver.url()).subscription
        for name in ("a", "poison", "b"):
            Customer.objects.create(name=name)

        def state():
            return Subscription.objects.get(pk=subscription.pk).state

        # The first 422 is retried as any failure; the second narrows the
        # batch to its first change, and so on until the poison is alone.
        wait_until(lambda: drain_settled(subscription.pk) and state() == "blocked")
        statuses = [(len(r.changes), r.status) for r in receiver.requests]
        assert statuses[:5] == [(3, 422), (3, 422), (1, 200), (2, 422), (2, 422)]
        assert statuses[5:] == [(1, 422), (1, 422)]
        assert names(receiver.accepted_changes()) == ["a"]

        # Fixed, it unblocks by itself at the next retry; nothing skipped.
        receiver_state["fixed"] = True
        wait_until(lambda: drain_settled(subscription.pk) == "caught_up")
        assert names(receiver.accepted_changes()) == ["a", "poison", "b"]
        assert state() == "active"


@pytest.mark.parametrize("status", [408, 429, 500])
def test_answers_that_mean_not_now_never_block(fast, status):
    answer, _ = refusing(status)
    with Receiver(answer) as receiver:
        subscription = make_subscription(receiver.url()).subscription
        Customer.objects.create(name="poison")
        wait_until(lambda: drain_settled(subscription.pk) and len(receiver.requests) >= 4)
    assert Subscription.objects.get(pk=subscription.pk).state == "failing"
    assert len({r.webhook_id for r in receiver.requests}) == 1  # the same batch, retried


def test_only_the_next_change_can_be_parked_and_bad_requests_change_nothing(fast):
    answer, _ = refusing(400)
    owner = Owner()
    with Receiver(answer) as receiver:
        subscription = owner.subscribe(receiver.url()).subscription
        Customer.objects.create(name="poison")
        Customer.objects.create(name="later")
        assert drain_settled(subscription.pk) == "failed"
        poison, later = owner.get("billing/").json()["pending"]["changes"]

        refused = owner.put(f"billing/parked/{later}/", {"action": "park"})
        assert refused.status_code == 409 and refused.json()["error"] == "not_next_change"
        assert f"that is change {poison}" in refused.json()["detail"]
        for body in ({}, {"action": "skip"}, ["park"], {"action": "park", "x": 1}):
            bad = owner.put(f"billing/parked/{poison}/", body)
            assert bad.status_code == 400 and bad.json()["error"] == "invalid_action"
        assert owner.put(f"billing/parked/{2**70}/", {"action": "park"}).status_code == 409
        assert owner.put(f"billing/parked/{poison}/", {"action": "resend"}).status_code == 404
        assert owner.get(f"billing/parked/{poison}/").status_code == 404
        assert owner.delete(f"billing/parked/{poison}/").status_code == 404
        assert owner.get("nobody/parked/").status_code == 404
        # Another caller's subscription is not there for it.
        other = Client(headers={"Authorization": f"Bearer {create_token('other', ['*'])[1]}"})
        response = other.put(
            f"/pubsubpull/subscriptions/billing/parked/{poison}/",
            json.dumps({"action": "park"}),
            content_type="application/json",
        )
        assert response.status_code == 404
        assert not ParkedChange.objects.exists()
        assert owner.get("billing/").json()["pending"]["changes"] == [poison, later]


def test_the_operator_parks_and_resends_in_the_admin(fast):
    answer, receiver_state = refusing(413)
    User.objects.create_superuser("ops", "ops@example.com", "pw")
    admin = Client()
    admin.login(username="ops", password="pw")
    with Receiver(answer) as receiver:
        subscription = make_subscription(receiver.url()).subscription
        Customer.objects.create(name="poison")
        Customer.objects.create(name="fine")
        assert drain_settled(subscription.pk) == "failed"
        subscription.refresh_from_db()
        assert subscription.state == "blocked"
        detail = admin.get(f"/admin/pubsubpull/subscription/{subscription.pk}/change/")
        assert b"blocked" in detail.content and b"0 parked" in detail.content

        # The status table and the metrics say it too.
        out = io.StringIO()
        call_command("pubsubpull_subscriptions", stdout=out)
        [row] = out.getvalue().splitlines()[1:]
        assert row.split()[2] == "blocked" and "refuses change" in row
        text = admin.get("/pubsubpull/metrics").content.decode()
        assert 'pubsubpull_subscription_pending_change{subscription="token:1/billing",' in text
        assert 'state="blocked"}' in text

        page = admin.post(
            "/admin/pubsubpull/subscription/",
            {"action": "park", "_selected_action": [subscription.pk]},
            follow=True,
        )
        assert b"parked change" in page.content
        assert drain_settled(subscription.pk) == "caught_up"
        assert names(receiver.accepted_changes()) == ["fine"]
        parked = ParkedChange.objects.get()
        assert parked.parked_by == "admin:ops" and parked.change["new"]["name"] == "poison"
        text = admin.get("/pubsubpull/metrics").content.decode()
        assert 'pubsubpull_subscription_parked_changes{subscription="token:1/billing"} 1' in text

        listing = admin.get("/admin/pubsubpull/parkedchange/")
        assert listing.status_code == 200 and str(parked.change_id).encode() in listing.content
        shown = admin.get(f"/admin/pubsubpull/parkedchange/{parked.pk}/change/")
        assert shown.status_code == 200 and b"poison" in shown.content

        # Still refused: it stays parked, the attempt is on record.
        admin.post("/admin/pubsubpull/parkedchange/",
                   {"action": "resend", "_selected_action": [parked.pk]})  # fmt: skip
        parked.refresh_from_db()
        assert parked.resent_status == 413 and not parked.resent
        receiver_state["fixed"] = True
        page = admin.post(
            "/admin/pubsubpull/parkedchange/",
            {"action": "resend", "_selected_action": [parked.pk]},
            follow=True,
        )
        assert b"acknowledged" in page.content
        parked.refresh_from_db()
        assert parked.resent
        assert names(receiver.accepted_changes()) == ["fine", "poison"]


def test_the_blocked_and_parked_responses_match_the_openapi_document(fast, live_server):
    import httpx
    import schemathesis

    answer, _ = refusing(413)
    owner = Owner()
    api = httpx.Client(
        base_url=live_server.url + "/pubsubpull",
        headers={"Authorization": f"Bearer {owner.token}"},
    )
    schema = schemathesis.openapi.from_dict(api.get("/openapi.json").json())
    with Receiver(answer) as receiver:
        subscription = owner.subscribe(receiver.url()).subscription
        Customer.objects.create(name="poison")
        assert drain_settled(subscription.pk) == "failed"
        blocked = api.get("/subscriptions/billing/")
        assert blocked.json()["state"] == "blocked" and blocked.json()["pending"]
        [change_id] = blocked.json()["pending"]["changes"]
        item = f"/subscriptions/billing/parked/{change_id}/"
        responses = [
            ("/subscriptions/{name}/", "GET", blocked),
            ("/subscriptions/", "GET", api.get("/subscriptions/")),
            ("/subscriptions/{name}/parked/{change_id}/", "PUT",
             api.put(item, json={"action": "park"})),
            ("/subscriptions/{name}/parked/{change_id}/", "PUT",
             api.put(item, json={"action": "resend"})),
            ("/subscriptions/{name}/parked/{change_id}/", "PUT",
             api.put(item, json={"action": "nonsense"})),
            ("/subscriptions/{name}/parked/{change_id}/", "PUT",
             api.put(f"/subscriptions/billing/parked/{change_id + 1}/", json={"action": "park"})),
            ("/subscriptions/{name}/parked/{change_id}/", "GET", api.get(item)),
            ("/subscriptions/{name}/parked/", "GET", api.get("/subscriptions/billing/parked/")),
            ("/subscriptions/{name}/parked/", "GET", api.get("/subscriptions/nobody/parked/")),
            ("/subscriptions/{name}/parked/{change_id}/", "DELETE", api.delete(item)),
        ]  # fmt: skip
        statuses = []
        for path, method, response in responses:
            schema[path][method].validate_response(response)
            statuses.append(response.status_code)
        assert statuses == [200, 200, 201, 200, 400, 409, 200, 200, 404, 204]
    api.close()


@pytest.mark.parametrize("status", [200, 413])
def test_parking_while_the_change_is_in_flight_loses_and_repeats_nothing(fast, status):
    from django.db import connection

    from pubsubpull.publisher.delivery import parking

    parked = {}

    def answer(received, n):
        if n == 0:
            # The operator parks the change while the worker's PUT of it is
            # in flight (this is the receiver's thread: its own connection).
            subscription = Subscription.objects.get()
            parked["change"], _ = parking.park(subscription, received.changes[0]["id"], by="ops")
            connection.close()
            return Answer(status)
        return Answer()

    with Receiver(answer) as receiver:
        subscription = make_subscription(receiver.url()).subscription
        Customer.objects.create(name="poison")
        assert drain_settled(subscription.pk) == "lost"  # its batch was forgotten meanwhile
        Customer.objects.create(name="next")
        assert drain_settled(subscription.pk) == "caught_up"
    subscription.refresh_from_db()
    # Neither the answer to the parked batch moved the position nor set a
    # state: the park did, past the parked change, and the rest followed.
    assert subscription.state == "active" and subscription.failures == 0
    assert [r.changes[0]["new"]["name"] for r in receiver.requests] == ["poison", "next"]
    assert parked["change"].change["new"]["name"] == "poison"
    assert subscription.delivered == 1
