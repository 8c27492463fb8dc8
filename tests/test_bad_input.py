"""Bad input gets a 4xx JSON error and changes nothing: never a 500.

What an attacker or a careless client sends, over real HTTP, to the
publisher's API and to a subscriber's receiver: lone surrogates and NULs in
JSON strings and keys (PostgreSQL stores neither), bodies nested thousands
deep, bodies that are not UTF-8 or not JSON, and query strings pasted into
URLs. The fuzzing of every endpoint with the same poisons is in
test_openapi.py and test_receiver_fuzz.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from pubsubpull.client.models import ReceivedBatch, RemoteSubscription
from pubsubpull.protocol import jsonbody
from pubsubpull.publisher.api.auth import create_token
from pubsubpull.publisher.api.responses import error_response
from pubsubpull.publisher.delivery.models import Subscription

from . import poison, receiver_urls

pytestmark = pytest.mark.django_db(transaction=True)

CALLBACK = "https://93.184.215.14/hook/"  # a public address; nothing is ever sent to it
RECEIVER_EXAMPLES = 80  # bounded: a few seconds


@pytest.fixture
def api(live_server):
    token = create_token("billing", ["customers.customer", "customers.country"])[1]
    with httpx.Client(
        base_url=f"{live_server.url}/pubsubpull",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    ) as client:
        yield client


def assert_json_error(answer: httpx.Response, status: int, error: str) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    body = answer.json()
    assert body["status"] == status and body["error"] == error, body
    return body


SURROGATES_AND_NULS = [
    (rb'{"callback": "https://93.184.215.14/", "models": ["\ud800"]}', "$.models[0]"),
    (rb'{"callback": "https://93.184.215.14/\ud800", "models": ["a.b"]}', "$.callback"),
    (rb'{"callback": "https://93.184.215.14/\udfff/", "models": ["a.b"]}', "$.callback"),
    (rb'{"callback": "https://93.184.215.14/", "models": ["\u0000"]}', "$.models[0]"),
    (rb'{"callback": "https://93.184.215.14/\u0000"}', "$.callback"),
    (rb'{"\ud800": 1}', "a key in $"),
    (rb'{"start": "now\u0000"}', "$.start"),
    (rb'{"models": [{"x\u0000": 1}]}', "a key in $.models[0]"),
]


def test_a_lone_surrogate_or_a_nul_in_a_subscription_body_is_400(api):
    for body, where in SURROGATES_AND_NULS:
        answer = api.put("/subscriptions/billing/", content=body)
        error = assert_json_error(answer, 400, "invalid_json")
        assert where in error["detail"], (body, error)
        assert ("surrogate" in error["detail"]) or ("NUL" in error["detail"])
    assert not Subscription.objects.exists()


def test_a_deeply_nested_subscription_body_is_400(api):
    for depth in (65, 1_000, 100_000):
        for body in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
            answer = api.put("/subscriptions/billing/", content=body)
            error = assert_json_error(answer, 400, "invalid_json")
            assert "nested more than 64 levels" in error["detail"]
    assert not Subscription.objects.exists()


NOT_UTF8_JSON = [
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"callback": "\xed\xa0\x80"}', "not UTF-8"),  # a surrogate, encoded raw
    (b'{"batch_size": NaN}', "NaN is not JSON"),
    (b'{"batch_size": Infinity}', "Infinity is not JSON"),
    (b"{", "not JSON"),
    (b"", "not JSON"),
    (b'{"batch_size": 1' + b"0" * 5000 + b"}", "not JSON"),
]


def test_a_body_that_is_not_utf8_json_is_400(api):
    for body, detail in NOT_UTF8_JSON:
        answer = api.put("/subscriptions/billing/", content=body)
        assert detail in assert_json_error(answer, 400, "invalid_json")["detail"], body
    assert not Subscription.objects.exists()


def test_a_body_over_the_limit_is_413(api):
    body = json.dumps({"callback": CALLBACK, "models": ["customers.customer"], "x": "a" * 2**20})
    assert_json_error(api.put("/subscriptions/billing/", content=body), 413, "body_too_large")
    assert not Subscription.objects.exists()


def test_a_good_body_still_subscribes(api):
    body = {"callback": CALLBACK, "models": ["customers.customer"], "start": "beginning"}
    answer = api.put("/subscriptions/billing/", json=body)
    assert answer.status_code == 201, answer.text
    # Non-ASCII is fine, surrogate pairs included: only lone surrogates are refused.
    answer = api.put(
        "/subscriptions/billing/",
        content=rb'{"callback": "' + CALLBACK.encode() + rb'caf\u00e9/\ud83d\ude00/"}',
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["callback"] == CALLBACK + "café/😀/"


def test_the_url_of_each_subscription_leaves_out_the_query_string(api, live_server):
    body = {"callback": CALLBACK, "models": ["customers.customer"]}
    for name in ("billing", "crm"):
        assert api.put(f"/subscriptions/{name}/", json=body).status_code == 201
    listed = api.get("/subscriptions/", params={"x": "1", "y": "/../"}).json()["subscriptions"]
    base = f"{live_server.url}/pubsubpull/subscriptions/"
    assert [s["url"] for s in listed] == [f"{base}billing/", f"{base}crm/"]
    one = api.get("/subscriptions/crm/", params={"x": "1"}).json()
    assert one["url"] == f"{base}crm/"
    again = api.put("/subscriptions/crm/?x=1", json=body).json()
    assert again["url"] == f"{base}crm/"


def test_the_parser_names_what_is_wrong_and_where():
    with pytest.raises(jsonbody.InvalidJSON, match=r"\$\.a\[1\]\.b holds a lone surrogate"):
        jsonbody.loads(rb'{"a": [0, {"b": "x\udc00"}]}')
    with pytest.raises(jsonbody.InvalidJSON, match=r'\$\["odd key"\] holds a NUL'):
        jsonbody.loads(rb'{"odd key": "\u0000"}')
    with pytest.raises(jsonbody.InvalidJSON, match="nested more than 3 levels"):
        jsonbody.loads(b"[[[[]]]]", max_depth=3)
    assert jsonbody.loads(b"[[[]]]", max_depth=3) == [[[]]]
    assert jsonbody.loads(rb'"\ud83d\ude00"') == "😀"  # a pair is a character


def test_an_error_that_quotes_a_lone_surrogate_is_still_json():
    """Defence in depth: a message echoing bad input is sent escaped, not a 500."""
    response = error_response(400, "invalid_models", "not published: \ud800")
    assert response.status_code == 400
    assert json.loads(response.content)["detail"] == "not published: \ud800"


# -- the receiver -------------------------------------------------------------

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def receiver(live_server, settings):
    """A subscriber's receiver over real HTTP, with one subscription it verifies."""
    settings.ROOT_URLCONF = receiver_urls.__name__
    receiver_urls.HANDLED.clear()
    RemoteSubscription.objects.create(
        publisher="https://customers.example/pubsubpull/",
        name="users",
        callback=f"{live_server.url}/hooks/fuzz/",
        model_labels=["auth.user"],
        secret=SECRET,
    )
    with httpx.Client(base_url=f"{live_server.url}/hooks/fuzz/") as client:
        yield client


