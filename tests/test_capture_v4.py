"""Capture version 4 (pubsubpull.capture.statement_log) records what version 3 records.

The same script of writes runs twice on the same tables: once under version
3's triggers (the shared ``pubsubpull_change``, one jsonb row per change) and
once under version 4's (each model's own log table, one row per statement
chunk), from the same starting state and at the same frozen time. Read back
as changes (``statement_log.changes_sql``), version 4's log must give, for
every statement, exactly version 3's changes: op, key, old and new images
(excluded columns never stored), request, no-op updates left out, key-changing
updates exact, zero-row statements recording nothing.
"""

import itertools
import json
import uuid
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import F
from freezegun import freeze_time

import pubsubpull
from customers.models import Contract, Country, Customer
from pubsubpull.capture import statement_log, triggers
from pubsubpull.capture.registry import get_registration
from pubsubpull.models import Change, Request
from pubsubpull.publisher import feed, snapshot
from tests.conftest import install_v4, restore_v3

pytestmark = pytest.mark.django_db(transaction=True)

MODELS = (Country, Customer, Contract)


def _logs():
    return [statement_log.log_table(get_registration(model), connection) for model in MODELS]


@pytest.fixture
def v4():
    yield lambda: install_v4(MODELS)
    restore_v3(MODELS)


CONTRACT_IDS = [uuid.UUID(int=n) for n in range(1, 6)]


def _reset(log=True):
    """Empty tables (with their keys' sequences), recording nothing; and the log."""
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")  # no trigger fires
        cursor.execute(
            "TRUNCATE customers_contract, customers_address, customers_customer, "
            "customers_country RESTART IDENTITY CASCADE"
        )
        cursor.execute("RESET session_replication_role")
        if log:
            cursor.execute("DELETE FROM pubsubpull_log")
            cursor.execute("DELETE FROM pubsubpull_request")


def _script():
    """Writes of every kind, each statement its own transaction."""
    Country.objects.create(code="se", name="Sweden")
    Country.objects.bulk_create(
        [Country(code="fr", name="France"), Country(code="no", name="Norway")]
    )
    first = Customer.objects.create(name="ada", email="ada@example.com", notes="secret")
    # More than two chunks of one statement.
    Customer.objects.bulk_create(
        [Customer(name=f"c{n}", country_id="se" if n % 3 else None, notes="n") for n in range(2500)]
    )
    Customer.objects.update(newsletter=True)
    Customer.objects.update(name=F("name"))  # changes nothing
    Customer.objects.update(notes="excluded only")  # changes nothing published
    Customer.objects.filter(id__in=range(2, 2600, 2)).update(email="even@example.com")
    # One-row statements take a path of their own (statement_log._AT_MOST_ONE).
    Customer.objects.filter(pk=first.pk).update(name=F("name"))  # changes nothing
    Customer.objects.filter(pk=first.pk).update(notes="one excluded")  # nothing published
    Customer.objects.filter(pk=first.pk).update(id=F("id") + 100_000)  # the key changes
    Country.objects.filter(code="fr").update(code="fx", name="France métropolitaine")
    Customer.objects.filter(id__in=range(3, 2600, 3)).delete()
    Customer.objects.filter(name="nobody").delete()  # zero rows
    Customer.objects.filter(name="nobody").update(email="x")  # zero rows
    with pubsubpull.context(task="import"):
        Customer.objects.create(name="job", notes="x")
        Contract.objects.bulk_create(
            [
                Contract(id=i, customer_id=5, amount=Decimal("12.30"), discount_reason="vip")
                for i in CONTRACT_IDS
            ]
        )
    Contract.objects.filter(id=CONTRACT_IDS[0]).update(discount_reason="only excluded")
    Contract.objects.filter(id__in=CONTRACT_IDS[:2]).update(amount=Decimal("99.99"))
    Country.objects.filter(code="no").delete()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE customers_contract")


