"""Pulling over HTTP: a billing service mirrors customers through snapshots and the feed."""

from __future__ import annotations

import decimal
import json
import threading
import time
import uuid
from urllib.parse import urlsplit

import psycopg
import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.db import connection
from django.test import Client

from customers.models import Contract, Country, Customer
from pubsubpull.models import ServiceToken
from pubsubpull.publisher import feed, longpoll
from pubsubpull.publisher.api.auth import create_token
from tests.conftest import dsn

pytestmark = pytest.mark.django_db(transaction=True)

BASE = "/pubsubpull/"


@pytest.fixture(autouse=True, scope="module")
def _close_listeners():
    yield
    longpoll.stop_listening()


@pytest.fixture
def token():
    """A service token that may read every published model."""
    return create_token("billing", ["*"])[1]


@pytest.fixture
def api(token):
    return Api(token)


class Api:
    """A Django test client that sends a bearer token and follows pages."""

    def __init__(self, token: str | None):
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, url: str, **headers):
        parts = urlsplit(url)
        path = parts.path + ("?" + parts.query if parts.query else "")
        return self.client.get(path, headers={**self.headers, **headers})

    def json(self, url: str, status: int = 200, **headers):
        response = self.get(url, **headers)
        assert response.status_code == status, response.content
        assert response["Content-Type"] == "application/json"
        return response.json()

    def snapshot(self, label: str, limit: int = 100):
        """Every instance (pk -> fields) and the feed position to follow after it."""
        page = self.json(f"{BASE}models/{label}/instances/?limit={limit}")
        position = page["feed_position"]
        copy = {}
        while True:
            copy.update({item["pk"]: item["fields"] for item in page["instances"]})
            if page["next"] is None:
                return copy, position
            page = self.json(page["next"])

    def follow(self, copy: dict, after: str, models: str, limit: int = 100) -> str:
        """Apply the feed to ``copy`` until caught up; return the cursor."""
        url = f"{BASE}changes/?models={models}&limit={limit}&after={after}"
        while True:
            page = self.json(url)
            for change in page["changes"]:
                if change["op"] == "delete":
                    copy.pop(change["pk"], None)
                else:
                    copy[change["pk"]] = change["new"]
            url = page["next"]
            if not page["changes"]:
                return page["cursor"]


def published_customers() -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, to_jsonb(c) - 'notes' FROM customers_customer AS c")
        return {pk: json.loads(fields) for pk, fields in cursor.fetchall()}


# -- The use case -------------------------------------------------------------------------


def test_snapshot_then_feed_ends_with_an_exact_copy_despite_concurrent_writes(api):
    """Rows inserted, updated and deleted half-way through the snapshot all end up right."""
    Customer.objects.bulk_create([Customer(name=f"c{i:03}", notes="secret") for i in range(30)])
    first = api.json(f"{BASE}models/customers.customer/instances/?limit=10")
    copy = {item["pk"]: item["fields"] for item in first["instances"]}
    pks = sorted(Customer.objects.values_list("pk", flat=True))

    # Another transaction is open across the whole snapshot and commits last.
    with psycopg.connect(dsn()) as slow:
        slow.execute(
            "UPDATE customers_customer SET email = 'slow@example.com' WHERE id = %s", [pks[25]]
        )
        Customer.objects.filter(pk=pks[2]).update(name="updated behind")
        Customer.objects.filter(pk=pks[20]).update(name="updated ahead")
        Customer.objects.filter(pk__in=[pks[3], pks[21]]).delete()
        Customer.objects.create(name="new at the end")
        page = api.json(first["next"])
        copy.update({item["pk"]: item["fields"] for item in page["instances"]})
        slow.commit()
    while page["next"]:
        page = api.json(page["next"])
        copy.update({item["pk"]: item["fields"] for item in page["instances"]})

    api.follow(copy, first["feed_position"], "customers.customer", limit=7)
    assert copy == published_customers()
    assert all("notes" not in fields for fields in copy.values())