def signed(body: bytes) -> dict[str, str]:
    """Standard Webhooks headers signing ``body`` (any bytes) with the subscription's secret."""
    webhook_id = f"msg_{uuid.uuid4().hex}"
    timestamp = str(int(time.time()))
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(digest.digest()).decode(),
        "Content-Type": "application/json",
    }


def notification(**data) -> dict:
    change = {"model": "auth.user", "op": "insert", "pk": 1, "new": {"id": 1}}
    return {
        "type": "pubsubpull.changes",
        "data": {"subscription": "users", "changes": [change], **data},
    }


def test_the_receiver_answers_400_to_a_deeply_nested_body(receiver):
    for depth in (513, 1_000, 100_000):
        for body in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
            # Unsigned, and signed (a publisher cannot make it deliverable by signing it).
            for headers in ({}, signed(body.encode())):
                answer = receiver.put("", content=body, headers=headers)
                error = assert_json_error(answer, 400, "invalid_body")
                assert "nested more than 512 levels" in error["detail"]
    assert receiver_urls.HANDLED == [] and not ReceivedBatch.objects.exists()


RECEIVER_SURROGATES_AND_NULS = [
    rb'{"data": {"subscription": "users\ud800", "changes": []}}',
    rb'{"data": {"subscription": "users\u0000", "changes": []}}',
    rb'{"data": {"subscription": "users", "changes": [{"model": "a\udfff", "op": "x"}]}}',
    rb'{"data": {"subscription": "users", "changes": [], "cursor": "\u0000"}}',
    b'{"data": {"subscription": "\xed\xa0\x80"}}',
    b'{"data": {"subscription": NaN}}',
]


