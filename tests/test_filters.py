"""Filters: a reader asks for some rows of a model, some of its changes, some of its fields.

The grammar (pubsubpull.protocol.filters) and its SQL (pubsubpull.publisher.feed),
evaluated by PostgreSQL on real rows of the change log.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest
from django.db import connection

from customers.models import Contract, Country, Customer
from pubsubpull import get_registration
from pubsubpull.exceptions import InvalidFilter
from pubsubpull.models import Change
from pubsubpull.protocol import filters
from pubsubpull.publisher import feed

from . import services
from .services import wait_until

billing_service, billing = services.billing_service, services.billing  # the fixtures

CUSTOMER = "customers.customer"
CONTRACT = "customers.contract"


def parse(where=None, label=CUSTOMER, **spec):
    if where is not None:
        spec["where"] = where
    return feed.parse_filters({label: spec}, [label])


def read(where=None, label=CUSTOMER, after=None, limit=100, **spec):
    return feed.read_changes(after, limit, [label], filters=parse(where, label, **spec))


def served(where=None, label=CUSTOMER, **spec):
    """(op, name) of every change the filter serves, in feed order."""
    page = read(where, label, **spec)
    return [(c.op, (c.new or c.old).get("name")) for c in page.changes]


def error(data, models=(CUSTOMER,)) -> InvalidFilter:
    with pytest.raises(InvalidFilter) as caught:
        feed.parse_filters(data, list(models))
    return caught.value


# -- The grammar -------------------------------------------------------------------


def test_a_where_parses_into_a_tree_and_back_to_its_canonical_json():
    where = {"country": "NZ", "or": [{"id__gte": 10}, {"not": {"email__endswith": "@x.org"}}]}
    model_filter = parse(where)[CUSTOMER]
    # A foreign key is named by its field or its column; the canonical form is the column.
    assert model_filter.as_json() == {
        "where": {
            "and": [
                {"country_id": "NZ"},
                {"or": [{"id__gte": 10}, {"not": {"email__endswith": "@x.org"}}]},
            ]
        }
    }
    again = feed.parse_filters({CUSTOMER: model_filter.as_json()}, [CUSTOMER])
    assert again[CUSTOMER] == model_filter


def test_fields_always_keep_the_primary_key_and_an_empty_filter_is_none():
    assert parse(fields=["email"])[CUSTOMER].fields == ("id", "email")
    assert feed.parse_filters({CUSTOMER: {}}, [CUSTOMER]) == {}
    assert feed.parse_filters(None, [CUSTOMER]) == {}


W = "filters.customers.customer.where."  # where a where's errors are
F = "filters.customers.customer."


@pytest.mark.parametrize(
    ("data", "field", "says"),
    [
        ({"nope": 1}, W + "nope", "not a published"),
        ({"notes": "x"}, W + "notes", "not a published"),  # excluded from publishing
        ({"name__like": "x"}, W + "name__like", "not a lookup"),
        ({"newsletter__gt": True}, W + "newsletter__gt", "does not apply"),
        ({"id__gte": "x"}, W + "id__gte", "must be a number"),
        ({"id__gte": True}, W + "id__gte", "must be a number"),
        ({"name": 3}, W + "name", "must be a string"),
        ({"created__gt": "yesterday"}, W + "created__gt", "ISO 8601"),
        ({"name__isnull": "yes"}, W + "name__isnull", "true or false"),
        ({"id__in": []}, W + "id__in", "list of 1 to"),
        ({"id__in": list(range(1001))}, W + "id__in", "list of 1 to"),
        ({"id__in": [1, "2"]}, W + "id__in[1]", "must be a number"),
        ({"or": {"id": 1}}, W + "or", "non-empty list"),
        ({"and": []}, W + "and", "non-empty list"),
        ({"not": []}, W + "not", "non-empty object"),
        ({"name": "a\x00b"}, W + "name", "NUL"),
        ({"name": "x" * 1001}, W + "name", "at most"),
        # SQL in names and values: only ever a name that is not published, or a value.
        ({"name'); DROP TABLE customers_customer; --": 1},
         W + "name'); DROP TABLE customers_customer; --", "not a published"),
        ({"id__gte": "1; DROP TABLE customers_customer"}, W + "id__gte", "must be a number"),
    ],
)  # fmt: skip
def test_bad_wheres_name_the_field_and_say_what_is_wrong(data, field, says):
    caught = error({CUSTOMER: {"where": data}})
    assert (caught.field, says in caught.message) == (field, True), caught


@pytest.mark.parametrize(
    ("data", "field", "says"),
    [
        ({CUSTOMER: {"where": {}}}, F + "where", "non-empty object"),
        ({CUSTOMER: {"where": ["id", 1]}}, F + "where", "non-empty object"),
        ({CUSTOMER: {"changed": []}}, F + "changed", "non-empty list"),
        ({CUSTOMER: {"changed": ["notes"]}}, F + "changed[0]", "not a published"),
        ({CUSTOMER: {"fields": ["id", "password"]}}, F + "fields[1]", "not a published"),
        ({CUSTOMER: {"select": ["id"]}}, F + "select", "not a filter key"),
        ({CUSTOMER: "country=NZ"}, "filters.customers.customer", "must be an object"),
        ({CONTRACT: {"where": {"amount": 1}}}, "filters.customers.contract", "not a model read"),
        (["x"], "filters", "must be an object"),
    ],
)
def test_bad_filters_name_the_field_and_say_what_is_wrong(data, field, says):
    caught = error(data)
    assert caught.field == field
    assert says in caught.message


def test_deep_nesting_and_too_many_lookups_are_refused():
    where: dict = {"id": 1}
    for _ in range(filters.MAX_DEPTH + 1):
        where = {"not": where}
    assert "levels deep" in error({CUSTOMER: {"where": where}}).message
    many = {"or": [{"id": n} for n in range(filters.MAX_TERMS + 1)]}
    assert "at most" in error({CUSTOMER: {"where": many}}).message


def test_build_puts_keyword_filters_on_the_one_model():
    assert filters.build([CUSTOMER], where={"country": "NZ"}, fields=("email",)) == {
        CUSTOMER: {"where": {"country": "NZ"}, "fields": ["email"]}
    }
    with pytest.raises(InvalidFilter):
        filters.build([CUSTOMER, CONTRACT], where={"country": "NZ"})
    assert filters.build([CUSTOMER, CONTRACT], filters={CONTRACT: {"fields": ["amount"]}}) == {
        CONTRACT: {"fields": ["amount"]}
    }


# -- Evaluated by PostgreSQL --------------------------------------------------------


@pytest.fixture
def people(transactional_db):
    nz, au = (
        Country.objects.create(code="NZ", name="NZ"),
        Country.objects.create(code="AU", name="AU"),
    )
    made = {
        "ann": Customer.objects.create(
            name="ann", email="ann@example.com", country=nz, newsletter=True
        ),
        "bob": Customer.objects.create(name="bob", email="bob@other.org", country=au),
        "cy": Customer.objects.create(name="cy", email="", country=None),
        "Dee": Customer.objects.create(name="Dee", email="dee@example.com", country=nz),
    }
    return made


@pytest.mark.parametrize(
    ("where", "names"),
    [
        ({"name": "ann"}, ["ann"]),
        ({"name__exact": "bob"}, ["bob"]),
        ({"country": "NZ"}, ["ann", "Dee"]),
        ({"country_id__in": ["NZ", "AU"]}, ["ann", "bob", "Dee"]),
        ({"country": None}, ["cy"]),
        ({"country__isnull": True}, ["cy"]),
        ({"country__isnull": False}, ["ann", "bob", "Dee"]),
        ({"email__endswith": "@example.com"}, ["ann", "Dee"]),
        ({"email__startswith": "bob"}, ["bob"]),
        ({"email__contains": "other"}, ["bob"]),
        ({"email__contains": "%"}, []),  # no LIKE: % and _ are characters
        ({"email__endswith": ""}, ["ann", "bob", "cy", "Dee"]),
        ({"name__gt": "b"}, ["bob", "cy"]),  # strings compare as strings ("Dee" < "b")
        ({"name__lte": "bob"}, ["ann", "bob", "Dee"]),
        ({"newsletter": True}, ["ann"]),
        ({"newsletter__in": [False]}, ["bob", "cy", "Dee"]),
        ({"not": {"country": "NZ"}}, ["bob", "cy"]),  # cy's null country is not NZ
        ({"or": [{"name": "ann"}, {"country": "AU"}]}, ["ann", "bob"]),
        ({"and": [{"country": "NZ"}, {"newsletter": False}]}, ["Dee"]),
        ({"created__gte": "2000-01-01T00:00:00+00:00"}, ["ann", "bob", "cy", "Dee"]),
        ({"created__lt": "2000-01-01"}, []),
    ],
)
def test_every_lookup_on_real_rows(people, where, names):
    assert [name for _, name in served(where)] == names


def test_numbers_compare_as_numbers(people, transactional_db):
    ids = sorted(c.id for c in people.values())
    assert [c.new["id"] for c in read({"id__gte": ids[2]}).changes] == ids[2:]
    assert [c.new["id"] for c in read({"id__lt": ids[1] + 0.5}).changes] == ids[:2]
    assert [c.new["id"] for c in read({"id__in": [ids[3], 10**30]}).changes] == [ids[3]]
    Contract.objects.create(customer=people["ann"], amount=Decimal("9.50"))
    Contract.objects.create(customer=people["ann"], amount=Decimal("10.25"))
    Contract.objects.create(customer=people["bob"], amount=Decimal("100"))
    # As text "9.50" > "10.25" > "100"; as numbers 9.5 < 10 < 10.25 < 100.
    amounts = [c.new["amount"] for c in read({"amount__gte": 10}, CONTRACT).changes]
    assert amounts == [10.25, 100]
    amounts = [c.new["amount"] for c in read({"customer": people["bob"].id}, CONTRACT).changes]
    assert amounts == [100]


def test_updates_moving_in_and_out_of_the_filter(people):
    nz = {"country": "NZ"}
    start = feed.read_changes(None, 100, [CUSTOMER]).next
    bob, ann = people["bob"], people["ann"]
    bob.country_id = "NZ"
    bob.save()  # moves in: an update, which a mirror upserts
    ann.country_id = "AU"
    ann.save()  # moves out: served as a delete of its old row
    Customer.objects.filter(pk=people["cy"].pk).update(name="cyrus")  # never in: nothing
    people["Dee"].delete()  # a delete is judged on the old row
    bob.delete()
    page = read(nz, after=start)
    assert [(c.op, (c.new or c.old)["name"]) for c in page.changes] == [
        ("update", "bob"),
        ("delete", "ann"),
        ("delete", "Dee"),
        ("delete", "bob"),
    ]
    moved_out = page.changes[1]
    assert moved_out.new is None and moved_out.old["country_id"] == "NZ"
    assert moved_out.as_json()["op"] == "delete" and moved_out.as_json()["new"] is None


def test_changed_serves_updates_of_those_fields_only(people):
    start = feed.read_changes(None, 100, [CUSTOMER]).next
    Customer.objects.filter(pk=people["ann"].pk).update(newsletter=False)
    Customer.objects.filter(pk=people["bob"].pk).update(email="bob@new.org")
    page = read(after=start, changed=["email"])
    assert [(c.op, c.new["name"]) for c in page.changes] == [("update", "bob")]
    # Inserts and deletes are not updates: they are served.
    people["cy"].delete()
    assert [c.op for c in read(after=page.next, changed=["email"]).changes] == ["delete"]


def test_changed_does_not_hide_a_move_out_of_the_where(people):
    start = feed.read_changes(None, 100, [CUSTOMER]).next
    Customer.objects.filter(pk=people["ann"].pk).update(country="AU")
    page = read({"country": "NZ"}, after=start, changed=["email"])
    assert [(c.op, c.old["name"]) for c in page.changes] == [("delete", "ann")]


def test_fields_serve_only_those_fields(people):
    page = read({"name": "ann"}, fields=["email"])
    assert [c.new for c in page.changes] == [{"id": people["ann"].id, "email": "ann@example.com"}]
    # As the wire carries it, rendered by PostgreSQL.
    [item] = json.loads(page.changes_json_bytes())
    assert item["new"] == {"id": people["ann"].id, "email": "ann@example.com"}


def test_a_filtered_page_moves_past_what_it_skips_within_its_scan(people, settings):
    """FILTER_SCAN changes (of any model) looked at per page, at most; next moves past them."""
    settings.PUBSUBPULL = {"FILTER_SCAN": 2}  # (or the limit, if larger)
    every = feed.read_changes(None, 100).changes  # 2 countries, 4 customers
    after, pages = None, []
    while True:
        page = read({"name": "Dee"}, after=after, limit=1)
        pages.append(([c.new["name"] for c in page.changes], bool(page.more)))
        if page.caught_up:
            break
        assert page.next > (after or feed.START)
        after = page.next
    assert pages == [([], True), ([], True), (["Dee"], False), ([], False)]
    # The first two pages moved past two changes each.
    first = read({"name": "Dee"}, limit=1)
    assert first.next == every[1].position
    assert read({"name": "Dee"}, after=first.next, limit=1).next == every[3].position


def test_the_scan_end_is_served_when_it_matches(people, settings):
    settings.PUBSUBPULL = {"FILTER_SCAN": 4}
    page = read({"name": "bob"}, limit=2)  # countries, ann, bob: bob is the 4th
    assert [c.new["name"] for c in page.changes] == ["bob"] and page.more
    following = read({"name": "bob"}, after=page.next, limit=2)
    assert following.changes == [] and not following.more


def test_values_are_bound_never_interpolated(people):
    hostile = "x'; DROP TABLE customers_customer; --"
    assert served({"name": hostile}) == []
    assert served({"email__contains": "'"}) == []
    assert served({"name__in": [hostile, "ann"]}) == [("insert", "ann")]
    assert Customer.objects.count() == 4


def test_a_filtered_page_read_stays_on_the_txid_id_index_range(transactional_db):
    """Many changes of other models: the filtered page walks the feed index in order."""
    country = Country.objects.create(code="NZ", name="NZ")
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO customers_address (customer_id, line1, city, postcode) "
            "SELECT %s, 'l', 'c', '' FROM generate_series(1, 3000)",
            [Customer.objects.create(name="x", country=country).pk],
        )
        cursor.execute("ANALYZE pubsubpull_change")
    params: dict = {"txid": 0, "id": 0, "models": [CUSTOMER, "customers.address"], "limit": 100}
    params["scan"] = 10000
    chosen = feed.parse_filters(
        {"customers.address": {"where": {"city": "nowhere"}}}, params["models"]
    )
    registrations = {label: get_registration(label) for label in params["models"]}
    sql = feed.page_sql(registrations, chosen, params)
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    # The page's rows: one range of the feed index, cut at the scan's end.
    page = plan[plan.index("CTE Scan on scan_end") :]
    assert "pubsubpull_change_feed" in page, plan  # an index scan or a bitmap of it
    # The start and the scan's end are the bounds' and scan_end's values
    # (InitPlan parameters), so the range is the index condition.
    assert re.search(r"Index Cond: \(\(ROW\(txid, id\) > ROW\(\$\d+, \$\d+\)\) AND ", page), plan
    assert re.search(r"\(ROW\(txid, id\) <= ROW\(\$\d+, \$\d+\)\)", page), plan
    # The scan's end: a walk of the same index.
    end = plan[plan.index("CTE scan_end") : plan.index("CTE Scan on scan_end")]
    assert "on pubsubpull_change_feed" in end, plan


# -- A filtered mirror through the real two services ---------------------------------


def published_in_nz() -> dict[int, tuple]:
    return {c.pk: (c.name, c.country_id) for c in Customer.objects.filter(country_id="NZ")}


def mirrored(billing) -> dict[int, tuple]:
    rows = billing.sql("SELECT remote_id, name, country FROM billing_customercountry")
    return {r[0]: (r[1], r[2]) for r in rows}


def move_rows_in_and_out(nz, au):
    """Rows move into the filter, out of it, stay out, get deleted in and out of it."""
    people = list(Customer.objects.order_by("pk"))
    Customer.objects.filter(pk__in=[c.pk for c in people[:6]]).update(country=au)  # out
    Customer.objects.filter(pk__in=[c.pk for c in people[10:16]]).update(country=nz)  # in
    Customer.objects.filter(pk=people[7].pk).update(name="renamed in NZ")
    Customer.objects.filter(pk=people[12].pk).update(name="renamed after moving in")
    Customer.objects.filter(pk=people[0].pk).update(country=nz)  # out and back in
    Customer.objects.filter(pk__in=[people[8].pk, people[16].pk]).delete()  # in, and out
    Customer.objects.create(name="new in NZ", country=nz)
    Customer.objects.create(name="new in AU", country=au)
    Customer.objects.bulk_create(Customer(name=f"later{i}", country=au) for i in range(5))


@pytest.fixture
def two_countries(transactional_db):
    nz = Country.objects.create(code="NZ", name="New Zealand")
    au = Country.objects.create(code="AU", name="Australia")
    Customer.objects.bulk_create(
        Customer(name=f"c{i}", country=nz if i < 10 else au) for i in range(20)
    )
    return nz, au


@pytest.mark.slow
def test_a_filtered_mirror_by_pull_converges_to_the_filtered_rows(billing, two_countries):
    billing.overrides["PULL_PAGE_SIZE"] = 3  # snapshot and feed pages of a few rows
    billing.start_worker()
    billing.shell("from billing.mirrors import nz_customers; nz_customers.pull()")
    wait_until(lambda: mirrored(billing) == published_in_nz(), timeout=60)
    assert len(mirrored(billing)) == 10  # the snapshot was filtered too

    move_rows_in_and_out(*two_countries)
    wait_until(lambda: mirrored(billing) == published_in_nz(), timeout=60)
    [(filters,)] = billing.sql("SELECT filters FROM pubsubpull_pullcursor WHERE name = 'mirror:nz'")
    assert filters == {
        "customers.customer": {"where": {"country": "NZ"}, "fields": ["name", "country"]}
    }


@pytest.mark.slow
def test_a_filtered_mirror_by_push_converges_and_its_subscription_sends_only_matches(
    billing, two_countries, settings
):
    from django.utils import timezone

    from pubsubpull.publisher.delivery.models import Attempt, Subscription
    from tests.delivery_helpers import WorkerThread, use_fast_settings

    use_fast_settings(settings)
    billing.start_server()
    billing.shell(
        "from billing.mirrors import nz_customers; "
        f"nz_customers.subscribe('{billing.url}/hooks/nz/')"
    )
    assert mirrored(billing) == published_in_nz()
    subscription = Subscription.objects.get()
    assert subscription.filters == {
        "customers.customer": {
            "where": {"country_id": "NZ"},
            "fields": ["id", "name", "country_id"],
        }
    }
    with WorkerThread():
        move_rows_in_and_out(*two_countries)
        wait_until(lambda: mirrored(billing) == published_in_nz(), timeout=60)
        # The position advances over the changes the filter skips: past the
        # last one (five customers in Australia).
        last = Change.objects.order_by("txid", "id").last()
        assert last.new["name"] == "later4"
        head = feed.Position(last.txid, last.id)
        wait_until(
            lambda: feed.Position(*Subscription.objects.values_list(
                "position_txid", "position_id").get()) >= head
        )  # fmt: skip
    acknowledged = Attempt.objects.filter(status__gte=200, status__lt=300)
    sent = sum(acknowledged.values_list("changes", flat=True))
    # Of the 24 changes: 6 moving out (sent as deletes), 6 moving in, 2 renames
    # in NZ, 1 back in, 1 of the 2 deletes, 1 of the 2 new customers: 17.
    assert sent == 17, list(Attempt.objects.values_list("status", "changes"))
    assert Subscription.objects.get().next_attempt_at <= timezone.now()


# -- Over HTTP: the feed, the snapshot, subscriptions --------------------------------


@pytest.fixture
def http(live_server):
    import httpx

    from pubsubpull.publisher.api.auth import create_token

    token = create_token("billing", ["*"])[1]
    with httpx.Client(
        base_url=f"{live_server.url}/pubsubpull",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ) as client:
        yield client


def filters_param(data) -> dict:
    return {"filters": json.dumps(data)}


def test_the_feed_serves_what_the_filters_ask_for_and_its_links_keep_them(http, people):
    asked = {CUSTOMER: {"where": {"email__endswith": "@example.com"}, "fields": ["name"]}}
    answer = http.get("/changes/", params={"models": CUSTOMER, **filters_param(asked)})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [c["new"] for c in body["changes"]] == [
        {"id": people["ann"].pk, "name": "ann"},
        {"id": people["Dee"].pk, "name": "Dee"},
    ]
    assert "filters=" in body["next"] and "more" not in body
    following = http.get(body["next"]).json()  # the filters follow the link
    assert following["changes"] == []
    Customer.objects.create(name="eve", email="eve@example.com")
    Customer.objects.create(name="fay", email="fay@other.org")
    assert [c["new"]["name"] for c in http.get(body["next"]).json()["changes"]] == ["eve"]


def test_a_feed_page_that_stops_at_its_scan_bound_says_more(http, people, settings):
    settings.PUBSUBPULL = {"FILTER_SCAN": 2}
    asked = {CUSTOMER: {"where": {"name": "Dee"}}}
    body = http.get(
        "/changes/", params={"models": CUSTOMER, "limit": 1, **filters_param(asked)}
    ).json()
    assert body["changes"] == [] and body["more"] is True


def test_a_filtered_long_poll_waits_for_a_matching_change(http, people):
    asked = filters_param({CUSTOMER: {"where": {"name": "zed"}}})
    cursor = http.get("/changes/", params={"models": CUSTOMER, **asked}).json()["cursor"]
    import threading
    import time

    def later():
        time.sleep(0.5)
        Customer.objects.create(name="not zed")  # wakes the poll, skipped
        time.sleep(0.5)
        Customer.objects.create(name="zed")

    writer = threading.Thread(target=later)
    writer.start()
    started = time.monotonic()
    body = http.get(
        "/changes/", params={"models": CUSTOMER, "after": cursor, "wait": 20, **asked}
    ).json()
    writer.join()
    assert [c["new"]["name"] for c in body["changes"]] == ["zed"]
    assert 0.9 < time.monotonic() - started < 15


def test_the_snapshot_applies_where_and_fields_and_hands_them_to_the_feed(http, people):
    asked = filters_param({CUSTOMER: {"where": {"country": "NZ"}, "fields": ["email"]}})
    body = http.get(f"/models/{CUSTOMER}/instances/", params={"limit": 1, **asked}).json()
    assert [i["fields"] for i in body["instances"]] == [
        {"id": people["ann"].pk, "email": "ann@example.com"}
    ]
    assert "filters=" in body["next"] and "filters=" in body["changes"]
    rest = http.get(body["next"]).json()
    assert [i["fields"]["email"] for i in rest["instances"]] == ["dee@example.com"]


@pytest.mark.parametrize(
    ("filters_text", "field"),
    [
        ('{"customers.customer": {"where": {"score__gte": "x"}}}',
         "filters.customers.customer.where.score__gte"),
        ('{"customers.customer": {"where": {"id__gte": "x"}}}',
         "filters.customers.customer.where.id__gte"),
        ('{"customers.customer": {"where": {"name__regex": ".*"}}}',
         "filters.customers.customer.where.name__regex"),
        ('{"customers.customer": {"where": {"notes": "x"}}}',
         "filters.customers.customer.where.notes"),
        ('{"customers.customer": {"fields": ["id\'; --"]}}',
         "filters.customers.customer.fields[0]"),
        ('{"customers.contract": {"where": {"amount": 1}}}', "filters.customers.contract"),
        ("not json", "filters"),
        ('{"customers.customer": {"where": {"name": "\\u0000"}}}', "filters"),
        ("[" * 100 + "]" * 100, "filters"),
        ("x" * 20001, "filters"),
    ],
)  # fmt: skip
def test_bad_filters_on_the_feed_are_400_naming_the_field(http, people, filters_text, field):
    answer = http.get("/changes/", params={"models": CUSTOMER, "filters": filters_text})
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["error"] == "invalid_filter" and field in body["fields"], body
    answer = http.get(f"/models/{CUSTOMER}/instances/", params={"filters": filters_text})
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_filter"


def test_a_subscription_stores_its_filters_shows_them_and_refuses_bad_ones(http, people):
    url = "/subscriptions/nz/"
    body = {
        "callback": "https://93.184.215.14/hook/",
        "models": [CUSTOMER],
        "filters": {CUSTOMER: {"where": {"country": "NZ"}, "changed": ["email"]}},
    }
    answer = http.put(url, json=body)
    assert answer.status_code == 201, answer.text
    stored = {CUSTOMER: {"where": {"country_id": "NZ"}, "changed": ["email"]}}
    assert answer.json()["filters"] == stored
    assert http.get(url).json()["filters"] == stored

    bad = {**body, "filters": {CUSTOMER: {"where": {"id__gt": "1 OR 1=1"}}}}
    answer = http.put(url, json=bad)
    assert answer.status_code == 400
    assert answer.json()["fields"] == {
        "filters.customers.customer.where.id__gt": 'must be a number, not "1 OR 1=1"'
    }
    assert http.get(url).json()["filters"] == stored  # nothing changed
    # Models changed without filters: the kept filters must still fit.
    answer = http.put(url, json={"models": ["customers.country"]})
    assert answer.status_code == 400 and "filters.customers.customer" in answer.json()["fields"]
    # Filters null: no filters.
    assert http.put(url, json={"filters": None}).json()["filters"] == {}


def test_a_filtered_subscription_delivers_only_matching_changes_and_moves_past_the_rest(
    people, settings
):
    """A scan bound of 3 and batches of 2: several reads deliver the matches, in order."""
    from pubsubpull.publisher.delivery.deliver import drain
    from pubsubpull.publisher.delivery.models import Subscription
    from tests.delivery_helpers import make_subscription, use_fast_settings
    from tests.receivers import Receiver

    use_fast_settings(settings)
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "FILTER_SCAN": 3}
    Customer.objects.bulk_create(
        Customer(name=f"x{i}", email="x@example.com" if i % 4 == 0 else "") for i in range(20)
    )
    with Receiver() as receiver:
        make_subscription(
            receiver.url(),
            batch_size=2,
            filters={CUSTOMER: {"where": {"email__endswith": "@example.com"}, "fields": ["name"]}},
        )
        assert drain(Subscription.objects.get().pk) == "caught_up"
        names = [c["new"]["name"] for c in receiver.accepted_changes()]
        assert names == ["ann", "Dee", "x0", "x4", "x8", "x12", "x16"]
        assert all(len(r.changes) <= 2 for r in receiver.requests)
        assert all(set(c["new"]) == {"id", "name"} for c in receiver.accepted_changes())
    subscription = Subscription.objects.get()
    last = feed.read_changes(None, 1000, [CUSTOMER]).changes[-1]
    assert feed.Position(subscription.position_txid, subscription.position_id) >= last.position
    assert subscription.delivered == 7
