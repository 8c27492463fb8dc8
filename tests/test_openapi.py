"""The served OpenAPI document is valid, true of real responses, and survives fuzzing."""

from __future__ import annotations

import decimal
import json
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis.core import NotSet

from customers.models import Contract, Country, Customer
from pubsubpull.publisher import longpoll
from pubsubpull.publisher.api.auth import create_token

from . import poison

# ledger.entry is published from the second database ("other").
pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])

# Bounded: the whole fuzz run stays within a few seconds.
EXAMPLES_PER_OPERATION = 25
POISONED_PER_OPERATION = 15


@pytest.fixture(autouse=True, scope="module")
def _close_listeners():
    yield
    longpoll.stop_listening()


@pytest.fixture
def server(live_server, settings):
    """The publisher over real HTTP, with some data, and a token for every model."""
    # Fuzzed long polls must not make the run long.
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "MAX_WAIT": 0.5}
    Country.objects.create(code="fr", name="France ✓")
    customer = Customer.objects.create(name="Ada", country_id="fr", notes="secret")
    Customer.objects.create(name="Grace")
    Contract.objects.create(customer=customer, amount=decimal.Decimal("12.50"))
    Customer.objects.filter(pk=customer.pk).update(email="ada@example.com")
    token = create_token("fuzz", ["*"])[1]
    client = httpx.Client(
        base_url=live_server.url + "/pubsubpull", headers={"Authorization": f"Bearer {token}"}
    )
    with client:
        yield client


def test_the_document_is_valid_openapi_3_1(server):
    document = server.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_the_document_describes_filters(server):
    document = server.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    grammar = schemas["Filters"]["description"]
    for word in ("where", "changed", "fields", "startswith", "isnull", "served as a delete"):
        assert word in grammar
    for path in ("/changes/", "/models/customers.customer/instances/"):
        [param] = [
            p for p in document["paths"][path]["get"]["parameters"] if p["name"] == "filters"
        ]
        assert param["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Filters"
        }
    assert "filters" in schemas["SubscriptionRequest"]["properties"]
    assert "filters" in schemas["Subscription"]["properties"]


def test_real_responses_match_the_document(server):
    schema = schemathesis.openapi.from_dict(server.get("/openapi.json").json())
    service = server.get("/").json()
    responses = [("/", server.get("/"))]
    for model in service["models"]:
        label = model["model"]
        page = server.get(model["instances"], params={"limit": 1})
        responses.append((f"/models/{label}/instances/", page))
        first = page.json()
        responses.append(("/changes/", server.get(first["changes"])))
        if first["next"]:
            responses.append((f"/models/{label}/instances/", server.get(first["next"])))
        for item in first["instances"]:
            responses.append((f"/models/{label}/instances/{{pk}}/", server.get(item["url"])))
        responses.append(
            (f"/models/{label}/instances/{{pk}}/", server.get(model["instances"] + "nothing/"))
        )
    feed_page = server.get("/changes/")
    responses += [
        ("/changes/", feed_page),
        ("/changes/", server.get(feed_page.json()["next"])),
        ("/changes/", server.get("/changes/", params={"after": "garbage"})),
        ("/changes/", server.get("/changes/", headers={"Authorization": "Bearer nope"})),
        ("/openapi.json", server.get("/openapi.json")),
    ]
    # Filtered: fewer fields, the more flag, an invalid_filter error.
    nz = json.dumps({"customers.customer": {"where": {"name": "Ada"}, "fields": ["email"]}})
    responses += [
        ("/changes/", server.get("/changes/", params={"filters": nz})),
        ("/models/customers.customer/instances/", server.get(
            "/models/customers.customer/instances/", params={"filters": nz})),
        ("/changes/", server.get("/changes/", params={"filters": '{"customers.customer": 1}'})),
    ]  # fmt: skip
    assert responses[-3][1].json()["changes"] and responses[-2][1].json()["instances"]
    assert responses[-1][1].json()["error"] == "invalid_filter"
    for path, response in responses:
        operation = schema[path]["GET"]
        # Each instances path answers with that model's exact fields schema
        # (additionalProperties: false), so this also proves nothing else leaks.
        operation.validate_response(response)
    assert {r.status_code for _, r in responses} >= {200, 400, 401, 404}


def test_fuzzing_finds_no_server_error_and_no_schema_violation(server):
    document = server.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    headers = dict(server.headers)
    base_url = str(server.base_url).rstrip("/")
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case):
            # ignored_auth re-sends without credentials, but headers= would
            # still carry the token; anonymous access is tested in test_api.
            # Cursors and page tokens are opaque strings: a random string is
            # schema-valid and still rightly a 400, so positive_data_acceptance
            # cannot hold for them.
            case.call_and_validate(
                base_url=base_url,
                headers=headers,
                excluded_checks=[
                    schemathesis.checks.ignored_auth,
                    schemathesis.checks.positive_data_acceptance,
                ],
            )

        try:
            check()
        except Exception as exc:  # collect them all, then fail with every message
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def _poisoned_request(case, data) -> tuple[str, str, bytes | None]:
    """The case as (method, path with query, body), one of its inputs poisoned."""
    targets = [("path", name) for name in case.path_parameters or {}]
    targets += [("query", name) for name in case.query or {}] + [("query", "x")]
    if not isinstance(case.body, NotSet) and data.draw(st.booleans()):
        where, name = "body", None  # half the cases of an operation that takes a body
    else:
        where, name = data.draw(st.sampled_from(targets))

    def url_value(kind: str, key: str, value) -> str:
        if (kind, key) == (where, name):
            return poison.poisoned_url_value(data, value)
        return quote(str(value), safe="")

    path = case.path
    for key, value in (case.path_parameters or {}).items():
        path = path.replace("{" + key + "}", url_value("path", key, value))
    query = dict(case.query or {})
    if where == "query":
        query.setdefault(name, "")
    pairs = []
    for key, value in query.items():
        for item in value if isinstance(value, list) else [value]:
            pairs.append(f"{quote(key, safe='')}={url_value('query', key, item)}")
    if pairs:
        path += "?" + "&".join(pairs)
    body = None
    if not isinstance(case.body, NotSet):
        poisoned = where == "body"
        body = poison.poisoned_body(data, case.body) if poisoned else json.dumps(case.body).encode()
    return case.method.upper(), path, body


def test_lone_surrogates_nuls_and_deep_nesting_in_any_input_are_4xx_json(server):
    """What schemathesis never draws (its strings are encodable text, its bodies as deep
    as the schema), put into every path parameter, query parameter and body."""
    schema = schemathesis.openapi.from_dict(server.get("/openapi.json").json())
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(), data=st.data())
        @settings(
            max_examples=POISONED_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate],  # no shrinking: the message shows the request
        )
        def check(case, data):
            method, path, body = _poisoned_request(case, data)
            headers = {"Content-Type": "application/json"} if body is not None else {}
            url = str(server.base_url).rstrip("/") + path
            answer = server.request(method, url, content=body, headers=headers)
            assert answer.status_code < 500, (method, path, body and body[:200], answer.text)
            if answer.status_code >= 400:
                assert answer.headers["Content-Type"] == "application/json", answer.text
                assert answer.json()["status"] == answer.status_code

        try:
            check()
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
