"""Every committed write to a published table is in the change log, however it was made."""

from __future__ import annotations

import decimal
import json
import threading
import time
import uuid

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction

from customers.models import Address, Contract, Country, Customer, InternalNote
from pubsubpull.models import Change, ChangeLogIsReadOnly, Request
from pubsubpull.publisher import listener as listener_module
from pubsubpull.publisher.feed import STAY_AWAKE_SQL

pytestmark = pytest.mark.django_db


def test_orm_create_update_delete_record_old_and_new(changes):
    customer = Customer.objects.create(name="Ada", email="ada@example.com", notes="vip")
    customer.email = "ada@lovelace.example"
    customer.save()
    pk = customer.pk
    customer.delete()

    log = changes(model="customers.customer")
    assert [c["op"] for c in log] == ["insert", "update", "delete"]
    assert {c["object_pk"] for c in log} == {str(pk)}
    insert, update, delete = log
    assert insert["old"] is None
    assert insert["new"]["name"] == "Ada"
    assert insert["new"]["email"] == "ada@example.com"
    assert update["old"]["email"] == "ada@example.com"
    assert update["new"]["email"] == "ada@lovelace.example"
    assert delete["old"]["email"] == "ada@lovelace.example"
    assert delete["new"] is None


def test_excluded_columns_are_never_stored(changes):
    Customer.objects.create(name="Ada", notes="secret note")
    User.objects.create_user("grace", password="s3cret-password")
    Contract.objects.create(
        customer=Customer.objects.get(), amount=decimal.Decimal("10.50"), discount_reason="friend"
    )

    with connection.cursor() as cursor:
        # Look at the stored jsonb itself, not at a filtered view of it.
        cursor.execute(
            "SELECT count(*) FROM pubsubpull_change WHERE new::text LIKE '%secret%' "
            "OR new::text LIKE '%friend%' OR new ? 'password' OR new ? 'notes' "
            "OR new ? 'discount_reason'"
        )
        assert cursor.fetchone()[0] == 0
    (user,) = changes(model="auth.user")
    assert user["new"]["username"] == "grace"
    assert "password" not in user["new"]
    (contract,) = changes(model="customers.contract")
    assert set(contract["new"]) == {"id", "customer_id", "amount", "currency"}


def test_bulk_operations_are_recorded(changes):
    Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(5)])
    customers = list(Customer.objects.order_by("pk"))
    for customer in customers:
        customer.email = f"{customer.name}@example.com"
    Customer.objects.bulk_update(customers, ["email"])
    Customer.objects.filter(name__in=["c0", "c1"]).update(newsletter=True)
    Customer.objects.filter(name="c4").delete()

    log = changes(model="customers.customer")
    ops = [c["op"] for c in log]
    assert ops == ["insert"] * 5 + ["update"] * 5 + ["update"] * 2 + ["delete"]
    assert [c["new"]["email"] for c in log[5:10]] == [f"c{i}@example.com" for i in range(5)]
    assert all(c["old"]["newsletter"] is False and c["new"]["newsletter"] for c in log[10:12])
    assert log[-1]["object_pk"] == str(customers[4].pk)


def test_noop_and_zero_row_statements_record_nothing(changes):
    Country.objects.create(code="fr", name="France")
    Country.objects.filter(code="fr").update(name="France")  # same value
    Country.objects.filter(code="xx").update(name="Nowhere")  # no row
    Country.objects.filter(code="xx").delete()
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO customers_country SELECT 'zz', 'z' WHERE false")
    assert [c["op"] for c in changes(model="customers.country")] == ["insert"]


def test_update_that_changes_the_primary_key(changes):
    Country.objects.create(code="de", name="Germany")
    Country.objects.create(code="fr", name="France")
    with connection.cursor() as cursor:
        # de -> es and fr -> de in one statement: pairing old and new rows by
        # key would pair Germany's old row with France's new one.
        cursor.execute(
            "UPDATE customers_country SET code = CASE code WHEN 'de' THEN 'es' ELSE 'de' END, "
            "name = name || '!' WHERE code IN ('fr', 'de')"
        )
    updates = changes(model="customers.country", op="update")
    pairs = {
        (c["old"]["code"], c["old"]["name"], c["new"]["code"], c["new"]["name"]) for c in updates
    }
    assert pairs == {("de", "Germany", "es", "Germany!"), ("fr", "France", "de", "France!")}
    for c in updates:
        assert c["object_pk"] == c["new"]["code"]


def test_uuid_and_char_primary_keys(changes):
    Country.objects.create(code="nl", name="Netherlands")
    customer = Customer.objects.create(name="Ada", country_id="nl")
    contract = Contract.objects.create(customer=customer, amount=decimal.Decimal("3.00"))
    (country,) = changes(model="customers.country")
    assert country["object_pk"] == "nl"
    (logged,) = changes(model="customers.contract")
    assert logged["object_pk"] == str(contract.pk)
    assert logged["new"]["amount"] == 3.00


