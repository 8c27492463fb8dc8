"""Standard Webhooks asymmetric signatures (``v1a``, ed25519) per subscription.

The publisher signs with a ``whsk_`` secret key that never leaves it; the
subscriber verifies with the ``whpk_`` public key the subscription states.
Signatures are checked here with ``cryptography`` directly, written from the
spec (not with our verifier), and the receiver is attacked over real HTTP.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from standardwebhooks import Webhook, WebhookVerificationError

import pubsubpull
from customers.models import Customer
from pubsubpull.client.models import RemoteSubscription
from pubsubpull.publisher.api.auth import create_token
from pubsubpull.publisher.delivery import signing
from pubsubpull.publisher.delivery.models import Subscription
from tests import receiver_urls

from .delivery_helpers import drain_settled, make_subscription, use_fast_settings
from .receivers import Receiver

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fast(settings):
    return use_fast_settings(settings)


def independent_verify(public_key: str, headers: dict[str, str], body: bytes) -> int:
    """How many v1a signatures of the header verify, per the spec, with ``cryptography``."""
    assert public_key.startswith("whpk_")
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key[5:]))
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    good = 0
    for part in headers["webhook-signature"].split(" "):
        version, _, value = part.partition(",")
        if version == "v1a":
            try:
                key.verify(base64.b64decode(value), content)
                good += 1
            except InvalidSignature:
                pass
    return good


def a_secret_key() -> tuple[str, str]:
    """A whsk_ / whpk_ pair made here, not by pubsubpull."""
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return (
        "whsk_" + base64.b64encode(seed + public).decode(),
        "whpk_" + base64.b64encode(public).decode(),
    )


def test_a_v1a_subscription_is_signed_with_ed25519_and_states_its_public_key():
    with Receiver() as receiver:
        subscribed = make_subscription(receiver.url(), signature="v1a")
        assert subscribed.secret is None  # the secret key never leaves the publisher
        Customer.objects.create(name="Ada")
        assert drain_settled(subscribed.subscription.pk) == "caught_up"
    subscription = Subscription.objects.get()
    assert subscription.signature == "v1a" and subscription.secret.startswith("whsk_")
    public_key = signing.public_key(subscription.secret)

    [request] = receiver.requests
    assert request.headers["webhook-signature"].startswith("v1a,")
    assert " " not in request.headers["webhook-signature"]  # v1a only: no HMAC beside it
    assert independent_verify(public_key, request.headers, request.body) == 1
    assert independent_verify(a_secret_key()[1], request.headers, request.body) == 0
    with pytest.raises(WebhookVerificationError):  # nothing a symmetric secret verifies
        Webhook(signing.new_secret()).verify(request.body, request.headers)


@pytest.fixture
def token():
    return create_token("billing", ["*"])[1]


@pytest.fixture
def api(live_server, token):
    with httpx.Client(
        base_url=f"{live_server.url}/pubsubpull/subscriptions/",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        yield client


def put(api, name="billing", **fields):
    body = {"callback": "http://127.0.0.1:9/hook/", "models": ["customers.customer"], **fields}
    return api.put(f"{name}/", json=body)


def test_a_supplied_secret_key_signs_and_only_its_public_key_is_shown(api):
    secret_key, public_key = a_secret_key()
    created = put(api, signature="v1a", signing_key=secret_key)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["signature"] == "v1a" and body["public_key"] == public_key
    assert "secret" not in body and secret_key not in created.text
    assert api.get("billing/").json()["public_key"] == public_key
    # A key of 32 bytes (the seed alone) is a key too.
    seed_only = "whsk_" + base64.b64encode(base64.b64decode(secret_key[5:])[:32]).decode()
    assert put(api, "seed", signature="v1a", signing_key=seed_only).json()["public_key"] == (
        public_key
    )


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"signature": "v1a", "signing_key": "whpk_" + "A" * 43 + "="}, "signing_key", "whpk_"),
        ({"signature": "v1a", "signing_key": signing.new_secret()}, "signing_key", "whsec_"),
        ({"signature": "v1a", "signing_key": "whsk_not base64!"}, "signing_key", "base64"),
        ({"signature": "v1a", "signing_key": "whsk_" + "A" * 40}, "signing_key", "30 bytes"),
        ({"signature": "v1a", "signing_key": 7}, "signing_key", "whsk_"),
        ({"signature": "v1", "signing_key": a_secret_key()[0]}, "signing_key", "v1a"),
        ({"signing_key": a_secret_key()[0]}, "signing_key", "v1a"),
        ({"signature": "v2"}, "signature", "v1a"),
        ({"signature": None, "format": "xml"}, "format", "cloudevents"),
    ],
)
def test_bad_key_input_is_400_naming_the_field_and_changes_nothing(api, fields, field, says):
    fields = {k: v for k, v in fields.items() if v is not None}
    answer = put(api, **fields)
    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert error["error"] == "invalid_subscription"
    assert says in error["fields"][field]
    assert not Subscription.objects.exists()


def test_a_damaged_secret_key_is_refused():
    secret_key, _ = a_secret_key()
    raw = bytearray(base64.b64decode(secret_key[5:]))
    raw[40] ^= 1  # the public half no longer matches the seed
    with pytest.raises(signing.InvalidKey, match="damaged"):
        signing.check_secret_key("whsk_" + base64.b64encode(bytes(raw)).decode())


def test_rotating_a_v1a_key_signs_with_both_for_the_grace_period(api):
    with Receiver() as receiver:
        first = put(api, signature="v1a").json()
        subscription = Subscription.objects.get()
        subscription.callback = receiver.url()
        subscription.save()
        rotated = api.put(
            "billing/", json={"models": ["customers.customer"], "rotate_secret": True}
        ).json()
        assert rotated["public_key"] != first["public_key"]
        Customer.objects.create(name="Ada")
        assert drain_settled(subscription.pk) == "caught_up"
    [request] = receiver.requests
    assert request.headers["webhook-signature"].count("v1a,") == 2
    assert independent_verify(first["public_key"], request.headers, request.body) == 1
    assert independent_verify(rotated["public_key"], request.headers, request.body) == 1


def test_switching_from_v1_to_v1a_keeps_the_hmac_for_the_grace_period(api):
    with Receiver() as receiver:
        secret = put(api, callback=receiver.url()).json()["secret"]
        switched = put(api, callback=receiver.url(), signature="v1a").json()
        Customer.objects.create(name="Ada")
        assert drain_settled(Subscription.objects.get().pk) == "caught_up"
    [request] = receiver.requests
    # Both: a receiver still on the secret and one on the public key both verify.
    Webhook(secret).verify(request.body, request.headers)
    assert independent_verify(switched["public_key"], request.headers, request.body) == 1


@pytest.fixture
def hooks(live_server, token, settings):
    """A live pubsubpull receiver subscribed with v1a at the live publisher."""
    settings.ROOT_URLCONF = receiver_urls.__name__
    receiver_urls.HANDLED.clear()
    pubsubpull.subscribe(
        f"{live_server.url}/pubsubpull/", "billing", f"{live_server.url}/hooks/fuzz/",
        models=["customers.customer"], auth=token, signature="v1a",
    )  # fmt: skip
    remote = RemoteSubscription.objects.get()
    subscription = Subscription.objects.get()
    assert remote.public_key == signing.public_key(subscription.secret) and not remote.secret
    return f"{live_server.url}/hooks/fuzz/", subscription


def test_the_receiver_verifies_v1a_notifications_from_the_worker(hooks):
    _, subscription = hooks
    Customer.objects.create(name="Ada")
    assert drain_settled(subscription.pk) == "caught_up"
    assert [e.data["name"] for e in receiver_urls.HANDLED] == ["Ada"]


def notification(webhook_id="msg_attack"):
    body = json.dumps(
        {
            "type": "pubsubpull.changes",
            "data": {
                "subscription": "billing",
                "changes": [{"model": "customers.customer", "op": "insert", "pk": 1,
                             "new": {"id": 1, "name": "Mallory"}}],
            },
        }
    ).encode()  # fmt: skip
    return body, webhook_id


def signed(secrets, body, webhook_id, at=None):
    at = at or datetime.now(UTC)
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signing.signature(secrets, webhook_id, at, body.decode()),
    }


def test_the_receiver_refuses_what_the_secret_key_did_not_sign(hooks):
    url, subscription = hooks
    body, webhook_id = notification()
    genuine = signed([subscription.secret], body, webhook_id)

    def attempt(content, headers):
        return httpx.put(url, content=content, headers=headers)

    attacks = {
        "tampered body": (body.replace(b"Mallory", b"Eve"), genuine),
        "tampered timestamp": (
            body,
            {**genuine, "webhook-timestamp": str(int(genuine["webhook-timestamp"]) + 1)},
        ),
        "tampered id": (body, {**genuine, "webhook-id": "msg_other"}),
        "another ed25519 key": (body, signed([a_secret_key()[0]], body, webhook_id)),
        # The wrong key type: an HMAC made with a whsec_ secret proves nothing
        # to a v1a subscription, even one the receiver knew once.
        "a v1 signature": (body, signed([signing.new_secret()], body, webhook_id)),
        "no signature": (body, {**genuine, "webhook-signature": ""}),
        "a garbled signature": (body, {**genuine, "webhook-signature": "v1a,%%%"}),
        "signed an hour ago": (
            body,
            signed([subscription.secret], body, webhook_id, datetime.now(UTC) - timedelta(hours=1)),
        ),
    }
    for name, (content, headers) in attacks.items():
        answer = attempt(content, headers)
        assert answer.status_code == 401, (name, answer.text)
        assert answer.json()["error"] == "invalid_signature", name
    assert receiver_urls.HANDLED == []

    assert attempt(body, genuine).status_code == 204
    assert [e.data["name"] for e in receiver_urls.HANDLED] == ["Mallory"]


def test_without_cryptography_v1a_is_refused_clearly(api, monkeypatch, live_server, token):
    # A fault we cannot cause for real here (the test extra installs it): the
    # import of cryptography's ed25519 fails as it does where it is missing.
    import sys

    from pubsubpull.exceptions import MissingDependency

    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.asymmetric", None)
    answer = put(api, signature="v1a")
    assert answer.status_code == 400
    assert "django-pubsubpull[ed25519]" in answer.json()["fields"]["signature"]
    assert put(api).status_code == 201  # v1 needs nothing more
    with pytest.raises(MissingDependency, match="cryptography"):
        pubsubpull.subscribe(
            f"{live_server.url}/pubsubpull/", "billing", "http://127.0.0.1:9/hook/",
            models=["customers.customer"], auth=token, signature="v1a",
        )  # fmt: skip
    assert Subscription.objects.get().signature == "v1"
