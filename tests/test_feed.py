"""The change feed is gap-free: whatever order transactions commit in, a reader sees each
committed change exactly once and never a rolled-back one."""

from __future__ import annotations

import json
import random
import threading
import time

import psycopg
import pytest
from django.db import connection, connections

from customers.models import Country, Customer
from pubsubpull.publisher import feed, longpoll
from tests.conftest import dsn

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True, scope="module")
def _close_listeners():
    """Long polls open a LISTEN connection; close it before the test database is dropped."""
    yield
    longpoll.stop_listening()


INSERT = "INSERT INTO customers_customer (name, email, newsletter, notes, created, updated) "
INSERT += "VALUES (%s, '', false, '', now(), now())"


def names(page):
    return [c.new["name"] for c in page.changes]


def follow(after=None, **kwargs):
    """Read the feed until caught up; return every change and the final cursor."""
    seen = []
    while True:
        page = feed.read_changes(after, **kwargs)
        seen.extend(page.changes)
        after = page.next
        if not page.changes and not page.held_back:
            return seen, after


@pytest.mark.parametrize("older_commits_later", [True, False])
def test_two_transactions_committing_out_of_order_are_both_seen(older_commits_later):
    """A takes a change id, B a higher one and commits, a reader reads, then A commits."""
    with psycopg.connect(dsn()) as a, psycopg.connect(dsn()) as b:
        if not older_commits_later:
            # B's transaction is the older one (lower txid) but writes last.
            b.execute("SELECT pg_current_xact_id()")
        a.execute(INSERT, ["A"])
        b.execute(INSERT, ["B"])
        b.commit()
        (a_id,) = a.execute("SELECT id FROM pubsubpull_change WHERE new->>'name' = 'A'").fetchone()
        with connection.cursor() as cursor:
            cursor.execute("SELECT id FROM pubsubpull_change WHERE new->>'name' = 'B'")
            (b_id,) = cursor.fetchone()
        assert a_id < b_id, "A took the lower change id"

        first = feed.read_changes(None)
        # Reading by id alone would now serve B and move past A's id for good.
        assert "A" not in names(first)

        a.commit()
    seen, _ = follow(first.next)
    assert sorted(names(first) + [c.new["name"] for c in seen]) == ["A", "B"]


def test_an_open_transaction_holds_the_feed_back_without_losing_anything():
    with psycopg.connect(dsn()) as blocker:
        blocker.execute("SELECT pg_current_xact_id()")  # takes an xid, writes nothing
        Customer.objects.create(name="after the blocker")
        page = feed.read_changes(None)
        assert page.changes == [] and page.held_back
        blocker.rollback()
    page = feed.read_changes(page.next)
    assert names(page) == ["after the blocker"]


def test_rolled_back_changes_never_appear():
    with psycopg.connect(dsn()) as writer:
        writer.execute(INSERT, ["rolled back"])
        writer.rollback()
        writer.execute(INSERT, ["kept"])
        writer.commit()
    seen, _ = follow()
    assert [c.new["name"] for c in seen] == ["kept"]


def test_many_writers_with_random_commit_delays_and_rollbacks():
    """Every committed change is read exactly once, in (txid, id) order; nothing else."""
    rng = random.Random(20151127)
    writers, transactions = 4, 500
    committed: set[str] = set()
    rolled_back: set[str] = set()
    lock = threading.Lock()
    done = threading.Event()
    errors: list[BaseException] = []

    def write(number: int, seed: int) -> None:
        local = random.Random(seed)
        try:
            with psycopg.connect(dsn()) as conn:
                for t in range(transactions):
                    batch = [f"w{number}-t{t}-r{r}" for r in range(local.randint(1, 3))]
                    for name in batch:
                        conn.execute(INSERT, [name])
                    if local.random() < 0.3:
                        time.sleep(local.random() * 0.003)
                    if local.random() < 0.2:
                        conn.rollback()
                        with lock:
                            rolled_back.update(batch)
                    else:
                        conn.commit()
                        with lock:
                            committed.update(batch)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    read: list[feed.FeedChange] = []

    def follow_feed() -> None:
        after = None
        try:
            while True:
                finished = done.is_set()
                page = feed.read_changes(after, limit=rng.choice([1, 7, 50, 200]))
                read.extend(page.changes)
                after = page.next
                if finished and not page.changes and not page.held_back:
                    return
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(n, rng.random())) for n in range(writers)]
    reader = threading.Thread(target=follow_feed)
    reader.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    reader.join(60)
    assert not errors, errors
    assert not reader.is_alive()

    names_read = [c.new["name"] for c in read]
    assert len(names_read) == len(set(names_read)), "a change was read twice"
    assert set(names_read) == committed
    assert not rolled_back & set(names_read)
    positions = [c.position for c in read]
    assert positions == sorted(positions)
    assert len(committed) > 2000