def test_unpublished_models_record_nothing(changes):
    customer = Customer.objects.create(name="Ada")
    InternalNote.objects.create(customer=customer, text="hello")
    assert {c["model"] for c in changes()} == {"customers.customer"}


@pytest.mark.django_db(transaction=True)
def test_truncate_records_one_row_per_table(changes):
    Country.objects.create(code="fr", name="France")
    Customer.objects.create(name="Ada")
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE customers_country, customers_customer CASCADE")
    truncates = changes(op="truncate")
    assert sorted(c["model"] for c in truncates) == [
        "customers.address",
        "customers.contract",
        "customers.country",
        "customers.customer",
    ]
    assert all(c["object_pk"] is None and c["old"] is None for c in truncates)


def test_changes_of_one_transaction_share_its_txid(changes):
    with transaction.atomic():
        Country.objects.create(code="fr", name="France")
        Customer.objects.create(name="Ada")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_xact_id()::text::bigint")
        (current,) = cursor.fetchone()
    txids = {c["txid"] for c in changes()}
    assert txids == {current}  # pytest-django wraps the test in one transaction


def test_the_change_log_cannot_be_written_through_the_orm():
    Country.objects.create(code="fr", name="France")
    change = Change.objects.get()
    with pytest.raises(ChangeLogIsReadOnly, match="written by pubsubpull's database trigger"):
        change.save()
    with pytest.raises(ChangeLogIsReadOnly):
        change.delete()
    with pytest.raises(ChangeLogIsReadOnly):
        Change.objects.create(txid=1, model="x.y", op="insert", at=change.at)
    with pytest.raises(ChangeLogIsReadOnly):
        Change.objects.update(op="delete")
    with pytest.raises(ChangeLogIsReadOnly):
        Change.objects.all().delete()
    with pytest.raises(ChangeLogIsReadOnly):
        Request.objects.bulk_create([])
    assert Change.objects.get().op == "insert"


def test_unicode_and_large_values(changes):
    name = "Zoë 🚀 " + "x" * 100_000
    Customer.objects.create(name=name[:200], email="zoe@example.com")
    Address.objects.create(customer=Customer.objects.get(), line1="Straße 1", city="Köln")
    assert changes(model="customers.customer")[0]["new"]["name"] == name[:200]
    assert changes(model="customers.address")[0]["new"]["city"] == "Köln"


@pytest.mark.django_db(transaction=True)
def test_raw_sql_from_another_connection_is_recorded(raw_connection, changes):
    raw_connection.execute(
        "INSERT INTO customers_country VALUES ('se', 'Sweden'), ('no', 'Norway')"
    )
    raw_connection.execute("UPDATE customers_country SET name = upper(name)")
    raw_connection.execute("DELETE FROM customers_country WHERE code = 'no'")
    log = changes(model="customers.country")
    assert [(c["op"], c["object_pk"]) for c in log] == [
        ("insert", "se"),
        ("insert", "no"),
        ("update", "se"),
        ("update", "no"),
        ("delete", "no"),
    ]
    assert log[3]["new"] == {"code": "no", "name": "NORWAY"}


@pytest.mark.django_db(transaction=True)
def test_rolled_back_changes_are_not_recorded(changes):
    with pytest.raises(RuntimeError), transaction.atomic():
        Country.objects.create(code="fr", name="France")
        raise RuntimeError("the view failed")
    assert changes() == []

    with transaction.atomic():
        Country.objects.create(code="de", name="Germany")
        try:
            with transaction.atomic():  # a savepoint
                Country.objects.create(code="it", name="Italy")
                Country.objects.filter(code="de").update(name="Deutschland")
                raise RuntimeError
        except RuntimeError:
            pass
        Country.objects.create(code="es", name="Spain")
    log = changes()
    assert [(c["op"], c["object_pk"]) for c in log] == [("insert", "de"), ("insert", "es")]
    assert len({c["txid"] for c in log}) == 1


@pytest.mark.django_db(transaction=True)
def test_a_large_update_after_a_one_row_update_on_the_same_connection(raw_connection):
    """A plan cached for a 1-row UPDATE once made a 20,000-row UPDATE take 116 s."""
    raw_connection.execute(
        "INSERT INTO customers_customer (name, email, newsletter, notes, created, updated) "
        "SELECT 'c' || i, '', false, '', now(), now() FROM generate_series(1, 20000) AS i"
    )
    raw_connection.execute("UPDATE customers_customer SET newsletter = true WHERE name = 'c1'")
    started = time.monotonic()
    raw_connection.execute("UPDATE customers_customer SET newsletter = NOT newsletter")
    elapsed = time.monotonic() - started
    count = Change.objects.filter(model="customers.customer", op="update").count()
    assert count == 20001
    assert elapsed < 15, f"the 20,000-row UPDATE took {elapsed:.1f} s"