def test_a_billing_service_mirrors_customers(api):
    Country.objects.create(code="fr", name="France")
    ada = Customer.objects.create(name="Ada", country_id="fr", notes="vip")
    copy, position = api.snapshot("customers.customer", limit=2)
    assert copy == published_customers()
    ada.email = "ada@example.com"
    ada.save()
    Customer.objects.create(name="Grace")
    cursor = api.follow(copy, position, "customers.customer")
    assert copy == published_customers()
    # Resume later from the stored cursor: only what is new.
    Customer.objects.filter(name="Grace").delete()
    api.follow(copy, cursor, "customers.customer")
    assert copy == published_customers()


# -- Pages --------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 2, 4, 5, 6])
def test_instance_pages_of_any_size(api, rows):
    Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(rows)])
    url = f"{BASE}models/customers.customer/instances/?limit=5"
    seen, pages = [], 0
    while url:
        response = api.get(url)
        page = response.json()
        pages += 1
        seen += [item["fields"]["name"] for item in page["instances"]]
        if page["next"]:
            assert response["Link"] == f'<{page["next"]}>; rel="next"'
        else:
            assert "Link" not in response
        url = page["next"]
    assert seen == [f"c{i}" for i in range(rows)]
    assert pages == rows // 5 + 1


def _pages(api, url: str) -> list[dict]:
    pages = [api.json(url)]
    while pages[-1]["next"]:
        pages.append(api.json(pages[-1]["next"]))
    return pages


def test_parts_split_the_snapshot_into_ranges_read_in_parallel(api):
    """A big reader asks for parts, reads each range on its own, and misses nothing."""
    Customer.objects.bulk_create([Customer(name=f"c{i}", notes="secret") for i in range(60)])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE customers_customer")
    first = api.json(f"{BASE}models/customers.customer/instances/?limit=7&parts=3")
    assert first["feed_position"]
    assert len(first["parts"]) == 2
    ranges = [[item["pk"] for page in _pages(api, first["next"]) for item in page["instances"]]]
    ranges[0][:0] = [item["pk"] for item in first["instances"]]
    # Meanwhile a row is written in the last range: the feed brings it.
    Customer.objects.create(name="late")
    for url in first["parts"]:
        pages = _pages(api, url)
        assert all("feed_position" not in page and "parts" not in page for page in pages)
        ranges.append([item["pk"] for page in pages for item in page["instances"]])
    assert all(len(r) > 5 for r in ranges)  # about a third each
    everything = [pk for r in ranges for pk in r]
    assert everything == sorted(Customer.objects.values_list("pk", flat=True))
    copy = {pk: None for pk in everything}
    api.follow(copy, first["feed_position"], "customers.customer")
    assert sorted(copy) == sorted(published_customers())


def test_parts_without_statistics_is_one_range(api):
    Country.objects.bulk_create([Country(code=f"{c}{c}", name=c) for c in "abc"])
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pg_statistic WHERE starelid = 'customers_country'::regclass")
    first = api.json(f"{BASE}models/customers.country/instances/?limit=2&parts=4")
    assert first["parts"] == []
    assert [i["pk"] for p in _pages(api, first["next"]) for i in p["instances"]] == ["cc"]


def test_instances_carry_url_and_sequence(api):
    customer = Customer.objects.create(name="Ada")
    Customer.objects.filter(pk=customer.pk).update(name="Ada L.")
    (item,) = api.json(f"{BASE}models/customers.customer/instances/")["instances"]
    last_change = feed.read_changes(None).changes[-1]
    assert item["sequence"] == last_change.sequence
    assert item["pk"] == customer.pk
    assert api.json(item["url"])["fields"] == item["fields"]


@pytest.mark.parametrize("rows", [1, 2, 4, 5, 6])
def test_feed_pages_of_any_size(api, rows):
    Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(rows)])
    url, seen = f"{BASE}changes/?limit=5", []
    while True:
        response = api.get(url)
        page = response.json()
        assert response["Link"] == f'<{page["next"]}>; rel="next"'
        seen += [c["new"]["name"] for c in page["changes"]]
        url = page["next"]
        if not page["changes"]:
            break
    assert seen == [f"c{i}" for i in range(rows)]


