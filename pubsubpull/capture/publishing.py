"""The SQL that publishes a registered table, by capture version, and its state in a database.

``PUBSUBPULL["CAPTURE_VERSION"]`` chooses what ``makemigrations`` writes
(and ``pubsubpull_triggers install`` installs):

- 3: four triggers calling the generic ``pubsubpull_capture`` function, which
  writes one jsonb row per change into the shared ``pubsubpull_change``
  (:mod:`pubsubpull.capture.triggers`);
- 4: the model's own log table, composite type and capture functions, one
  log row per chunk of a statement's rows (:mod:`pubsubpull.capture.statement_log`).

Both fingerprint their triggers alike, so :func:`status` tells installed
triggers from outdated (of the other version too), missing and orphaned ones.
"""

from __future__ import annotations

from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, router

from pubsubpull import conf
from pubsubpull.capture import statement_log, triggers
from pubsubpull.capture.registry import Registration, registrations
from pubsubpull.capture.triggers import TRIGGER_NAMES, TriggerStatus


def _log(registration: Registration, using: str | None) -> statement_log.LogTable:
    alias = using or router.db_for_write(registration.model) or DEFAULT_DB_ALIAS
    return statement_log.log_table(registration, connections[alias])


def capture_sql(registration: Registration, using: str | None = None) -> list[str]:
    """The statements that publish ``registration``'s table (what a migration freezes)."""
    if conf.capture_version() == 4:
        return statement_log.create_sql(_log(registration, using))
    return triggers.create_sql(registration)


def log_names(registration: Registration, using: str | None = None) -> dict[str, Any] | None:
    """The names of the log version 4's SQL makes (``LogTable.names``); None for version 3."""
    if conf.capture_version() == 4:
        return _log(registration, using).names()
    return None


def status(using: str = DEFAULT_DB_ALIAS) -> list[TriggerStatus]:
    """The trigger state of each model published in ``using``, then each orphaned table."""
    installed = triggers.installed_triggers(using)
    result = []
    for registration in registrations():
        if not router.allow_migrate_model(using, registration.model):
            continue  # its table lives in another database
        found = installed.pop(registration.table, {})
        expected = f"pubsubpull {triggers.fingerprint(capture_sql(registration, using))}"
        if not found:
            state = TriggerStatus.MISSING
        elif set(found) == set(TRIGGER_NAMES) and all(c == expected for c in found.values()):
            state = TriggerStatus.INSTALLED
        else:
            state = TriggerStatus.OUTDATED
        result.append(TriggerStatus(registration.table, registration.label, state))
    for table in sorted(installed):
        result.append(TriggerStatus(table, None, TriggerStatus.ORPHANED))
    return result


def install(registration: Registration, using: str = DEFAULT_DB_ALIAS) -> None:
    """Install or replace ``registration``'s triggers, atomically."""
    statements = capture_sql(registration, using)
    triggers.execute(triggers.install_sql(registration.table, statements), using)