def test_the_receiver_answers_400_to_a_lone_surrogate_or_a_nul(receiver):
    for body in RECEIVER_SURROGATES_AND_NULS:
        for headers in ({}, signed(body)):
            answer = receiver.put("", content=body, headers=headers)
            assert_json_error(answer, 400, "invalid_body")
    assert receiver_urls.HANDLED == [] and not ReceivedBatch.objects.exists()


def test_the_receiver_answers_400_to_a_name_that_is_not_a_string(receiver):
    for name in (7, ["users"], {"name": "users"}, None):
        body = json.dumps({"data": {"subscription": name}}).encode()
        assert_json_error(receiver.put("", content=body), 400, "invalid_body")


def test_the_receiver_answers_400_to_a_signed_notification_of_the_wrong_shape(receiver):
    shapes = [[1], ["insert"], [None], [{"op": "insert"}], [{"model": "auth.user", "op": 3}], {}]
    for changes in shapes:
        body = json.dumps(notification(changes=changes)).encode()
        answer = receiver.put("", content=body, headers=signed(body))
        assert_json_error(answer, 400, "invalid_body")
    assert receiver_urls.HANDLED == [] and not ReceivedBatch.objects.exists()


def test_the_receiver_still_takes_a_good_notification(receiver):
    body = json.dumps(notification()).encode()
    answer = receiver.put("", content=body, headers=signed(body))
    assert answer.status_code == 204, answer.text
    [event] = receiver_urls.HANDLED
    assert (event.model, event.op, event.pk) == ("auth.user", "insert", 1)


def test_a_forged_page_token_with_a_lone_surrogate_a_nul_or_deep_nesting_is_400(api):
    """Page tokens are base64 of JSON: a forged one can carry what a URL cannot."""
    for raw in (
        "k2." + json.dumps(["\ud800", "zz"]),
        "k2." + json.dumps(["fr\x00", "zz"]),
        "k2." + "[" * 5000 + "]" * 5000,  # nested past Python's recursion limit
    ):
        token = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
        answer = api.get("/models/customers.country/instances/", params={"after": token})
        assert_json_error(answer, 400, "invalid_after")


# What a publisher can send: PostgreSQL stores no NUL (and UTF-8 no lone surrogate).
characters = st.characters(codec="utf-8", exclude_characters="\x00")
text = st.text(characters)
short_text = st.text(characters, max_size=20)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)

changes = st.fixed_dictionaries(
    {"model": st.sampled_from(["auth.user", "customers.customer"]), "op": short_text},
    optional={
        "pk": json_values,
        "new": json_values,
        "old": json_values,
        "cursor": short_text,
        "sequence": json_values,
    },
)

notifications = st.fixed_dictionaries(
    {
        "type": st.just("pubsubpull.changes"),
        "data": st.fixed_dictionaries(
            {"subscription": st.just("users"), "changes": st.lists(changes, max_size=3)},
            optional={"cursor": st.none() | short_text},
        ),
    }
)