def test_uuid_primary_keys(api):
    customer = Customer.objects.create(name="Ada")
    contracts = [
        Contract.objects.create(
            customer=customer, amount=decimal.Decimal(f"{i}.50"), discount_reason="friend"
        )
        for i in range(5)
    ]
    copy, _ = api.snapshot("customers.contract", limit=2)
    assert sorted(copy) == sorted(str(c.pk) for c in contracts)
    first = copy[str(contracts[0].pk)]
    assert first == {
        "id": str(contracts[0].pk),
        "customer_id": customer.pk,
        "amount": 0.5,
        "currency": "EUR",
    }
    one = api.json(f"{BASE}models/customers.contract/instances/{contracts[0].pk}/")
    assert one["pk"] == str(contracts[0].pk)
    api.json(f"{BASE}models/customers.contract/instances/{uuid.uuid4()}/", 404)
    api.json(f"{BASE}models/customers.contract/instances/not-a-uuid/", 404)


def test_character_primary_keys_are_quoted_in_urls(api):
    Country.objects.create(code="a/", name="Slash")
    Country.objects.create(code="é ", name="Accent")
    Country.objects.create(code='"%', name="Quote")
    Country.objects.create(code="ok", name="Plain")
    items = api.json(f"{BASE}models/customers.country/instances/")["instances"]
    assert {item["url"].split("/")[-2] for item in items} == {"a%2F", "%C3%A9%20", "%22%25", "ok"}
    for item in items:
        one = api.json(item["url"])
        assert one["pk"] == item["pk"] and one["url"] == item["url"]


def test_unicode_and_big_values(api):
    name = 'Ada 🙂 Лавлейс 数学 \u2028 "quoted" \\ back'
    Customer.objects.create(name=name[:200])
    assert (
        api.json(f"{BASE}models/customers.customer/instances/")["instances"][0]["fields"]["name"]
        == name[:200]
    )
    # A change far bigger than any column here, as a wide table would write.
    big = "x€" * 500_000
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO pubsubpull_change (txid, model, object_pk, op, at, new) "
            "VALUES (pg_current_xact_id()::text::bigint, 'customers.customer', '999', "
            "'insert', now(), jsonb_build_object('id', 999, 'name', %s::text))",
            [big],
        )
    changes = api.json(f"{BASE}changes/")["changes"]
    assert changes[0]["new"]["name"] == name[:200]
    assert changes[1]["new"] == {"id": 999, "name": big}


def test_request_context_is_served_with_the_change(api):
    user = User.objects.create_user("ada")
    context = {"id": str(uuid.uuid4()), "method": "PUT", "path": "/customers/1/"}
    context["user_id"] = user.pk
    with psycopg.connect(dsn()) as conn:
        conn.execute("SELECT set_config('pubsubpull.context', %s, true)", [json.dumps(context)])
        conn.execute(
            "INSERT INTO customers_customer (name, email, newsletter, notes, created, updated) "
            "VALUES ('Ada', '', false, '', now(), now())"
        )
        conn.commit()
    change = api.json(f"{BASE}changes/?models=customers.customer")["changes"][0]
    assert change["request"] == {"user": user.pk, "method": "PUT", "path": "/customers/1/"}


# -- Published fields only ----------------------------------------------------------------


def test_excluded_fields_appear_nowhere(api):
    User.objects.create_user("grace", password="s3cret-password")
    customer = Customer.objects.create(name="Ada", notes="the secret note")
    Contract.objects.create(customer=customer, amount=1, discount_reason="the secret reason")
    Customer.objects.filter(pk=customer.pk).update(notes="another secret", name="Ada L.")
    bodies = [api.get(BASE).content, api.get(f"{BASE}openapi.json").content]
    for label in ["auth.user", "customers.customer", "customers.contract"]:
        page = api.json(f"{BASE}models/{label}/instances/")
        bodies.append(json.dumps(page).encode())
        bodies += [api.get(item["url"]).content for item in page["instances"]]
    bodies.append(api.get(f"{BASE}changes/").content)
    for body in bodies:
        for value in (b"the secret note", b"the secret reason", b"another secret"):
            assert value not in body
        for name in (b'"password"', b'"notes"', b'"discount_reason"'):
            assert name not in body


# -- One instance -------------------------------------------------------------------------


