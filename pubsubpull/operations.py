"""Migration operations that install and remove a published table's triggers.

``makemigrations`` writes them (see ``autodetector.py``) with the trigger SQL
frozen in, so a migration does the same thing whatever pubsubpull version runs
it, and each reverses to exactly what was there before.
"""

from __future__ import annotations

from typing import Any

from django.db import router
from django.db.migrations.operations.base import Operation, OperationCategory

from pubsubpull.capture.statement_log import drop_sql as drop_log_sql
from pubsubpull.capture.statement_log import fold_sql
from pubsubpull.capture.triggers import drop_sql, install_sql, quote_name


class _TriggerOperation(Operation):
    reduces_to_sql = True
    reversible = True

    def __init__(self, model: str, table: str):
        self.model = model
        self.table = table

    def state_forwards(self, app_label, state):
        # Published tables are not part of Django's model state; the
        # autodetector reads these operations from the migration graph.
        pass

    def _allowed(self, schema_editor) -> bool:
        model_app, model_name = self.model.split(".")
        return router.allow_migrate(
            schema_editor.connection.alias, model_app, model_name=model_name
        )

    def _run(self, schema_editor, statements: list[str]) -> None:
        if self._allowed(schema_editor):
            for statement in statements:
                schema_editor.execute(statement, params=None)


class Publish(_TriggerOperation):
    """Install (or replace) the triggers that record ``model``'s changes.

    ``sql`` holds the statements that make them (capture version 3: CREATE
    TRIGGER; version 4: the model's log table, type and functions too);
    ``previous_sql`` those it replaces, which migrating backwards puts back.
    ``log`` (version 4) names the log ``sql`` makes: going back to SQL that
    does not write to it copies its changes into pubsubpull_change and drops
    it, so no change recorded is lost.
    """

    category = OperationCategory.ADDITION

    def __init__(
        self,
        model: str,
        table: str,
        sql: list[str],
        previous_sql: list[str] | None = None,
        log: dict[str, Any] | None = None,
    ):
        super().__init__(model, table)
        self.sql = list(sql)
        self.previous_sql = list(previous_sql) if previous_sql else None
        self.log = dict(log) if log else None

    def deconstruct(self):
        kwargs: dict[str, Any] = {"model": self.model, "table": self.table, "sql": self.sql}
        if self.previous_sql:
            kwargs["previous_sql"] = self.previous_sql
        if self.log:
            kwargs["log"] = self.log
        return self.__class__.__name__, [], kwargs

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        self._run(schema_editor, install_sql(self.table, self.sql))

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if self.previous_sql:
            self._run(schema_editor, install_sql(self.table, self.previous_sql))
        else:
            self._run(schema_editor, drop_sql(self.table))
        # The previous SQL makes a log of its own name when it is the same version.
        if self.log and quote_name(self.log["table"]) not in "\n".join(self.previous_sql or []):
            self._run(schema_editor, [fold_sql(self.log), *drop_log_sql(self.log)])

    def describe(self):
        verb = "Update" if self.previous_sql else "Install"
        return f"{verb} the pubsubpull triggers publishing {self.model}"

    @property
    def migration_name_fragment(self):
        return f"publish_{self.model.split('.')[1]}"


class Unpublish(_TriggerOperation):
    """Remove the triggers that recorded ``model``'s changes."""

    category = OperationCategory.REMOVAL

    def __init__(self, model: str, table: str, previous_sql: list[str]):
        super().__init__(model, table)
        self.previous_sql = list(previous_sql)

    def deconstruct(self):
        kwargs = {"model": self.model, "table": self.table, "previous_sql": self.previous_sql}
        return self.__class__.__name__, [], kwargs

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        self._run(schema_editor, drop_sql(self.table))

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        self._run(schema_editor, install_sql(self.table, self.previous_sql))

    def describe(self):
        return f"Remove the pubsubpull triggers publishing {self.model}"

    @property
    def migration_name_fragment(self):
        return f"unpublish_{self.model.split('.')[1]}"