def test_listeners_are_notified_once_per_transaction_not_per_row(raw_connection, capture_version):
    """Version 3 reads the four wake-up sequences, version 4 the gate (sql/wakeup_v1.sql)."""
    with psycopg.connect(raw_connection.info.dsn, autocommit=True) as listener:
        listener.execute("LISTEN pubsubpull")

        def received(timeout=1.0):
            names = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                names += [n.payload for n in listener.notifies(timeout=0.05, stop_after=100)]
            return names

        def arm():
            # What a sleeping listener's hub does (pubsubpull.publisher.listener): ask for a NOTIFY.
            return listener.execute(listener_module._ARM_SQL).fetchone()[0]

        def disarm(number):
            listener.execute(listener_module._DISARM_SQL, {"n": number})

        # What earlier tests' sleepers and workers armed is spent.
        listener.execute("SELECT setval('pubsubpull_wakeup_always_at', 1)")
        disarm(listener.execute("SELECT last_value FROM pubsubpull_wakeup_armed").fetchone()[0])

        # Nobody waits: writers send no NOTIFY (it would serialise their commits).
        Customer.objects.create(name="unheard")
        assert received(0.5) == []

        number = arm()
        Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(500)])
        assert received() == ["customers.customer"]

        with transaction.atomic():
            Customer.objects.update(newsletter=True)
            Customer.objects.filter(name="c1").delete()
            Country.objects.create(code="fr", name="France")
        assert sorted(received()) == ["customers.country", "customers.customer"]

        Customer.objects.filter(name="nobody").update(newsletter=False)
        assert received(0.5) == []

        disarm(number)
        Customer.objects.filter(name="c2").update(newsletter=False)
        assert received(0.5) == []

        # A worker listening all the time keeps writers notifying.
        listener.execute(STAY_AWAKE_SQL)
        Customer.objects.filter(name="c3").update(newsletter=False)
        assert received() == ["customers.customer"]


@pytest.mark.django_db(transaction=True)
def test_a_disarm_in_progress_cannot_close_the_gate_on_an_arm_taken_meanwhile(raw_connection):
    """The wake-up functions take one lock: an arm waits for a disarm, then opens the gate."""
    gate_open = (
        "SELECT pg_sequence_last_value('pubsubpull_wakeup_gate') > extract(epoch FROM now())"
    )
    raw_connection.execute("SELECT setval('pubsubpull_wakeup_always_at', 1)")
    spent = raw_connection.execute("SELECT last_value FROM pubsubpull_wakeup_armed").fetchone()[0]
    armed = threading.Event()
    numbers = []

    def arm():
        with psycopg.connect(raw_connection.info.dsn, autocommit=True) as hub:
            numbers.append(hub.execute(listener_module._ARM_SQL).fetchone()[0])
            armed.set()

    with psycopg.connect(raw_connection.info.dsn) as listener:  # a transaction: holds the lock
        listener.execute(listener_module._DISARM_SQL, {"n": spent})
        assert listener.execute(gate_open).fetchone() == (False,)
        thread = threading.Thread(target=arm)
        thread.start()
        assert not armed.wait(0.5), "the arm did not wait for the disarm"
    thread.join(10)
    assert armed.is_set()
    assert raw_connection.execute(gate_open).fetchone() == (True,)
    raw_connection.execute(listener_module._DISARM_SQL, {"n": numbers[0]})
    assert raw_connection.execute(gate_open).fetchone() == (False,)


# What version 1 of the capture function (sql/capture_v1.sql) stored for a
# context: the request row as jsonb_populate_record() of defaults merged with it.
_REQUEST_ROW_V1 = """
SELECT to_jsonb(jsonb_populate_record(
    NULL::pubsubpull_request,
    jsonb_build_object(
        'method', '', 'path', '', 'query_string', '', 'user_agent', '',
        'request_id', '', 'metadata', '{}'::jsonb, 'started', %s::timestamptz,
        'traceparent', '', 'tracestate', ''
    ) || %s::jsonb
))
"""


