"""The change log is a family of tables (sql/log_v1.sql): ``pubsubpull_log`` reads them all.

``pubsubpull_change`` (one change per row) is its first member. A member
whose rows hold many changes each (ids ``id .. id + rows - 1``) must be read
as exactly that many changes by everything that reads the log as a whole:
backlogs, request and head positions, pending checks, retention and its
horizon. Such a table is made here by hand, as a later capture version will
make one, with rows written in transactions of their own (real txids).
"""

import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection, transaction
from django.db.utils import InternalError, ProgrammingError
from django.utils import timezone

from customers.models import Customer
from pubsubpull.capture import statement_log
from pubsubpull.capture.models import Request
from pubsubpull.capture.registry import get_registration
from pubsubpull.capture.triggers import quote_name
from pubsubpull.models import Change
from pubsubpull.protocol.cursor import Position
from pubsubpull.publisher import feed, retention
from pubsubpull.publisher.models import Horizon

pytestmark = pytest.mark.django_db(transaction=True)

LABEL = "customers.customer"


@pytest.fixture
def chunks():
    """Capture v4's log table of customers (its triggers not installed), and a
    writer of one row of ``rows`` changes (keys and images left out)."""
    log = statement_log.log_table(get_registration(Customer), connection)
    table = quote_name(log.name)
    with connection.cursor() as cursor:
        for statement in statement_log.create_sql(log):
            if not statement.startswith("CREATE TRIGGER pubsubpull_"):
                cursor.execute(statement)

    def write(rows: int, request_id=None, op="insert") -> Position:
        """One row of ``rows`` changes, committed; the position of its first change."""
        with transaction.atomic(), connection.cursor() as cursor:
            # A range of ids of its own, as the sequence would give a chunk.
            cursor.execute("SELECT nextval('pubsubpull_change_id_seq')")
            (first,) = cursor.fetchone()
            cursor.execute(
                "SELECT setval('pubsubpull_change_id_seq', %s)", [first + feed.CHUNK - 1]
            )
            cursor.execute(
                f"INSERT INTO {table} (id, txid, model, op, at, request_id, rows) "
                "VALUES (%s, pg_current_xact_id()::text::bigint, %s, %s, now(), %s, %s) "
                "RETURNING txid",
                [first, LABEL, op, request_id, rows],
            )
            (txid,) = cursor.fetchone()
        return Position(txid, first)

    write.table = table
    write.log = log
    yield write
    with connection.cursor() as cursor:
        for statement in statement_log.drop_sql(log.names()):
            cursor.execute(statement)


def test_a_log_table_the_feed_cannot_read_is_an_error_not_a_gap():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE test_log_unknown () INHERITS (pubsubpull_log)")
    try:
        with pytest.raises(ImproperlyConfigured, match="test_log_unknown belongs to the change"):
            feed.read_changes(None, models=[LABEL])
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE test_log_unknown")
    assert feed.read_changes(None, models=[LABEL]).changes == []


def _pending(position: Position) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {feed.pending_sql('%(txid)s, %(id)s', '%(models)s')}",
            {"txid": position.txid, "id": position.id, "models": [LABEL]},
        )
        return cursor.fetchone()[0]


def test_the_log_reads_every_table_of_it_and_the_changes_table_is_its_first():
    Customer.objects.create(name="ada")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.inhrelid::regclass::text FROM pg_inherits AS i "
            "WHERE i.inhparent = 'pubsubpull_log'::regclass"
        )
        assert cursor.fetchall() == [("pubsubpull_change",)]
        cursor.execute("SELECT model, op, rows FROM pubsubpull_log")
        assert cursor.fetchall() == [(LABEL, "insert", 1)]
        # The parent holds nothing of its own, and cannot.
        with pytest.raises(Exception, match="pubsubpull_log_holds_no_rows"), transaction.atomic():
            cursor.execute(
                "INSERT INTO pubsubpull_log (id, txid, model, op, at) "
                "VALUES (1, 1, 'x.y', 'insert', now())"
            )


def test_a_row_of_many_changes_counts_as_each_of_them(chunks):
    Customer.objects.create(name="before")
    (before,) = Change.objects.all()
    request = uuid.uuid4()
    start = chunks(5, request_id=request)
    last = Position(start.txid, start.id + 4)

    # The backlog after a change inside the row counts the rest of it.
    assert feed.backlog(Position(before.txid, before.id), [LABEL])[0] == 5
    assert feed.backlog(Position(start.txid, start.id + 1), [LABEL])[0] == 3
    assert feed.backlog(last, [LABEL])[0] == 0
    assert feed.backlog(Position(start.txid, start.id - 1), ["customers.country"])[0] == 0

    # Positions: the row's last change, not its first.
    assert feed.head_position() == last
    assert feed.request_position(str(request), "default") == last

    assert _pending(Position(start.txid, start.id + 3))
    assert not _pending(last)

    # A TRUNCATE's row (rows 0) is one change.
    truncated = chunks(0, op="truncate")
    assert feed.backlog(last, [LABEL])[0] == 1
    assert feed.head_position() == truncated


