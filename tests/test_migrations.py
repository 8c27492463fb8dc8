"""makemigrations writes the trigger migrations, and they reverse cleanly.

These tests run manage.py in subprocesses against a throw-away app and a
throw-away database, the way a user's project meets pubsubpull.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import psycopg
import pytest

from .conftest import dsn

ROOT = Path(__file__).resolve().parent.parent

MODELS = """
import os

from django.db import models

import pubsubpull

MODE = os.environ.get("ROUNDTRIP_MODE", "plain")


class Thing(models.Model):
    if MODE in ("altered", "excluded", "unregistered"):
        name = models.TextField()
    else:
        name = models.CharField(max_length=50)
    secret = models.CharField(max_length=50, default="")

    def __str__(self):
        return self.name


if MODE in ("registered", "altered"):
    pubsubpull.register(Thing)
elif MODE == "excluded":
    pubsubpull.register(Thing, exclude=["secret"])
"""

SETTINGS = """
import os

from publisher.settings import *  # noqa: F403

INSTALLED_APPS = [  # noqa: F405
    a for a in INSTALLED_APPS if a not in ("customers", "ledger")  # noqa: F405
] + ["roundtrip"]
DATABASES = {{"default": {{**DATABASES["default"], "NAME": {name!r}}}}}  # noqa: F405
DATABASE_ROUTERS = []
ROOT_URLCONF = "rt_urls"
PUBSUBPULL = {{}}
{extra}
"""


class Project:
    """A scratch project: the roundtrip app, its settings, and its own database."""

    def __init__(self, tmp_path: Path, extra_settings: str = ""):
        self.dir = tmp_path
        self.database = f"pubsubpull_rt_{uuid.uuid4().hex[:10]}"
        app = tmp_path / "roundtrip"
        (app / "migrations").mkdir(parents=True)
        (app / "__init__.py").write_text("")
        (app / "migrations" / "__init__.py").write_text("")
        (app / "models.py").write_text(MODELS)
        (tmp_path / "rt_urls.py").write_text("urlpatterns = []\n")
        (tmp_path / "rt_settings.py").write_text(
            SETTINGS.format(name=self.database, extra=textwrap.dedent(extra_settings))
        )
        self.migrations = app / "migrations"

    def manage(self, *args: str, mode: str = "plain", check: bool = True):
        env = {
            **os.environ,
            "ROUNDTRIP_MODE": mode,
            "DJANGO_SETTINGS_MODULE": "rt_settings",
            "PYTHONPATH": os.pathsep.join(
                [str(self.dir), str(ROOT / "test-projects" / "publisher"), str(ROOT)]
            ),
        }
        result = subprocess.run(
            [sys.executable, "-m", "django", *args],
            cwd=self.dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def sql(self, query: str, *params):
        with psycopg.connect(dsn(self.database), autocommit=True) as conn:
            cursor = conn.execute(query, params or None)
            return cursor.fetchall() if cursor.description else None

    def triggers(self) -> list[tuple[str, str]]:
        return self.sql(
            "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE t.tgname LIKE 'pubsubpull%%' ORDER BY 1, 2"
        )

    def function_exists(self) -> bool:
        return bool(self.sql("SELECT 1 FROM pg_proc WHERE proname = 'pubsubpull_capture'"))

    def captured(self) -> list[tuple]:
        return self.sql("SELECT op, object_pk, new FROM pubsubpull_change ORDER BY id")


@pytest.fixture
def project(tmp_path, db):
    created = Project(tmp_path)
    with psycopg.connect(dsn(), autocommit=True) as server:
        server.execute(f'CREATE DATABASE "{created.database}"')
        yield created
        server.execute(f'DROP DATABASE IF EXISTS "{created.database}" WITH (FORCE)')


def migration_files(project: Project) -> list[str]:
    return sorted(p.name for p in project.migrations.glob("0*.py"))


THING_TRIGGERS = [
    ("roundtrip_thing", name)
    for name in (
        "pubsubpull_delete",
        "pubsubpull_insert",
        "pubsubpull_truncate",
        "pubsubpull_update",
    )
]


@pytest.mark.slow
def test_register_alter_exclude_unregister_and_migrate_back_to_zero(project):
    project.manage("makemigrations", "roundtrip", mode="plain")
    project.manage("migrate", mode="plain")
    assert project.function_exists()
    assert project.triggers() == []

    # Registering writes a migration that installs the trigger.
    out = project.manage("makemigrations", "roundtrip", mode="registered").stdout
    assert "Install the pubsubpull triggers publishing roundtrip.thing" in out
    project.manage("migrate", mode="registered")
    assert project.triggers() == THING_TRIGGERS
    project.sql("INSERT INTO roundtrip_thing (name, secret) VALUES ('a', 's1')")
    assert project.captured() == [("insert", "1", {"id": 1, "name": "a", "secret": "s1"})]
    assert "installed" in project.manage("pubsubpull_triggers", mode="registered").stdout

    # A column type change is a plain AlterField; capture carries on.
    out = project.manage("makemigrations", "roundtrip", mode="altered").stdout
    assert "Alter field name on thing" in out
    assert "pubsubpull" not in out
    project.manage("migrate", mode="altered")
    project.sql("INSERT INTO roundtrip_thing (name, secret) VALUES (repeat('b', 80), 's2')")
    assert project.captured()[-1][2]["name"] == "b" * 80

    # Excluding a field replaces the trigger.
    out = project.manage("makemigrations", "roundtrip", mode="excluded").stdout
    assert "Update the pubsubpull triggers publishing roundtrip.thing" in out
    project.manage("migrate", mode="excluded")
    project.sql("UPDATE roundtrip_thing SET secret = 'new' WHERE id = 1")
    assert project.captured()[-1][0] == "insert"  # only `secret` changed: nothing published
    project.sql("UPDATE roundtrip_thing SET name = 'a2', secret = 'x' WHERE id = 1")
    assert project.captured()[-1] == ("update", "1", {"id": 1, "name": "a2"})

    # Unregistering writes a migration that removes it.
    out = project.manage("makemigrations", "roundtrip", mode="unregistered").stdout
    assert "Remove the pubsubpull triggers publishing roundtrip.thing" in out
    project.manage("migrate", mode="unregistered")
    assert project.triggers() == []
    before = len(project.captured())
    project.sql("INSERT INTO roundtrip_thing (name, secret) VALUES ('c', 's3')")
    assert len(project.captured()) == before

    # Nothing left to detect.
    assert project.manage("makemigrations", "--check", "--dry-run", mode="unregistered")
    assert migration_files(project) == [
        "0001_initial.py",
        "0002_publish_thing.py",
        "0003_alter_thing_name.py",
        "0004_publish_thing.py",
        "0005_unpublish_thing.py",
    ]

    # Backwards: each step restores exactly what was there before.
    project.manage("migrate", "roundtrip", "0004", mode="unregistered")
    assert project.triggers() == THING_TRIGGERS
    project.sql("UPDATE roundtrip_thing SET name = 'c2', secret = 'y' WHERE name = 'c'")
    assert "secret" not in project.captured()[-1][2]
    project.manage("migrate", "roundtrip", "0003", mode="unregistered")
    project.sql("UPDATE roundtrip_thing SET name = 'c3' WHERE name = 'c2'")
    assert project.captured()[-1][2]["secret"] == "y"
    project.manage("migrate", "roundtrip", "zero", mode="unregistered")
    assert project.triggers() == []
    project.manage("migrate", "pubsubpull", "zero", mode="unregistered")
    assert not project.function_exists()
    assert project.sql("SELECT to_regclass('pubsubpull_change')") == [(None,)]


@pytest.fixture
def project_v4(tmp_path, db):
    created = Project(tmp_path, 'PUBSUBPULL = {"CAPTURE_VERSION": 4}')
    with psycopg.connect(dsn(), autocommit=True) as server:
        server.execute(f'CREATE DATABASE "{created.database}"')
        yield created
        server.execute(f'DROP DATABASE IF EXISTS "{created.database}" WITH (FORCE)')


def _logged(project: Project) -> list[tuple]:
    """Every change recorded, through the view that reads every log table."""
    return project.sql("SELECT op, object_pk, new FROM pubsubpull_log_changes ORDER BY id")


def _log_tables(project: Project) -> list[str]:
    return [
        name
        for (name,) in project.sql(
            "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'pubsubpull_log'::regclass ORDER BY c.relname"
        )
    ]


@pytest.mark.slow
def test_capture_version_4_migrations_make_a_log_per_version_and_fold_it_back(project_v4):
    project = project_v4
    project.manage("makemigrations", "roundtrip", mode="plain")
    project.manage("migrate", mode="plain")

    out = project.manage("makemigrations", "roundtrip", mode="registered").stdout
    assert "Install the pubsubpull triggers publishing roundtrip.thing" in out
    project.manage("migrate", mode="registered")
    assert project.triggers() == THING_TRIGGERS
    # A version's two tables: chunks of statements of many rows, and one change a row.
    first_log = [t for t in _log_tables(project) if t != "pubsubpull_change"]
    assert len(first_log) == 2 and first_log[1] == first_log[0] + "_1"
    assert first_log[0].startswith("pubsubpull_log_roundtrip_thing_")
    project.sql("INSERT INTO roundtrip_thing (name, secret) VALUES ('a', 's1'), ('b', 's2')")
    assert _logged(project) == [
        ("insert", "1", {"id": 1, "name": "a", "secret": "s1"}),
        ("insert", "2", {"id": 2, "name": "b", "secret": "s2"}),
    ]
    assert project.captured() == []  # none in pubsubpull_change
    assert project.sql(f'SELECT rows FROM "{first_log[0]}"') == [(2,)]  # one row, two changes
    project.sql("UPDATE roundtrip_thing SET secret = 's1b' WHERE id = 1")  # one row
    assert project.sql(f'SELECT op, key FROM "{first_log[1]}"') == [("update", 1)]
    assert "installed" in project.manage("pubsubpull_triggers", mode="registered").stdout

    # A column's new type is a new version of the log, beside the first.
    out = project.manage("makemigrations", "roundtrip", mode="altered").stdout
    assert "Alter field name on thing" in out
    assert "Update the pubsubpull triggers publishing roundtrip.thing" in out
    project.manage("migrate", mode="altered")
    assert len(_log_tables(project)) == 5
    project.sql("INSERT INTO roundtrip_thing (name, secret) VALUES (repeat('c', 80), 's3')")
    assert _logged(project)[-1][2]["name"] == "c" * 80

    # Excluding a field: a third version, without it.
    project.manage("makemigrations", "roundtrip", mode="excluded")
    project.manage("migrate", mode="excluded")
    project.sql("UPDATE roundtrip_thing SET secret = 'new' WHERE id = 1")
    project.sql("UPDATE roundtrip_thing SET name = 'a2', secret = 'x' WHERE id = 1")
    assert _logged(project)[-1] == ("update", "1", {"id": 1, "name": "a2"})
    assert "installed" in project.manage("pubsubpull_triggers", mode="excluded").stdout

    project.manage("makemigrations", "roundtrip", mode="unregistered")
    project.manage("migrate", mode="unregistered")
    assert project.triggers() == []
    logged = _logged(project)
    assert len(logged) == 5
    assert project.manage("makemigrations", "--check", "--dry-run", mode="unregistered")

    # Backwards: each version's changes are folded into pubsubpull_change as its
    # log goes, in the same order, with the same ids.
    ids = project.sql("SELECT id FROM pubsubpull_log_changes ORDER BY id")
    project.manage("migrate", "roundtrip", "0004", mode="unregistered")
    assert project.triggers() == THING_TRIGGERS
    project.manage("migrate", "roundtrip", "0003", mode="unregistered")
    assert len(_log_tables(project)) == 5
    assert _logged(project) == logged
    project.manage("migrate", "roundtrip", "0002", mode="unregistered")
    assert _log_tables(project) == ["pubsubpull_change", *first_log]
    assert project.sql("SELECT id FROM pubsubpull_log_changes ORDER BY id") == ids
    project.sql("UPDATE roundtrip_thing SET name = 'a3' WHERE id = 1")
    assert _logged(project)[-1][2]["secret"] == "x"  # the first version publishes it
    project.manage("migrate", "roundtrip", "zero", mode="unregistered")
    assert _log_tables(project) == ["pubsubpull_change"]
    assert project.captured() == _logged(project)
    assert [row[:2] for row in project.captured()] == [
        ("insert", "1"), ("insert", "2"), ("update", "1"), ("insert", "3"), ("update", "1"),
        ("update", "1"),
    ]  # fmt: skip
    project.manage("migrate", "pubsubpull", "zero", mode="unregistered")
    assert project.sql("SELECT to_regclass('pubsubpull_change')") == [(None,)]


def test_makemigrations_check_reports_a_missing_trigger_migration(project):
    project.manage("makemigrations", "roundtrip", mode="plain")
    result = project.manage(
        "makemigrations", "--check", "--dry-run", mode="registered", check=False
    )
    assert result.returncode == 1
    assert "Install the pubsubpull triggers publishing roundtrip.thing" in result.stdout


def test_migrate_says_when_a_trigger_is_missing(project):
    project.manage("makemigrations", "roundtrip", mode="plain")
    out = project.manage("migrate", mode="registered").stdout
    assert "roundtrip.thing (roundtrip_thing) is missing" in out  # registered, not migrated
    out = project.manage("migrate", mode="registered").stdout
    assert "have changes that are not yet reflected in a migration" in out

    project.manage("makemigrations", "roundtrip", mode="registered")
    out = project.manage("migrate", mode="registered").stdout
    assert "pubsubpull.W001" not in out
    project.sql("DROP TRIGGER pubsubpull_insert ON roundtrip_thing")
    out = project.manage("migrate", mode="registered").stdout
    assert "pubsubpull.W001: The pubsubpull trigger of roundtrip.thing" in out
    assert "is outdated" in out


def test_makemigrations_works_beside_django_pgtrigger(tmp_path, db):
    pytest.importorskip("pgtrigger")
    project = Project(tmp_path, extra_settings='INSTALLED_APPS += ["pgtrigger"]')
    (project.migrations.parent / "models.py").write_text(
        MODELS.replace(
            "    def __str__(self):",
            "    class Meta:\n"
            "        triggers = [pgtrigger.Protect(name='keep', operation=pgtrigger.Delete)]\n\n"
            "    def __str__(self):",
        ).replace("import pubsubpull\n", "import pgtrigger\n\nimport pubsubpull\n")
    )
    out = project.manage("makemigrations", "roundtrip", mode="registered").stdout
    assert "Install the pubsubpull triggers publishing roundtrip.thing" in out
    migration = (project.migrations / "0001_initial.py").read_text()
    assert "pgtrigger.migrations.AddTrigger" in migration
    assert "pubsubpull.operations.Publish" in migration


def test_publishing_a_model_of_an_installed_package_needs_a_migrations_app(project):
    (project.migrations.parent / "models.py").write_text(
        MODELS + "\nfrom django.contrib.auth.models import User\npubsubpull.register(User)\n"
    )
    result = project.manage("makemigrations", mode="plain", check=False)
    assert result.returncode != 0
    assert "PUBSUBPULL = {'MIGRATIONS_APP': 'yourapp'}" in result.stderr

    (project.dir / "rt_settings.py").write_text(
        (project.dir / "rt_settings.py").read_text()
        + "PUBSUBPULL = {'MIGRATIONS_APP': 'roundtrip'}\n"
    )
    out = project.manage("makemigrations", mode="plain").stdout
    assert "Install the pubsubpull triggers publishing auth.user" in out
    project.manage("migrate", mode="plain")
    project.sql(
        "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, "
        "email, is_staff, is_active, date_joined) "
        "VALUES ('pbkdf2_sha256$secret', false, 'ada', '', '', '', false, true, now())"
    )
    ((op, _, new),) = project.captured()
    assert op == "insert"
    assert new["username"] == "ada"
    assert "password" not in new


def test_a_model_on_a_database_that_is_not_postgresql_is_an_error(tmp_path):
    project = Project(
        tmp_path,
        extra_settings=f"""
        DATABASES = {{"default": {{
            "ENGINE": "django.db.backends.sqlite3", "NAME": {str(tmp_path / "db.sqlite3")!r}
        }}}}
        """,
    )
    result = project.manage("check", mode="registered", check=False)
    assert result.returncode != 0
    assert "pubsubpull.E001" in result.stderr
    assert "roundtrip.thing is published, but its database 'default' is sqlite" in result.stderr


def _capture_source(cursor) -> str:
    cursor.execute("SELECT prosrc FROM pg_proc WHERE proname = 'pubsubpull_capture'")
    (source,) = cursor.fetchone()
    return source


@pytest.mark.django_db(transaction=True)
def test_migration_0006_installs_capture_v2_and_reverses_to_v1(changes):
    """The function is replaced in place: the triggers call whichever is installed."""
    from django.core.management import call_command
    from django.db import connection

    from customers.models import Country
    from pubsubpull.capture import publishing

    with connection.cursor() as cursor:
        assert "pg_sequence_last_value" in _capture_source(cursor)
        # A sleeper's arm must survive going back and forth.
        cursor.execute("SELECT nextval('pubsubpull_wakeup_armed')")
        (armed,) = cursor.fetchone()
    before = {s.table: s.state for s in publishing.status()}
    try:
        call_command("migrate", "pubsubpull", "0005", verbosity=0)
        with connection.cursor() as cursor:
            assert "FROM pubsubpull_wakeup_always_at" in _capture_source(cursor)
            cursor.execute("SELECT last_value FROM pubsubpull_wakeup_armed")
            assert cursor.fetchone() == (armed,)
        Country.objects.create(code="fr", name="France")
        with connection.cursor() as cursor:
            # The table itself: Change reads the view 0015 makes.
            cursor.execute("SELECT op FROM pubsubpull_change WHERE model = 'customers.country'")
            assert cursor.fetchall() == [("insert",)]
    finally:
        call_command("migrate", "pubsubpull", verbosity=0)
    with connection.cursor() as cursor:
        assert "pg_sequence_last_value" in _capture_source(cursor)
        cursor.execute("SELECT last_value FROM pubsubpull_wakeup_armed")
        assert cursor.fetchone() == (armed,)
    Country.objects.filter(code="fr").update(name="République française")
    assert [c["op"] for c in changes(model="customers.country")] == ["insert", "update"]
    # The triggers' own SQL did not change, so neither did their fingerprints.
    assert {s.table: s.state for s in publishing.status()} == before
    assert set(before.values()) == {"installed"}
