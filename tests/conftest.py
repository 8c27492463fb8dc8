"""Shared fixtures: the publisher test service on a real PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection, connections


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


def pytest_configure(config):
    from django.db.models.signals import post_migrate

    post_migrate.connect(_empty_change_log_after_flush, dispatch_uid="tests-empty-change-log")


def _empty_change_log_after_flush(sender, using, **kwargs):
    """Leave no change after a transactional test's flush, for whatever test comes next.

    The flush empties every table with one TRUNCATE, which the published tables'
    triggers record; a test in a transaction (``db``) that runs after it would
    find those rows. Serially pytest-django runs such tests first, but under
    pytest-xdist a worker's files come in any order. The flush sends post_migrate
    (once per app; this acts on pubsubpull's).
    """
    if sender.name != "pubsubpull":
        return
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT to_regclass('pubsubpull_change') IS NOT NULL")
        if cursor.fetchone()[0]:
            cursor.execute("TRUNCATE pubsubpull_change, pubsubpull_request")


@pytest.fixture(autouse=True)
def _empty_change_log(request):
    """Start transactional tests with an empty change log.

    Between such tests Django empties every table with one TRUNCATE, and the
    published tables' triggers faithfully record that TRUNCATE.
    """
    marker = request.node.get_closest_marker("django_db")
    transactional = "transactional_db" in request.fixturenames or (
        marker is not None and marker.kwargs.get("transaction")
    )
    if transactional:
        request.getfixturevalue("transactional_db")
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE pubsubpull_change, pubsubpull_request")


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
