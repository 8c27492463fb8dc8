"""System checks: published models need PostgreSQL and their triggers."""

from __future__ import annotations

import sys

from django.core import checks
from django.db import connections, router
from django.db.migrations.executor import MigrationExecutor

from pubsubpull import conf
from pubsubpull.capture import triggers
from pubsubpull.capture.registry import registrations


@checks.register(checks.Tags.models)
def check_postgresql(app_configs=None, **kwargs):
    errors = []
    for registration in registrations():
        alias = router.db_for_write(registration.model)
        if connections[alias].vendor != "postgresql":
            errors.append(
                checks.Error(
                    f"{registration.label} is published, but its database {alias!r} is "
                    f"{connections[alias].vendor}, not PostgreSQL.",
                    hint="pubsubpull records changes with PostgreSQL triggers; route the "
                    "model to a PostgreSQL database (django.db.backends.postgresql).",
                    obj=registration.model,
                    id="pubsubpull.E001",
                )
            )
    return errors


@checks.register()
def check_settings(app_configs=None, **kwargs):
    return [
        checks.Error(
            f"PUBSUBPULL has an unknown key {name!r}.",
            hint=f"Known keys: {', '.join(sorted(conf.DEFAULTS))}.",
            id="pubsubpull.E002",
        )
        for name in conf.check_keys()
    ]


@checks.register(checks.Tags.database)
def check_triggers(app_configs=None, databases=None, **kwargs):
    """Warn about registered models whose triggers are missing or outdated.

    Runs with ``check --database`` and after ``migrate`` has nothing left to
    apply: before that, the pending migrations are what will install them.
    """
    warnings = []
    for alias in databases or ():
        connection = connections[alias]
        if connection.vendor != "postgresql":
            continue
        executor = MigrationExecutor(connection)
        if executor.migration_plan(executor.loader.graph.leaf_nodes()):
            continue
        published = {r.label for r in registrations() if router.db_for_write(r.model) == alias}
        for state in triggers.status(alias):
            if state.label not in published or state.state == state.INSTALLED:
                continue
            warnings.append(
                checks.Warning(
                    f"The pubsubpull trigger of {state.label} ({state.table}) is "
                    f"{state.state} in database {alias!r}: its changes are not being "
                    "recorded as registered.",
                    hint="Run `manage.py makemigrations` and `manage.py migrate`, or "
                    f"`manage.py pubsubpull_triggers install --database {alias}`.",
                    id="pubsubpull.W001",
                )
            )
    return warnings


def warn_after_migrate(sender, using="default", verbosity=1, stdout=None, **kwargs):
    """post_migrate receiver: print trigger warnings for the migrated database."""
    if verbosity < 1:
        return
    for warning in check_triggers(databases=[using]):
        print(f"{warning.id}: {warning.msg}\n\tHINT: {warning.hint}", file=stdout or sys.stderr)
