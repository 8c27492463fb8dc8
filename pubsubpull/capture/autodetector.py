"""Teach ``makemigrations`` about published models.

Django's autodetector diffs model state; trigger state is not part of it. This
subclass replays the ``Publish``/``Unpublish`` operations already in the
migration graph to learn what the migrations install, compares that with the
registry, and adds the operations that close the gap to the migrations Django
was about to write anyway.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING, cast

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db.migrations import Migration
from django.db.migrations.autodetector import MigrationAutodetector
from django.db.migrations.operations.base import Operation

from pubsubpull import conf
from pubsubpull.capture.publishing import capture_sql, log_names
from pubsubpull.capture.registry import Registration, registrations
from pubsubpull.operations import Publish, Unpublish


def migrated_triggers(graph) -> dict[str, tuple[str, str, list[str]]]:
    """``{label: (app holding the migration, table, install sql)}`` at the graph's leaves."""
    state: dict[str, tuple[str, str, list[str]]] = {}
    seen = set()
    for leaf in sorted(graph.leaf_nodes()):
        for key in graph.forwards_plan(leaf):
            if key in seen:
                continue
            seen.add(key)
            migration = graph.nodes[key]
            for operation in migration.operations:
                if isinstance(operation, Publish):
                    state[operation.model] = (key[0], operation.table, operation.sql)
                elif isinstance(operation, Unpublish):
                    state.pop(operation.model, None)
    return state


def _is_project_app(app_config) -> bool:
    """True for apps whose migrations belong to this project (not an installed package)."""
    path = Path(app_config.path).resolve()
    installed = {
        Path(p).resolve() for p in {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    }
    installed |= {Path(p).resolve() for p in sys.path if p.endswith("site-packages")}
    return not any(path.is_relative_to(root) for root in installed)


def migrations_app_for(registration: Registration) -> str:
    """The app whose migrations install ``registration``'s triggers."""
    app_config = registration.model._meta.app_config
    if _is_project_app(app_config):
        return app_config.label
    configured = conf.migrations_app()
    if configured:
        return apps.get_app_config(configured).label
    raise ImproperlyConfigured(
        f"{registration.label} is published, but its app {app_config.label!r} is an "
        "installed package whose migrations are not yours to write. Name one of your "
        "own apps to hold the migration that installs its trigger: "
        "PUBSUBPULL = {'MIGRATIONS_APP': 'yourapp'}."
    )


# The mixin's methods are an autodetector's, to the type checker.
if TYPE_CHECKING:
    _Autodetector = MigrationAutodetector
else:
    _Autodetector = object


class PublishingMixin(_Autodetector):
    """Adds trigger operations to whatever autodetector Django (or another app) uses."""

    migrations: dict[str, list[Migration]]  # built by Django's _detect_changes

    def _detect_changes(self, convert_apps=None, graph=None):
        migrations = super()._detect_changes(convert_apps, graph)  # type: ignore[misc]
        if graph is None:
            return migrations
        current = migrated_triggers(graph)
        wanted = {r.label: r for r in registrations()}
        for label, registration in wanted.items():
            sql = capture_sql(registration)
            before = current.get(label)
            if before is not None and before[2] == sql:
                continue
            operation: Publish | Unpublish = Publish(
                model=label,
                table=registration.table,
                sql=sql,
                previous_sql=before[2] if before else None,
                log=log_names(registration),
            )
            self._add(
                migrations_app_for(registration),
                operation,
                registration.model._meta.app_label,
                graph,
            )
        for label in sorted(set(current) - set(wanted)):
            app_label, table, sql = current[label]
            operation = Unpublish(model=label, table=table, previous_sql=sql)
            self._add(app_label, operation, label.split(".")[0], graph)
        return migrations

    def _add(self, app_label: str, operation: Operation, model_app: str, graph) -> None:
        """Append ``operation`` to ``app_label``'s next migration, after what it needs."""
        migrations = self.migrations.setdefault(app_label, [])
        if not migrations:
            subclass = type("Migration", (Migration,), {"operations": [], "dependencies": []})
            migrations.append(subclass(f"auto_{len(migrations) + 1}", app_label))
        migration = migrations[-1]
        cast(list, migration.operations).append(operation)  # a list: see just above
        # The model's table and pubsubpull's capture function must exist first.
        for needed in (model_app, "pubsubpull"):
            if needed == app_label:
                continue
            dependency: tuple[str, str] | None
            if self.migrations.get(needed):
                dependency = (needed, self.migrations[needed][-1].name)
            else:
                leaves = graph.leaf_nodes(needed)
                dependency = leaves[0] if leaves else None  # an app without migrations
            if dependency and dependency not in migration.dependencies:
                cast(list, migration.dependencies).append(dependency)


def publishing(base: type[MigrationAutodetector]) -> type[MigrationAutodetector]:
    """``base`` with trigger detection mixed in.

    Other apps (django-pgtrigger, for one) swap in their own autodetector by
    patching Django's commands at start-up; pubsubpull's commands build on
    whatever is there when they run instead of replacing it.
    """
    if issubclass(base, PublishingMixin):
        return base
    if base not in _MIXED:
        _MIXED[base] = type("PublishingAutodetector", (PublishingMixin, base), {})
    return _MIXED[base]


_MIXED: dict[type[MigrationAutodetector], type[MigrationAutodetector]] = {}