def test_feed_filters_by_model_and_skips_ahead_when_caught_up():
    Country.objects.create(code="fr", name="France")
    Customer.objects.create(name="Ada")
    page = feed.read_changes(None, models=["customers.country"])
    assert [c.model for c in page.changes] == ["customers.country"]
    assert page.next > page.changes[-1].position
    with pytest.raises(LookupError):
        feed.read_changes(None, models=["customers.internalnote"])


@pytest.mark.parametrize("rows", [1, 2, 9, 10, 11])
def test_pages_of_any_size_are_read_whole(rows):
    Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(rows)])
    for i in range(rows):
        Customer.objects.filter(name=f"c{i}").update(email=f"c{i}@example.com")
    seen, after = [], None
    pages = 0
    while True:
        page = feed.read_changes(after, limit=10)
        pages += 1
        seen.extend(page.changes)
        after = page.next
        if page.caught_up and not page.held_back:
            break
    assert [(c.op, c.new["name"]) for c in seen] == [("insert", f"c{i}") for i in range(rows)] + [
        ("update", f"c{i}") for i in range(rows)
    ]
    assert pages >= 2 * rows // 10 + 1


def test_cursors_are_opaque_and_garbage_is_refused():
    position = feed.Position(123, 456)
    assert feed.Position.decode(position.encode()) == position
    for garbage in ["", "x", "123.456", "YzEuMS4y====", "c1.1.2", "🙂", "a" * 500]:
        with pytest.raises(feed.InvalidCursor):
            feed.Position.decode(garbage)


def test_a_cursor_older_than_the_retained_log_is_gone():
    Customer.objects.bulk_create([Customer(name=f"c{i}") for i in range(5)])
    first = feed.read_changes(None, limit=2)
    second = feed.read_changes(first.next, limit=2)
    # An operator prunes the first three changes by hand.
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM pubsubpull_change WHERE id IN "
            "(SELECT id FROM pubsubpull_change ORDER BY txid, id LIMIT 3)"
        )
    with pytest.raises(feed.CursorExpired) as gone:
        feed.read_changes(first.next)
    assert "snapshot" in str(gone.value)
    # Past the horizon a cursor still works, and a new reader starts there.
    assert names(feed.read_changes(second.next)) == ["c4"]
    assert names(feed.read_changes(None)) == ["c3", "c4"]


def test_long_poll_wakes_on_notify():
    _, after = follow()
    started = time.monotonic()
    timer = threading.Timer(0.3, lambda: _insert_elsewhere("late"))
    timer.start()
    page = longpoll.wait_for_changes(after, timeout=10)
    elapsed = time.monotonic() - started
    timer.join()
    assert names(page) == ["late"]
    assert 0.25 < elapsed < 3


def test_long_poll_serves_a_change_held_back_by_an_older_transaction():
    _, after = follow()
    blocker = psycopg.connect(dsn())
    blocker.execute("SELECT pg_current_xact_id()")
    _insert_elsewhere("held back")
    timer = threading.Timer(0.4, blocker.rollback)
    timer.start()
    started = time.monotonic()
    page = longpoll.wait_for_changes(after, timeout=10)
    timer.join()
    blocker.close()
    assert names(page) == ["held back"]
    assert time.monotonic() - started < 3