def test_fuzzing_the_receiver_with_poisoned_notifications_finds_no_server_error(receiver):
    """Notifications, signed or not, with a lone surrogate, a NUL or deep nesting
    anywhere: 4xx JSON. Without poison and signed: taken (204)."""

    @given(notification=notifications, poisoned=st.booleans(), sign=st.booleans(), data=st.data())
    @hypothesis_settings(
        max_examples=RECEIVER_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],  # no shrinking: the message shows the body
    )
    def check(notification, poisoned, sign, data):
        if poisoned:  # nested past the receiver's 512 levels, or a bad string
            body = poison.poisoned_body(data, notification, depths=[513, 1_001, 20_000])
        else:
            body = poison.as_body(notification)
        headers = signed(body) if sign else {"Content-Type": "application/json"}
        answer = receiver.put("", content=body, headers=headers)
        assert answer.status_code < 500, (body[:300], answer.text)
        if poisoned or not sign:
            assert 400 <= answer.status_code < 500, (body[:300], answer.text)
            assert answer.headers["Content-Type"] == "application/json"
        else:
            assert answer.status_code == 204, (body[:300], answer.text)

    check()


# -- Filters: what an attacker puts in ?filters= and a subscription's filters ----------

FILTER_EXAMPLES = 60  # bounded: a few seconds

lookup_keys = st.sampled_from(
    ["name", "email", "id", "country", "country_id", "newsletter", "created", "notes",
     "and", "or", "not", "password", "id__gte", "name__in", "email__endswith",
     "created__lt", "newsletter__isnull", "name__regex", "'; DROP TABLE x; --", "id__"]
)  # fmt: skip
wheres = st.recursive(
    json_values,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(lookup_keys, inner, max_size=3),
    max_leaves=12,
)
filter_values = st.one_of(
    json_values,
    st.dictionaries(
        st.sampled_from(["customers.customer", "customers.country", "shop.nothing"]),
        st.one_of(
            json_values,
            st.fixed_dictionaries(
                {},
                optional={
                    "where": wheres,
                    "changed": st.lists(lookup_keys, max_size=3) | json_values,
                    "fields": st.lists(lookup_keys, max_size=3) | json_values,
                },
            ),
        ),
        max_size=2,
    ),
)


def test_fuzzing_filters_finds_no_server_error_and_changes_nothing(api):
    """Random, hostile and deep filters on the feed, the snapshot and a subscription:
    200 or 400 invalid_filter / invalid_subscription, never a 5xx."""
    before = Subscription.objects.count()

    @given(value=filter_values)
    @hypothesis_settings(
        max_examples=FILTER_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],
    )
    def check(value):
        text = json.dumps(value)
        for path in ("/changes/", "/models/customers.customer/instances/"):
            answer = api.get(path, params={"models": "customers.customer", "filters": text})
            assert answer.status_code in (200, 400), (text, answer.text)
            if answer.status_code == 400:
                assert answer.json()["error"] == "invalid_filter", answer.text
        body = {"callback": CALLBACK, "models": ["customers.customer"], "filters": value}
        answer = api.put("/subscriptions/fuzz-filters/", json=body)
        assert answer.status_code in (200, 201, 400), (text, answer.text)
        if answer.status_code == 400:
            assert answer.json()["error"] == "invalid_subscription", answer.text

    check()
    assert Subscription.objects.count() <= before + 1


@pytest.mark.parametrize(
    "text",
    [
        '{"customers.customer": {"where": {"name": "\\ud800"}}}',
        '{"customers.customer": {"where": {"\\u0000": 1}}}',
        '{"customers.customer": {"where": ' + '{"not": ' * 1000 + "1" + "}" * 1001 + "}",
        '{"customers.customer": {"where": {"id__in": [' + ",".join(["1"] * 1001) + "]}}}",
    ],
)
def test_poisoned_and_huge_filters_are_400(api, text):
    answer = api.get("/changes/", params={"models": "customers.customer", "filters": text})
    assert_json_error(answer, 400, "invalid_filter")