def test_one_instance_with_etag_and_304(api):
    customer = Customer.objects.create(name="Ada")
    url = f"{BASE}models/customers.customer/instances/{customer.pk}/"
    response = api.get(url)
    assert response.status_code == 200
    etag = response["ETag"]
    again = api.get(url, if_none_match=etag)
    assert again.status_code == 304
    assert again.content == b""
    Customer.objects.filter(pk=customer.pk).update(name="Ada L.")
    changed = api.get(url, if_none_match=etag)
    assert changed.status_code == 200
    assert changed["ETag"] != etag
    assert changed.json()["fields"]["name"] == "Ada L."


@pytest.mark.parametrize("pk", ["424242", "abc", "1.5", "99999999999999999999999", "%00"])
def test_unknown_instance_is_404(api, pk):
    body = api.json(f"{BASE}models/customers.customer/instances/{pk}/", 404)
    assert body["error"] == "unknown_instance"


# -- Errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "status", "error"),
    [
        ("models/customers.nothing/instances/", 404, "unknown_model"),
        ("models/customers.internalnote/instances/", 404, "unknown_model"),
        ("models/CUSTOMERS.CUSTOMER/instances/", 404, "unknown_model"),
        ("models/customers.customer/instances/?limit=0", 400, "invalid_limit"),
        ("models/customers.customer/instances/?limit=-1", 400, "invalid_limit"),
        ("models/customers.customer/instances/?limit=ten", 400, "invalid_limit"),
        ("models/customers.customer/instances/?limit=999999999", 400, "invalid_limit"),
        ("models/customers.customer/instances/?after=garbage", 400, "invalid_after"),
        ("models/customers.customer/instances/?after=azEuYWJj", 400, "invalid_after"),
        # k2.["1"] and k2.[1, 2]: range tokens that are not from a page.
        ("models/customers.customer/instances/?after=azIuWyIxIl0", 400, "invalid_after"),
        ("models/customers.customer/instances/?after=azIuWzEsIDJd", 400, "invalid_after"),
        ("models/customers.customer/instances/?parts=0", 400, "invalid_parts"),
        ("models/customers.customer/instances/?parts=17", 400, "invalid_parts"),
        ("models/customers.customer/instances/?parts=two", 400, "invalid_parts"),
        ("models/customers.customer/instances/?parts=2&after=azEuMQ", 400, "invalid_parts"),
        ("changes/?after=garbage", 400, "invalid_cursor"),
        ("changes/?models=customers.nothing", 400, "invalid_models"),
        ("changes/?models=,", 400, "invalid_models"),
        ("changes/?models=customers.customer,,customers.country", 400, "invalid_models"),
        ("changes/?wait=-1", 400, "invalid_wait"),
        ("changes/?wait=nan", 400, "invalid_wait"),
        ("changes/?wait=3600", 400, "invalid_wait"),
        ("changes/?limit=1.5", 400, "invalid_limit"),
    ],
)
def test_bad_input_is_a_clear_json_error(api, url, status, error):
    body = api.json(BASE + url, status)
    assert body["error"] == error
    assert body["status"] == status
    assert body["detail"]


def test_a_pruned_cursor_is_gone_and_says_to_resnapshot(api):
    Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(3)])
    page = api.json(f"{BASE}changes/?limit=1")
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pubsubpull_change WHERE new->>'name' IN ('c0', 'c1')")
    gone = api.json(f"{BASE}changes/?after={page['cursor']}", 410)
    assert gone["error"] == "cursor_expired"
    assert "snapshot" in gone["detail"]
    assert "customers.customer" in gone["snapshot"]


@pytest.mark.parametrize("method", ["post", "patch", "head", "options", "trace"])
@pytest.mark.parametrize(
    "path", ["", "openapi.json", "changes/", "models/customers.customer/instances/", "x/"]
)
def test_only_get_put_delete_are_spoken(api, method, path):
    if path == "x/":
        path = "models/customers.customer/instances/1/"
    response = getattr(api.client, method)(BASE + path, headers=api.headers)
    assert response.status_code == 405
    assert response["Allow"] == "GET"


# -- Access -------------------------------------------------------------------------------

URLS = ["", "changes/", "models/customers.customer/instances/", "openapi.json"]


@pytest.mark.parametrize("path", URLS)
def test_anonymous_callers_get_401(path):
    response = Client().get(BASE + path)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"] == "not_authenticated"