def test_a_hold_back_after_a_long_one_is_read_again_soon():
    """The re-reads of a held-back page back off, but only while nothing is served.

    Under steady writes a change is often behind a transaction that is open
    for a few more ms. Once served, the next hold-back starts its re-reads
    soon again: a backoff still grown by an earlier long hold-back kept
    read-your-writes waits at a second (p99 1.1 s, benchmarks/README.rst).
    """
    _, after = follow()
    # A long hold-back: the re-reads back off to their longest delay.
    blocker = psycopg.connect(dsn())
    blocker.execute("SELECT pg_current_xact_id()")
    _insert_elsewhere("first")
    timer = threading.Timer(2.5, blocker.rollback)
    timer.start()
    page = longpoll.wait_for_changes(after, timeout=20)
    timer.join()
    assert names(page) == ["first"]
    # A short one right after: served soon after its blocker ends.
    blocker.execute("SELECT pg_current_xact_id()")
    _insert_elsewhere("second")
    timer = threading.Timer(0.1, blocker.rollback)
    started = time.monotonic()
    timer.start()
    page = longpoll.wait_for_changes(page.next, timeout=20)
    elapsed = time.monotonic() - started
    timer.join()
    blocker.close()
    assert names(page) == ["second"]
    # Rolled back at 0.1 s; re-read within a few short delays, not the longest (1 s).
    assert elapsed < 0.8, elapsed


def test_long_poll_times_out_with_an_empty_page():
    _, after = follow()
    started = time.monotonic()
    page = longpoll.wait_for_changes(after, timeout=0.3)
    assert page.changes == []
    assert 0.25 < time.monotonic() - started < 2


def _insert_elsewhere(name: str) -> None:
    with psycopg.connect(dsn(), autocommit=True) as conn:
        conn.execute(INSERT, [name])


def test_a_long_transaction_in_another_database_does_not_hold_the_feed_back():
    """Microservices share PostgreSQL servers; xids are cluster-wide, databases are not."""
    with psycopg.connect(dsn("postgres")) as elsewhere:
        elsewhere.execute("SELECT pg_current_xact_id()")
        Customer.objects.create(name="served")
        assert names(feed.read_changes(None)) == ["served"]
        elsewhere.rollback()


def test_now_is_not_pulled_back_by_a_long_transaction_in_another_database():
    """A subscription starting "now" must not get what was committed before it."""
    with psycopg.connect(dsn("postgres")) as elsewhere:
        elsewhere.execute("SELECT pg_current_xact_id()")
        Customer.objects.create(name="before now")
        now = feed.current_position()
        assert feed.read_changes(now).changes == []
        Customer.objects.create(name="after now")
        assert names(feed.read_changes(now)) == ["after now"]
        elsewhere.rollback()


def test_a_snapshot_is_not_followed_by_its_own_rows_again_beside_a_long_transaction_elsewhere():
    """The first snapshot page's feed_position is the feed's fence, not the server's xmin.

    Another service's transaction open on the same server since before the rows
    were written put it behind them, and a pull then handled every row twice,
    from the snapshot and again from the feed (tests/test_pull_command.py counted
    48 rows of 24 while another suite ran on the server).
    """
    from pubsubpull.publisher import snapshot

    with psycopg.connect(dsn("postgres")) as elsewhere:
        elsewhere.execute("SELECT pg_current_xact_id()")
        Customer.objects.bulk_create([Customer(name="a"), Customer(name="b")])
        page = snapshot.read_instances("customers.customer", limit=10)
        assert len(page.instances) == 2
        assert feed.read_changes(page.feed_position).changes == []
        elsewhere.rollback()


def test_a_reader_inside_a_transaction_is_not_served_its_own_uncommitted_changes():
    from django.db import transaction

    _insert_elsewhere("committed before")
    with transaction.atomic():
        Customer.objects.create(name="mine, not yet committed")
        page = feed.read_changes(None)
        assert names(page) == ["committed before"]
    assert names(feed.read_changes(page.next)) == ["mine, not yet committed"]