def _statements(rows):
    """Changes grouped by statement (their transaction), each group in key order."""
    groups: dict[int, list] = {}
    for row in rows:
        groups.setdefault(row["txid"], []).append(
            (row["model"], row["op"], row["object_pk"], row["old"], row["new"], row["request"])
        )
    return [sorted(group, key=repr) for _, group in sorted(groups.items())]


def _changes():
    """The models' changes as the audit trail reads them (Change: every log table)."""
    return _statements(
        {**c, "request": c["request_id"] is not None}
        for c in Change.objects.filter(model__in=[m._meta.label_lower for m in MODELS])
        .order_by("txid", "id")
        .values("txid", "model", "op", "object_pk", "old", "new", "request_id")
    )


def _v4_changes(logs):
    rows = []
    with connection.cursor() as cursor:
        for table, single in [(t, s) for log in logs for t, s in ((log.name, 0), (log.single, 1))]:
            cursor.execute(statement_log.changes_sql(table, single=bool(single)))
            names = [d.name for d in cursor.description]
            for row in cursor.fetchall():
                change = dict(zip(names, row, strict=True))
                # A raw cursor gives jsonb as text.
                for side in ("old", "new"):
                    change[side] = None if change[side] is None else json.loads(change[side])
                rows.append(change)
    rows.sort(key=lambda r: (r["txid"], r["id"]))
    return _statements({**r, "request": r["request_id"] is not None} for r in rows)


@freeze_time("2026-03-04 05:06:07.891011+00:00")
def test_version_4_records_what_version_3_records(v4):
    _reset()
    _script()
    expected = _changes()
    v3_requests = Request.objects.count()

    v4()
    _reset()
    _script()
    logs = _logs()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pubsubpull_change")
        assert cursor.fetchone() == (0,)
    got = _v4_changes(logs)

    assert [len(s) for s in got] == [len(s) for s in expected]
    assert got == expected
    # The audit trail's view of the log reads them the same.
    assert _changes() == expected
    assert Request.objects.count() == v3_requests == 1
    # The bulk statements took chunks of at most CHUNK rows, and their ids do
    # not overlap; one-row statements took the table of one change a row,
    # every one of them (none in the chunks' table).
    with connection.cursor() as cursor:
        customers = triggers.quote_name(logs[1].name)
        cursor.execute(f"SELECT rows, id FROM {customers} WHERE op = 'insert' ORDER BY id")
        chunks = cursor.fetchall()
        cursor.execute(f"SELECT op, count(*) FROM {customers} WHERE rows = 1 GROUP BY op")
        assert cursor.fetchall() == []
        single = triggers.quote_name(logs[1].single)
        cursor.execute(f"SELECT op, count(*) FROM {single} GROUP BY op ORDER BY op")
        assert cursor.fetchall() == [("insert", 2), ("update", 1)]
    assert sorted(r for r, _ in chunks) == [452, 1024, 1024]
    assert all(b - a >= statement_log.CHUNK for (_, a), (_, b) in itertools.pairwise(chunks))
    # Nothing excluded was stored anywhere, not even as an attribute.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0",
            [logs[1].image],
        )
        assert "notes" not in {name for (name,) in cursor.fetchall()}


def test_the_names_of_a_log_version_follow_its_columns():
    customer = statement_log.log_table(get_registration(Customer), connection)
    assert customer.name.startswith("pubsubpull_log_customers_customer_")
    assert len({customer.name, customer.image, customer.function, customer.update_function}) == 4
    narrower = statement_log.LogTable(
        customer.label, customer.table, customer.key, customer.key_type, customer.columns[:-1]
    )
    retyped = statement_log.LogTable(
        customer.label,
        customer.table,
        customer.key,
        customer.key_type,
        (*customer.columns[:-1], (customer.columns[-1][0], "text")),
    )
    assert len({customer.version, narrower.version, retyped.version}) == 3
    long = statement_log.LogTable("a.b", "x" * 80, "id", "bigint", (("id", "bigint"),))
    assert all(len(n) <= 63 for n in (long.name, long.image, long.function, long.update_function))


LABELS = [m._meta.label_lower for m in MODELS]


