"""The SQL that publishes a table, and what the database has installed.

Every published table carries four statement-level triggers that call the one
generic function ``pubsubpull_capture``, installed from ``sql/capture_v<n>.sql``
by pubsubpull's own migrations (0001 installs version 1, 0006 version 2,
0012 version 3).
The triggers' SQL is generated here, frozen into a migration by
``makemigrations``, and fingerprinted in ``COMMENT ON TRIGGER`` so
``manage.py pubsubpull_triggers`` can tell installed triggers from outdated,
missing and orphaned ones (``pubsubpull.capture.publishing``, which also
chooses between this version and version 4's SQL).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from django.db import connections, transaction

from pubsubpull.capture.registry import Registration

FUNCTION = "pubsubpull_capture"
TRIGGER_PREFIX = "pubsubpull_"

# (trigger name, event, transition tables)
TRIGGERS = (
    ("pubsubpull_insert", "INSERT", "REFERENCING NEW TABLE AS new_rows "),
    ("pubsubpull_update", "UPDATE", "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "),
    ("pubsubpull_delete", "DELETE", "REFERENCING OLD TABLE AS old_rows "),
    ("pubsubpull_truncate", "TRUNCATE", ""),
)
TRIGGER_NAMES = tuple(name for name, _, _ in TRIGGERS)


def function_sql(version: int = 1, *, function_only: bool = False) -> str:
    """The capture function's SQL, as frozen in ``sql/capture_v<version>.sql``.

    ``function_only`` leaves out what comes before ``CREATE OR REPLACE
    FUNCTION`` (version 1 also creates and resets the wake-up sequences, which
    going back from version 2 must not do: it would strand armed sleepers).
    """
    return sql_file(f"capture_v{version}", function_only=function_only)


def sql_file(name: str, *, function_only: bool = False) -> str:
    """The frozen SQL of ``sql/<name>.sql``; ``function_only``: its first function and on."""
    text = resources.files("pubsubpull.capture").joinpath(f"sql/{name}.sql").read_text()
    if function_only:
        text = text[text.index("CREATE OR REPLACE FUNCTION") :]
    return text


def quote_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def drop_sql(table: str) -> list[str]:
    """Remove the triggers from ``table``; a no-op when the table is gone."""
    drops = " ".join(
        f"DROP TRIGGER IF EXISTS {name} ON {quote_name(table)};" for name in TRIGGER_NAMES
    )
    return [
        f"DO $$ BEGIN IF to_regclass({quote_literal(quote_name(table))}) IS NOT NULL "
        f"THEN {drops} END IF; END $$"
    ]


def create_sql(registration: Registration) -> list[str]:
    """The four CREATE TRIGGER statements that publish ``registration``'s table.

    This is what a migration freezes; ``install_sql`` wraps it.
    """
    args = ", ".join(
        quote_literal(a)
        for a in (registration.label, registration.pk_column, *registration.excluded_columns)
    )
    return [
        f"CREATE TRIGGER {name} AFTER {event} ON {quote_name(registration.table)} {tables}"
        f"FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}({args})"
        for name, event, tables in TRIGGERS
    ]


def fingerprint(create_statements: list[str]) -> str:
    return hashlib.sha256("\n".join(create_statements).encode()).hexdigest()[:16]


def install_sql(table: str, create_statements: list[str]) -> list[str]:
    """Replace ``table``'s triggers by ``create_statements``, fingerprinted in comments."""
    comment = quote_literal(f"pubsubpull {fingerprint(create_statements)}")
    comments = [
        f"COMMENT ON TRIGGER {name} ON {quote_name(table)} IS {comment}" for name in TRIGGER_NAMES
    ]
    return [*drop_sql(table), *create_statements, *comments]


@dataclass(frozen=True)
class TriggerStatus:
    """The state of one table's triggers in one database."""

    table: str
    label: str | None  # None for an orphan: a table no registration names
    state: str  # installed, outdated, missing, orphaned

    INSTALLED = "installed"
    OUTDATED = "outdated"
    MISSING = "missing"
    ORPHANED = "orphaned"


_INSTALLED_QUERY = """
SELECT c.relname, t.tgname, coalesce(d.description, '')
FROM pg_trigger AS t
JOIN pg_class AS c ON c.oid = t.tgrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_description AS d
    ON d.objoid = t.oid AND d.classoid = 'pg_trigger'::regclass
WHERE NOT t.tgisinternal
    AND t.tgname = ANY(%s)
    AND n.nspname = ANY(current_schemas(false))
"""


def installed_triggers(using: str = "default") -> dict[str, dict[str, str]]:
    """``{table: {trigger name: comment}}`` for pubsubpull triggers in ``using``."""
    found: dict[str, dict[str, str]] = {}
    with connections[using].cursor() as cursor:
        cursor.execute(_INSTALLED_QUERY, [list(TRIGGER_NAMES)])
        for table, name, comment in cursor.fetchall():
            found.setdefault(table, {})[name] = comment
    return found


def uninstall(table: str, using: str = "default") -> None:
    """Remove pubsubpull's triggers from ``table``."""
    execute(drop_sql(table), using)


def execute(statements: list[str], using: str) -> None:
    """Run ``statements`` in ``using``, atomically."""
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