def test_changes_render_as_json_text_exactly_as_their_dicts():
    import json

    from django.contrib.auth.models import User

    User.objects.create_user("ada", password="secret")
    Customer.objects.create(name="Ada 🙂", notes="internal")
    Customer.objects.update(email="ada@example.com")
    with connection.cursor() as cursor:
        # Written before the registration excluded a column: never served.
        cursor.execute(
            "INSERT INTO pubsubpull_change (txid, model, object_pk, op, at, old, new) "
            "VALUES (pg_current_xact_id()::text::bigint, 'customers.customer', '7', 'delete', "
            "now(), %s, NULL)",
            ['{"id": 7, "notes": "old secret"}'],
        )
    changes = feed.read_changes(None).changes
    assert len(changes) == 4
    for change in changes:
        assert json.loads(change.as_json_text()) == change.as_json()
        assert change.at.tzinfo is not None
    assert changes[-1].old == {"id": 7} and changes[-1].pk == 7
    assert "secret" not in changes[-1].as_json_text()


def test_items_rendered_by_postgresql_are_the_protocol_items_byte_for_byte():
    """The page statement renders each item; it must be what change_item_json() gives."""
    import json
    import uuid

    from django.contrib.auth.models import User
    from django.db import transaction

    from pubsubpull.protocol import items
    from pubsubpull.protocol.cursor import Position

    ada = User.objects.create_user("ada", password="secret")
    with transaction.atomic(), connection.cursor() as cursor:
        # What the request middleware sends with a write (pubsubpull.capture.context).
        request = {"id": str(uuid.uuid4()), "user_id": ada.pk, "method": "PUT", "path": '/é"x',
                   # W3C trace context, as kept (a tracestate value may hold " and \).
                   "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                   "tracestate": 'a=q"uo\\te,b=x y'}  # fmt: skip
        cursor.execute("SELECT set_config('pubsubpull.context', %s, true)", [json.dumps(request)])
        Customer.objects.create(name='Ada "quoted" \\ back\tslash 🙂 é', notes="internal")
    Customer.objects.create(name="plain")
    Customer.objects.filter(name="plain").update(email="p@example.com")
    Customer.objects.filter(name="plain").update(id=99)  # the key changes
    Customer.objects.filter(id=99).delete()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE customers_customer CASCADE")
    changes = feed.read_changes(None, models=["customers.customer", "auth.user"]).changes
    assert [c.op for c in changes] == [
        "insert", "insert", "insert", "update", "update", "delete", "truncate",
    ]  # fmt: skip
    assert all(c.item_json is not None for c in changes)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.id, to_jsonb(c.at) #>> '{}', c.old::text, c.new::text, "
            "r.user_id, r.method, r.path, r.traceparent, r.tracestate FROM pubsubpull_change AS c "
            "LEFT JOIN pubsubpull_request AS r ON r.id = c.request_id "
            "WHERE c.id = ANY(%s) ORDER BY c.txid, c.id",
            [[c.id for c in changes]],
        )
        stored = cursor.fetchall()
    for change, (id_, at, old, new, user, method, path, trace, state) in zip(
        changes, stored, strict=True
    ):
        values = json.loads(new or old or "{}")
        pk_column = "id"
        expected = items.change_item_json(
            id_, Position(change.txid, id_).encode(), change.model, values.get(pk_column),
            change.op, at, old or "null", new or "null",
            items.request_item(user, method, path, trace, state),
        )  # fmt: skip
        assert change.as_json_text() == expected
        assert change.as_json() == json.loads(expected)
        assert change.at.tzinfo is not None
    assert changes[0].model == "auth.user" and changes[0].request is None
    assert changes[1].request["tracestate"] == 'a=q"uo\\te,b=x y'
    assert [c.trace()[0] is not None for c in changes] == [False, True, *[False] * 5]
    assert changes[1].request == {
        "user": ada.pk,
        "method": "PUT",
        "path": '/é"x',
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": 'a=q"uo\\te,b=x y',
    }
    assert changes[1].user_id == ada.pk and "notes" not in changes[1].new