def _feed(limit, filters=None, labels=LABELS):
    """The whole feed of ``labels`` in pages of ``limit``: each change's position and item."""
    read, after = [], None
    while True:
        page = feed.read_changes(after, limit, labels, filters=filters)
        read += [(c.position, json.loads(c.as_json_text())) for c in page.changes]
        if page.caught_up:
            return read
        after = page.next


def _served(read):
    """The items of a feed read, by transaction, without what differs between runs."""
    positions = [p for p, _ in read]
    assert positions == sorted(set(positions)), "out of order, or served twice"
    by_transaction: dict[int, list] = {}
    for position, item in read:
        for name in ("id", "cursor", "sequence", "at"):
            del item[name]
        by_transaction.setdefault(position.txid, []).append(item)
    return [sorted(items, key=repr) for _, items in sorted(by_transaction.items())]


@freeze_time("2026-03-04 05:06:07.891011+00:00")
def test_the_feed_serves_version_4_changes_as_it_served_version_3_ones(v4):
    """Across pages that end inside log rows, over three models' tables, and across
    an upgrade: the log holds the script's changes under version 3, then under 4."""
    only = feed.parse_filters(
        {"customers.customer": {"where": {"email__endswith": "@example.com"},
                                "fields": ["email"]}},
        LABELS,
    )  # fmt: skip
    _reset()
    _script()
    expected = _served(_feed(700))
    expected_filtered = _served(_feed(300, only))
    assert len(expected) == 14 and sum(map(len, expected_filtered)) < sum(map(len, expected))

    v4()
    _reset(log=False)
    _script()
    # Pages of 700 and 97 end inside log rows of up to 1,024 changes.
    for limit in (700, 97):
        assert _served(_feed(limit)) == expected + expected
    assert _served(_feed(300, only)) == expected_filtered + expected_filtered
    # The pages found the new tables (they were read before any was made).
    found = feed.log_members("default").of(LABELS)
    assert sorted((m.label, m.single) for m in found) == sorted(
        (label, single) for label in LABELS for single in (False, True)
    )
    # A whole-transactions page holds a bulk statement whole.
    page = feed.read_changes(None, 100, LABELS, whole_transactions=True)
    assert len(page.changes) >= 1
    assert len({c.txid for c in page.changes}) == len(feed.transaction_ends(page.changes))


def _explain(sql: str, params=None) -> str:
    """The plan of ``sql``, sequential scans costed out (the tables are small here)."""
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row for (row,) in cursor.fetchall())
        cursor.execute("RESET enable_seqscan")
    return plan


def _plan(queryset) -> str:
    return _explain(*queryset.query.sql_with_params())


def _histories():
    """Each customer's and contract's audit trail (Change.objects.for_object), and
    its snapshot item's sequence, which is the id of the newest change."""
    found = {}
    for model in (Customer, Contract):
        items = {i.pk_text: i for i in snapshot.read_instances(model, limit=10_000).instances}
        for obj in model.objects.all():
            history = list(Change.objects.for_object(obj))
            assert items[str(obj.pk)].sequence == history[-1].id
            found[(model.__name__, str(obj.pk))] = [
                (c.op, c.diff, c.request_id is not None) for c in history
            ]
    return found


@freeze_time("2026-03-04 05:06:07.891011+00:00")
def test_the_audit_trail_and_the_snapshot_read_version_4_changes_by_object(v4):
    _reset()
    _script()
    expected = _histories()
    assert len(expected) > 1000 and any(len(h) > 2 for h in expected.values())

    v4()
    _reset()
    _script()
    assert _histories() == expected
    # The snapshot's page is planned with index scans of the logs; the
    # connection's settings come back as they were.
    with connection.cursor() as cursor:
        cursor.execute("SHOW enable_seqscan")
        assert cursor.fetchone() == ("on",)
    # An object's changes come from each log table's GIN index, not from
    # unnesting the table.
    ada = Customer.objects.get(name="ada")
    plan = _plan(Change.objects.for_object(ada))
    assert f"{_logs()[1].name[:55]}_keys" in plan, plan
    # And from the btree of the table of one change a row.
    assert f"{_logs()[1].name[:54]}_one_key" in plan, plan
    assert "Seq Scan" not in plan, plan
    # So does the snapshot's sequence of a page of rows, once for the page.
    members = feed.log_members("default").of(["customers.customer"])
    plan = _explain(
        "WITH keyed AS MATERIALIZED (SELECT t.id AS key, t.id::text AS pk_text "
        f"FROM customers_customer AS t LIMIT 10) {snapshot.logged_sql(members)}"
    )
    assert f"{_logs()[1].name[:55]}_keys" in plan, plan
    assert f"{_logs()[1].name[:54]}_one_key" in plan, plan