@pytest.mark.parametrize(
    "context",
    [
        {  # what the request middleware sends for a signed-in user
            "started": "2026-11-30T03:00:00.123456+00:00",
            "method": "PATCH",
            "path": "/customers/1/",
            "query_string": "a=1&b=%C3%A9",
            "remote_addr": "10.1.2.3",
            "user_agent": "curl/8.0 «é»",
            "request_id": "req-42",
            "metadata": {"view": "customer", "tags": [1, "two", None]},
            "user_id": 7,
        },
        {  # a request that came with a W3C trace context (version 3's columns)
            "started": "2026-11-30T03:00:00+00:00",
            "method": "PUT",
            "path": "/customers/2/",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
            "metadata": {},
        },
        {  # anonymous, and no client address known
            "started": "2026-11-30T03:00:00+01:00",
            "method": "POST",
            "path": "/",
            "query_string": "",
            "remote_addr": None,
            "user_agent": "",
            "request_id": "",
            "metadata": {},
        },
        {"started": "2026-11-30T03:00:00+00:00", "remote_addr": "::1", "metadata": {}},
        {"started": "2026-11-30T03:00:00+00:00", "metadata": {"command": "import"}},  # a job
        {},  # nothing but the id: started is the statement's time
    ],
    ids=["request", "traced", "anonymous", "ipv6", "job", "bare"],
)
def test_the_request_row_holds_what_the_context_says(context):
    """Versions 2 and 3 build the row column by column; they store what version 1 stored
    (version 3 also the trace context)."""
    context = {"id": str(uuid.uuid4()), **context}
    payload = json.dumps(context)
    with connection.cursor() as cursor:
        # One execute: pubsubpull's own wrapper on Django's connection would
        # otherwise send its (empty) context with the INSERT.
        cursor.execute(
            "SELECT set_config('pubsubpull.context', %s, true); "
            "INSERT INTO customers_country (code, name) VALUES ('fr', 'France')",
            [payload],
        )
        cursor.execute("SELECT at FROM pubsubpull_change WHERE request_id = %s", [context["id"]])
        (at,) = cursor.fetchone()
        cursor.execute(
            "SELECT to_jsonb(r) FROM pubsubpull_request AS r WHERE id = %s", [context["id"]]
        )
        (stored,) = cursor.fetchone()
        cursor.execute(_REQUEST_ROW_V1, [at, payload])
        (expected,) = cursor.fetchone()
    stored, expected = json.loads(stored), json.loads(expected)
    assert stored == expected
    assert stored["user_id"] == context.get("user_id")


def test_a_request_row_is_written_once_for_several_statements(changes):
    context = json.dumps({"id": str(uuid.uuid4()), "started": "2026-11-30T03:00:00+00:00"})
    with connection.cursor() as cursor:
        for code in ("fr", "de", "it"):
            cursor.execute(
                "SELECT set_config('pubsubpull.context', %s, true); "
                "INSERT INTO customers_country (code, name) VALUES (%s, 'x')",
                [context, code],
            )
        cursor.execute(
            "SELECT set_config('pubsubpull.context', %s, true); "
            "UPDATE customers_country SET name = 'y'",
            [context],
        )
    assert Request.objects.count() == 1
    assert {c["request_id"] for c in changes()} == {Request.objects.get().id}
    assert len(changes()) == 6


@pytest.mark.django_db(transaction=True)
def test_one_row_statements_on_one_connection_then_many_rows(raw_connection, changes):
    """Single-row statements (the common case) and bulk ones share the cached plans."""
    raw_connection.execute("INSERT INTO customers_country (code, name) VALUES ('de', 'Germany')")
    raw_connection.execute("UPDATE customers_country SET name = 'Deutschland' WHERE code = 'de'")
    raw_connection.execute("UPDATE customers_country SET code = 'at' WHERE code = 'de'")  # the pk
    raw_connection.execute("UPDATE customers_country SET name = name WHERE code = 'at'")  # no-op
    raw_connection.execute("UPDATE customers_country SET name = 'x' WHERE code = 'zz'")  # no row
    raw_connection.execute("DELETE FROM customers_country WHERE code = 'zz'")
    raw_connection.execute(
        "INSERT INTO customers_country (code, name) "
        "SELECT chr(98 + i / 26) || chr(97 + i % 26), 'Country ' || i "
        "FROM generate_series(0, 89) AS i"
    )
    raw_connection.execute("UPDATE customers_country SET code = upper(code), name = name || '!'")
    raw_connection.execute("DELETE FROM customers_country WHERE code = 'AT'")

    log = changes(model="customers.country")
    ops = [(c["op"], c["object_pk"]) for c in log]
    assert ops[:3] == [("insert", "de"), ("update", "de"), ("update", "at")]
    assert log[2]["old"]["code"] == "de" and log[2]["new"]["code"] == "at"
    assert [op for op, _ in ops[3:93]] == ["insert"] * 90
    updates = log[93:184]
    assert len(updates) == 91
    assert all(
        c["op"] == "update"
        and c["object_pk"] == c["new"]["code"] == c["old"]["code"].upper()
        and c["new"]["name"] == c["old"]["name"] + "!"
        for c in updates
    )
    assert ops[184:] == [("delete", "AT")]