def test_long_polls_keep_waking_one_after_another():
    """The listener keeps serving notifications after the first (it once hung on one)."""
    for n in range(3):
        _, after = follow()
        started = time.monotonic()
        timer = threading.Timer(0.2, lambda n=n: _insert_elsewhere(f"late {n}"))
        timer.start()
        page = longpoll.wait_for_changes(after, timeout=10)
        timer.join()
        assert names(page) == [f"late {n}"]
        assert time.monotonic() - started < 3


def test_a_page_is_read_in_index_order_and_not_sorted_again(transactional_db):
    """The page statement walks the (txid, id) index and serves that order as it is.

    The order is the feed's promise; a sort of the rendered page on top of the
    index walk cost a tenth of the statement (it was there while the request
    rows were hash-joined to the changes).
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO customers_customer (name, email, newsletter, notes, created, updated) "
            "SELECT 'c' || i, '', false, '', now(), now() FROM generate_series(1, 3000) AS i"
        )
        cursor.execute("ANALYZE pubsubpull_change")
    registration = feed.feed_models(["customers.customer"])[0]
    params = {"txid": 0, "id": 0, "models": [registration.label], "limit": 1000, "scan": 1000}
    sql = feed.page_sql({registration.label: registration}, {}, params)
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    # The page's own plan: the figures row, then the changes, whose top node
    # joins the requests to the limited walk of the index (or of a bitmap of
    # it, which sorts inside the limit on a small log) -- nothing above it sorts.
    branches = [line for line in plan.splitlines() if line.startswith("  ->  ")]
    changes = plan.splitlines()
    changes = changes[changes.index(branches[-1]) :]
    nodes = [line.strip() for line in changes if line.strip().startswith("->")]
    assert branches[-1].strip().startswith("->  Nested Loop Left Join"), plan
    assert nodes[1].startswith("->  Limit"), plan
    assert "pubsubpull_change_feed" in "\n".join(changes), plan
    # And the page it reads is in feed order, every change once.
    page = feed.read_changes(None, limit=1000, models=[registration.label])
    positions = [change.position for change in page.changes]
    assert len(positions) == 1000 and positions == sorted(set(positions))


def test_the_cursor_postgresql_renders_is_the_one_python_encodes():
    """Every digit in every place, the extremes included: the page's SQL spells
    each change's cursor as Position.encode() does (it only drops padding)."""
    rng = random.Random(13)
    positions = [(0, 0), (1, 1), (feed.MAX_ID, feed.MAX_ID), (feed.MAX_ID, 0), (9, 99)]
    positions += [(int("9" * n), int("8" * m)) for n in range(1, 19) for m in (1, 7, 18)]
    positions += [(rng.randrange(feed.MAX_ID), rng.randrange(feed.MAX_ID)) for _ in range(300)]
    positions += [
        (rng.randrange(10**n), rng.randrange(10**m)) for n in range(1, 19) for m in (2, 12)
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT c.txid, c.id, {feed.CURSOR_SQL} FROM unnest(%s::bigint[], %s::bigint[]) "
            "AS c (txid, id)",
            [[t for t, _ in positions], [i for _, i in positions]],
        )
        rendered = cursor.fetchall()
    assert len(rendered) == len(positions)
    for txid, id_, text in rendered:
        assert text == feed.Position(txid, id_).encode(), (txid, id_)


def test_keys_are_rendered_as_json_of_their_type_on_a_page_of_several_models():
    """A text key (a country's code) is a JSON string, an integer key a number,
    both on one page, as the Python path would give them."""
    Country.objects.create(code='"\\', name="Quote")
    customer = Customer.objects.create(name="Ada")
    page = feed.read_changes(None, models=["customers.country", "customers.customer"])
    items = [json.loads(text) for text in page.texts()]
    assert [(i["model"], i["pk"]) for i in items] == [
        ("customers.country", '"\\'),
        ("customers.customer", customer.pk),
    ]
    for label in ("customers.country", "customers.customer"):
        [alone] = feed.read_changes(None, models=[label]).texts()
        assert json.loads(alone) == next(i for i in items if i["model"] == label)