def test_the_admin_lists_searches_and_shows_version_4_changes(v4, admin_client):
    v4()
    ada = Customer.objects.create(name="ada", email="ada@example.com")
    Customer.objects.bulk_create([Customer(name=f"c{n}") for n in range(1500)])
    Customer.objects.filter(pk=ada.pk).update(email="ada@lovelace.example")
    update = Change.objects.for_object(ada).get(op="update")
    log = _logs()[1].name

    def shown(query):
        page = admin_client.get(f"/admin/pubsubpull/change/?{query}")
        assert page.status_code == 200, query
        return [(c.model, c.op, c.object_pk) for c in page.context["cl"].result_list]

    pk = str(ada.pk)
    both = [("customers.customer", "insert", pk), ("customers.customer", "update", pk)]
    assert sorted(shown(f"model=customers.customer&object_pk={pk}")) == both
    assert sorted(shown(f"q={pk}")) == both
    assert shown("q=nothing") == []
    listing = shown("")
    assert len(listing) == 100 and listing[0] == ("customers.customer", "update", pk)
    detail = admin_client.get(f"/admin/pubsubpull/change/{update.pk}/change/")
    assert detail.status_code == 200
    assert "ada@example.com" in detail.text and "ada@lovelace.example" in detail.text
    # One change by its id: the index of the rows' ids, not an unnested table.
    plan = _plan(Change.objects.filter(pk=update.pk))
    assert f"{log[:55]}_id" in plan and f"{log[:54]}_one_id" in plan, plan
    for name in ("c700", "c1499"):  # inside a row, and in the bulk's second row
        customer = Customer.objects.get(name=name)
        (insert,) = Change.objects.for_object(customer)
        assert Change.objects.get(pk=insert.pk).new["name"] == name


def test_django_flush_empties_every_log_table(v4):
    """As it emptied pubsubpull_change when Change was its managed model: tests
    of a user's project (TransactionTestCase) start from an empty log."""
    from django.core.management import call_command

    v4()
    Customer.objects.bulk_create([Customer(name=f"c{n}") for n in range(3)])
    Customer.objects.create(name="v3 too")
    assert Change.objects.count() == 4
    call_command("flush", interactive=False, verbosity=0)
    # What is left: the published tables' own TRUNCATEs, which their triggers
    # record after the statement that emptied the log.
    assert set(Change.objects.values_list("op", flat=True)) == {"truncate"}


def test_pruning_and_the_horizon_cover_the_table_of_one_change_a_row(v4):
    from pubsubpull.publisher import retention
    from pubsubpull.publisher.models import Horizon

    v4()
    with pubsubpull.context(task="import"):
        Customer.objects.create(name="one")
    (change,) = Change.objects.all()
    single = triggers.quote_name(_logs()[1].single)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, request_id FROM {single}")
        assert cursor.fetchall() == [(change.id, change.request_id)]
        cursor.execute("UPDATE pubsubpull_log SET at = at - interval '40 days'")
        cursor.execute("UPDATE pubsubpull_request SET started = started - interval '40 days'")
    # Its request is not an orphan while the change is there; both go together.
    pruned = retention.prune(older_than=retention.parse_age("30d"))
    assert (pruned.changes, pruned.requests) == (1, 1)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {single}")
        assert cursor.fetchone() == (0,)
    horizon = Horizon.objects.get()
    assert (horizon.txid, horizon.change_id) == (change.txid, change.id)