def test_pruning_deletes_whole_rows_through_the_log_and_the_horizon_is_their_last_change(chunks):
    Customer.objects.create(name="first")
    (first,) = Change.objects.all()
    request = uuid.uuid4()
    with connection.cursor() as cursor:  # as the capture trigger writes it
        cursor.execute(
            "INSERT INTO pubsubpull_request (id, method, path, query_string, user_agent, "
            "request_id, started, metadata, traceparent, tracestate) "
            "VALUES (%s, 'PUT', '/x', '', '', '', now(), '{}', '', '')",
            [request],
        )
    start = chunks(5, request_id=request)
    Customer.objects.create(name="after")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pubsubpull_log SET at = at - interval '40 days'")
        cursor.execute("UPDATE pubsubpull_request SET started = started - interval '40 days'")

    # Kept up to a change inside the row: the row stays, whole; one change went.
    assert feed.delete_oldest(
        Position(start.txid, start.id + 2), timezone.now(), 100, "default"
    ) == (1, 1)
    horizon = Horizon.objects.get()
    assert (horizon.txid, horizon.change_id) == (first.txid, first.id)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {chunks.table}")
        assert cursor.fetchone() == (1,)
        # A request that only the row's changes name is not an orphan.
        cursor.execute(retention._REQUESTS_SQL, {"cutoff": timezone.now(), "batch": 100})
    assert Request.objects.filter(id=request).exists()

    pruned = retention.prune(older_than=retention.parse_age("30d"))
    assert (pruned.changes, pruned.requests) == (6, 1)
    assert not Change.objects.exists()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {chunks.table}")
        assert cursor.fetchone() == (0,)
    horizon = Horizon.objects.get()
    assert (horizon.txid, horizon.change_id) > (start.txid, start.id + 4)
    assert not Request.objects.filter(id=request).exists()


def test_deleting_through_the_log_moves_the_horizon_to_the_last_change_of_a_row(chunks):
    start = chunks(7)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pubsubpull_log")
    horizon = Horizon.objects.get()
    assert (horizon.txid, horizon.change_id) == (start.txid, start.id + 6)
    with pytest.raises(feed.CursorExpired):
        feed.read_changes(Position(start.txid, start.id + 5), models=[LABEL])


def test_migrating_back_refuses_while_another_log_table_exists_then_keeps_the_log(chunks):
    Customer.objects.create(name="kept")
    # 0017 first: its view of version 1 could not read a table of one change a row.
    single = chunks.log.single
    with pytest.raises((InternalError, ProgrammingError), match=f"one change a row {single}"):
        call_command("migrate", "pubsubpull", "0013", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT pubsubpull_log_view(ARRAY['{single}'::regclass])")
        cursor.execute(f"DROP TABLE {quote_name(single)}")
    # Then 0015's and 0014's: pubsubpull_log would lose a table (0017 and
    # 0016 went back).
    with pytest.raises((InternalError, ProgrammingError), match=chunks.table.strip('"')):
        call_command("migrate", "pubsubpull", "0013", verbosity=0)
    call_command("migrate", "pubsubpull", verbosity=0)
    with connection.cursor() as cursor:
        for statement in statement_log.drop_sql(chunks.log.names()):
            cursor.execute(statement)
    try:
        call_command("migrate", "pubsubpull", "0013", verbosity=0)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT to_regclass('pubsubpull_log'), to_regclass('pubsubpull_log_changes')"
            )
            assert cursor.fetchone() == (None, None)
            # (Change reads the view of 0015, which is gone.)
            cursor.execute("SELECT model, op FROM pubsubpull_change")
            assert cursor.fetchall() == [(LABEL, "insert")]
        # Capture and retention work as before the log had a parent.
        Customer.objects.create(name="written back then")
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM pubsubpull_change WHERE object_pk IS NOT NULL")
        assert Horizon.objects.get().change_id > 0
    finally:
        call_command("migrate", "pubsubpull", verbosity=0)
    Customer.objects.create(name="after")
    with connection.cursor() as cursor:
        cursor.execute("SELECT model, rows FROM pubsubpull_log")
        assert cursor.fetchall() == [(LABEL, 1)]
