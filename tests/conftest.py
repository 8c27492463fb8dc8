"""Shared fixtures: the publisher test service on a real PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection


def dsn(dbname: str | None = None) -> str:
    """A libpq connection string for Django's database (the test database in tests)."""
    settings = connection.settings_dict
    params = {
        "dbname": dbname or settings["NAME"],
        "host": settings["HOST"],
        "port": settings["PORT"],
        "user": settings["USER"],
        "password": settings["PASSWORD"],
    }
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items() if v})


def _registrations(models):
    """The registrations of ``models`` (default: every model published in "default")."""
    from django.db import router

    from pubsubpull.capture.registry import get_registration, registrations

    if models is not None:
        return [get_registration(model) for model in models]
    return [r for r in registrations() if router.allow_migrate_model("default", r.model)]


def install_v4(models=None) -> None:
    """Capture version 4 on ``models``' tables in place of version 3, as its SQL makes it."""
    from django.db import transaction

    from pubsubpull.capture import statement_log, triggers

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"ALTER SEQUENCE pubsubpull_change_id_seq INCREMENT BY {statement_log.CHUNK}"
        )
        for registration in _registrations(models):
            log = statement_log.log_table(registration, connection)
            for statement in triggers.install_sql(log.table, statement_log.create_sql(log)):
                cursor.execute(statement)


def restore_v3(models=None) -> None:
    """Version 3's triggers back on ``models``' tables, their v4 logs dropped, ids by 1."""
    from pubsubpull.capture import statement_log, triggers

    for registration in _registrations(models):
        v3 = triggers.install_sql(registration.table, triggers.create_sql(registration))
        triggers.execute(v3, "default")
        log = statement_log.log_table(registration, connection)
        triggers.execute(statement_log.drop_sql(log.names()), "default")
    with connection.cursor() as cursor:
        cursor.execute("ALTER SEQUENCE pubsubpull_change_id_seq INCREMENT BY 1")


@pytest.fixture(params=[3, 4], ids=["capture v3", "capture v4"])
def capture_version(request, transactional_db):
    """Each capture version in turn on every published table of "default"."""
    if request.param == 4:
        install_v4()
        yield 4
        restore_v3()
    else:
        yield 3


@pytest.fixture
def raw_connection(transactional_db):
    """A separate psycopg connection to the test database, in autocommit mode."""
    with psycopg.connect(dsn(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def changes():
    """The change log as a list of dicts, oldest first."""
    from pubsubpull.models import Change

    def read(**filters):
        return list(
            Change.objects.filter(**filters)
            .order_by("id")
            .values("txid", "model", "object_pk", "op", "old", "new", "request_id")
        )

    return read


@pytest.fixture(autouse=True)
def _empty_change_log(request):
    """Start every database test with an empty change log.

    Between transactional tests Django empties every table with one TRUNCATE,
    and the published tables' triggers faithfully record that TRUNCATE. A test
    in a transaction (``db``) that comes after one would find those rows:
    serially pytest-django runs such tests first, but a pytest-xdist process
    takes its files in any order. They are deleted on a connection of their own
    (the test's transaction is already open), and only when there are any.
    """
    marker = request.node.get_closest_marker("django_db")
    transactional = "transactional_db" in request.fixturenames or (
        marker is not None and marker.kwargs.get("transaction")
    )
    if transactional:
        request.getfixturevalue("transactional_db")
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE pubsubpull_change, pubsubpull_request")
    elif marker is not None or "db" in request.fixturenames:
        request.getfixturevalue("db")
        with connection.cursor() as cursor:
            cursor.execute("SELECT EXISTS (SELECT FROM pubsubpull_change)")
            left = cursor.fetchone()[0]
        if left:
            with psycopg.connect(dsn(), autocommit=True) as conn:
                conn.execute("DELETE FROM pubsubpull_change")
                conn.execute("DELETE FROM pubsubpull_request")


@pytest.fixture(autouse=True)
def _request_status_written():
    """Let no test end with request rows still queued for their status.

    RequestMiddleware writes them from a background thread; one still busy
    could touch the next test's tables or hold a connection to a database
    about to be dropped.
    """
    yield
    from pubsubpull.capture.middleware import flush

    assert flush(timeout=30), "request status rows were still queued after 30 s"


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """Name the ledger's test database after the default one, as the publisher's
    settings do: a subprocess given PUBLISHER_DB_NAME=<test database> looks for
    <test database>_other. Under pytest-xdist the worker's suffix would otherwise
    come after ``_other`` (test_x_other_gw0, not test_x_gw0_other)."""
    from django.conf import settings

    default = settings.DATABASES["default"]
    name = default.get("TEST", {}).get("NAME") or f"test_{default['NAME']}"
    settings.DATABASES["other"].setdefault("TEST", {})["NAME"] = f"{name}_other"


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """pytest-django's, then: close the feed's LISTEN and reader connections before
    the test databases are dropped (a session fixture of our own would be torn
    down after them)."""
    yield
    from pubsubpull.publisher import longpoll

    longpoll.stop_listening()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, files with slow tests first (otherwise in pytest-django's order).

    A process takes a whole file at a time, in this order: a file of a minute and
    a half (the demo's tour) taken last would run alone while the other process
    has nothing left to do.
    """
    if not hasattr(config, "workerinput"):  # not in a pytest-xdist process
        return
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