@pytest.mark.parametrize("path", URLS)
def test_a_wrong_token_gets_401_even_with_a_session(path):
    client = Client()
    client.force_login(User.objects.create_superuser("root"))
    response = client.get(BASE + path, headers={"Authorization": "Bearer psp_wrong"})
    assert response.status_code == 401


def test_a_token_reads_only_its_models():
    token = create_token("countries", ["customers.country"])[1]
    api = Api(token)
    Country.objects.create(code="fr", name="France")
    Customer.objects.create(name="Ada")
    service = api.json(BASE)
    assert [m["model"] for m in service["models"]] == ["customers.country"]
    assert api.json(f"{BASE}models/customers.country/instances/")["instances"]
    api.json(f"{BASE}models/customers.customer/instances/", 403)
    api.json(f"{BASE}models/customers.customer/instances/1/", 403)
    api.json(f"{BASE}changes/?models=customers.customer", 403)
    changes = api.json(f"{BASE}changes/")["changes"]
    assert {c["model"] for c in changes} == {"customers.country"}


def test_a_revoked_token_gets_401(token):
    call_command("pubsubpull_token", "revoke", "billing")
    assert Api(token).get(BASE).status_code == 401


def test_users_need_the_view_permission():
    user = User.objects.create_user("clerk")
    client = Client()
    client.force_login(user)
    assert client.get(f"{BASE}models/customers.customer/instances/").status_code == 403
    assert client.get(f"{BASE}changes/").status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_customer"))
    client.force_login(User.objects.get(pk=user.pk))
    assert client.get(f"{BASE}models/customers.customer/instances/").status_code == 200
    assert client.get(f"{BASE}changes/?models=customers.customer").status_code == 200
    assert client.get(f"{BASE}models/customers.country/instances/").status_code == 403


def test_the_token_command_creates_lists_and_refuses_unknown_models(capsys):
    call_command("pubsubpull_token", "create", "billing", "--models", "customers.customer")
    token = capsys.readouterr().out.strip()
    assert token.startswith("psp_")
    stored = ServiceToken.objects.get(name="billing")
    assert token not in stored.key_hash and stored.scope == ["customers.customer"]
    assert Api(token).get(f"{BASE}models/customers.customer/instances/").status_code == 200
    call_command("pubsubpull_token", "list")
    assert "billing" in capsys.readouterr().out
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="not a published model"):
        call_command("pubsubpull_token", "create", "x", "--models", "customers.internalnote")


# -- Service document and long poll -------------------------------------------------------


def test_the_service_document_links_everything(api):
    service = api.json(BASE)
    assert service["version"]
    labels = [m["model"] for m in service["models"]]
    assert labels == sorted(labels) and "customers.customer" in labels
    customer = next(m for m in service["models"] if m["model"] == "customers.customer")
    assert "notes" not in customer["fields"]
    assert api.get(customer["instances"]).status_code == 200
    assert api.get(customer["changes"]).status_code == 200
    for name in ("self", "changes", "openapi"):
        assert api.get(service["links"][name]).status_code == 200
    assert service["links"]["subscriptions"].endswith(BASE + "subscriptions/")


def test_long_poll_over_http(api):
    cursor = api.json(f"{BASE}changes/")["cursor"]
    timer = threading.Timer(0.3, lambda: Customer.objects.create(name="late"))
    timer.start()
    started = time.monotonic()
    page = api.json(f"{BASE}changes/?after={cursor}&wait=10")
    timer.join()
    assert [c["new"]["name"] for c in page["changes"]] == ["late"]
    assert time.monotonic() - started < 5


def test_anonymous_callers_read_only_the_models_the_setting_opens(settings):
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "ANONYMOUS_MODELS": ["customers.country"]}
    Country.objects.create(code="fr", name="France")
    anonymous = Api(None)
    assert [m["model"] for m in anonymous.json(BASE)["models"]] == ["customers.country"]
    assert anonymous.json(f"{BASE}models/customers.country/instances/")["instances"]
    anonymous.json(f"{BASE}models/customers.customer/instances/", 403)


def test_a_logged_in_superuser_reads_everything():
    client = Client()
    client.force_login(User.objects.create_superuser("root"))
    Customer.objects.create(name="Ada")
    assert client.get(f"{BASE}models/customers.customer/instances/").status_code == 200
    assert client.get(f"{BASE}changes/").json()["changes"]
