"""System checks: published models need PostgreSQL and their triggers; settings must make sense.

Ids: E001 PostgreSQL, E002 unknown key, E003 PUBSUBPULL not a dict, E004 a
setting of the wrong type, E005 out of range, E006 LEASE too short, E007
PULL_LEASE too short, E008 BATCH_SIZE over MAX_BATCH_SIZE, E009 MIGRATIONS_APP
not installed, E010 TASK_BACKEND not in TASKS, E011 TASK_QUEUE not a queue of
it; W001 triggers missing or outdated, W002 jobs run inside the call that
enqueues them (TASKS unset), W003 jobs never run (a dummy backend).
"""

from __future__ import annotations

import math
import sys
import typing

from django.apps import apps
from django.conf import global_settings, settings
from django.core import checks
from django.db import connections, router
from django.db.migrations.executor import MigrationExecutor
from django.utils.module_loading import import_string

from pubsubpull import conf
from pubsubpull.capture import publishing
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


# The smallest value of each number: (bound, whether the bound itself is allowed).
# Times and sizes that something waits for or divides by must be above zero;
# a retention or grace of 0 (keep nothing) and a wait of 0 (no long poll) work.
_ABOVE_ZERO, _ZERO_OR_MORE, _ONE_OR_MORE = (0, False), (0, True), (1, True)
_RANGES: dict[str, tuple[float, bool]] = {
    "CAPTURE_VERSION": (3, True),  # and at most 4: conf.capture_version() says so
    "PAGE_SIZE": _ONE_OR_MORE,
    "MAX_PAGE_SIZE": _ONE_OR_MORE,
    "MAX_WAIT": _ZERO_OR_MORE,
    "FILTER_SCAN": _ONE_OR_MORE,
    "HEALTH_WORKER_STALE": _ABOVE_ZERO,
    "RETENTION": _ZERO_OR_MORE,
    "TRUSTED_PROXY_COUNT": _ONE_OR_MORE,
    "BATCH_SIZE": _ONE_OR_MORE,
    "MAX_BATCH_SIZE": _ONE_OR_MORE,
    "BATCH_MAX_BYTES": _ONE_OR_MORE,
    "CONNECT_TIMEOUT": _ABOVE_ZERO,
    "TIMEOUT": _ABOVE_ZERO,
    "RETRY_BASE": _ABOVE_ZERO,
    "RETRY_MAX": _ABOVE_ZERO,
    "ACCESS_RECHECK": _ABOVE_ZERO,
    "DISABLE_AFTER": _ABOVE_ZERO,
    "LEASE": _ABOVE_ZERO,
    "SWEEP_INTERVAL": _ABOVE_ZERO,
    "WORKER_THREADS": _ONE_OR_MORE,
    "SECRET_GRACE": _ZERO_OR_MORE,
    "RESPONSE_EXCERPT": _ZERO_OR_MORE,
    "ATTEMPT_RETENTION": _ZERO_OR_MORE,
    "PULL_PAGE_SIZE": _ONE_OR_MORE,
    "PULL_WAIT": _ZERO_OR_MORE,
    "PULL_TIMEOUT": _ABOVE_ZERO,
    "PULL_LEASE": _ABOVE_ZERO,
    "PULL_BUDGET": _ABOVE_ZERO,
    "PULL_RETRY_BASE": _ABOVE_ZERO,
    "PULL_RETRY_MAX": _ABOVE_ZERO,
    "RECEIVER_MAX_BYTES": _ONE_OR_MORE,
    "RECEIVED_RETENTION": _ZERO_OR_MORE,
    "MIRROR_TOMBSTONE_RETENTION": _ZERO_OR_MORE,
}

# What each accessor's return type accepts, and how to say it in a message.
_TYPES: dict[object, tuple[typing.Callable[[object], bool], str]] = {
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
        "a finite number",
    ),
    bool: (lambda v: isinstance(v, bool), "True or False"),
    str: (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    str | None: (lambda v: v is None or (isinstance(v, str) and v != ""), "a string or None"),
    list[str]: (
        lambda v: isinstance(v, (list, tuple)) and all(isinstance(i, str) for i in v),
        "a list of strings",
    ),
}


def _problem(name: str) -> checks.Error | None:
    """What is wrong with the value of setting ``name`` on its own (E004, E005), or None."""
    # Every setting has its typed function, of a type _TYPES knows (tests say so).
    accessor = getattr(conf, name.lower())
    accepts, described = _TYPES[typing.get_type_hints(accessor)["return"]]
    value, default = accessor(), conf.DEFAULTS[name]
    if not accepts(value):
        return checks.Error(
            f"PUBSUBPULL[{name!r}] is {value!r}, not {described}.",
            hint=f"Set PUBSUBPULL[{name!r}] to {described} (the default is {default!r}).",
            id="pubsubpull.E004",
        )
    bound, inclusive = _RANGES.get(name, (None, True))
    if bound is not None and (value < bound or (value == bound and not inclusive)):
        wanted = f"{'at least' if inclusive else 'more than'} {bound}"
        return checks.Error(
            f"PUBSUBPULL[{name!r}] is {value!r}; it must be {wanted}.",
            hint=f"Set PUBSUBPULL[{name!r}] to a number {wanted} (the default is {default!r}).",
            id="pubsubpull.E005",
        )
    return None


@checks.register()
def check_setting_values(app_configs=None, **kwargs):
    """Each setting has its accessor's type and lies in its range (E003, E004, E005)."""
    given = conf.configured()
    if not isinstance(given, dict):
        return [
            checks.Error(
                f"PUBSUBPULL is {type(given).__name__}, not a dict.",
                hint='Set PUBSUBPULL = {"KEY": value, ...} (see docs/settings.rst), or '
                "leave it out for the defaults.",
                id="pubsubpull.E003",
            )
        ]
    return [error for name in conf.DEFAULTS if (error := _problem(name)) is not None]


def _valid(*names: str) -> bool:
    """Whether these settings passed check_setting_values (else it has said why)."""
    return isinstance(conf.configured(), dict) and all(_problem(n) is None for n in names)


@checks.register()
def check_setting_invariants(app_configs=None, **kwargs):
    """The relations between settings that their comments ask for (E006 to E009)."""
    errors = []
    if _valid("LEASE", "CONNECT_TIMEOUT", "TIMEOUT"):
        lease, connect, timeout = conf.lease(), conf.connect_timeout(), conf.timeout()
        if lease <= connect + timeout:
            errors.append(
                checks.Error(
                    f"PUBSUBPULL['LEASE'] ({lease:g} s) is not longer than CONNECT_TIMEOUT + "
                    f"TIMEOUT ({connect:g} + {timeout:g} s): a worker's lease on a subscription "
                    "can expire while it still waits for the receiver, and a second worker "
                    "sends the same batch meanwhile.",
                    hint=f"Set PUBSUBPULL['LEASE'] above {connect + timeout:g} (the default "
                    f"{conf.DEFAULTS['LEASE']:g} leaves room over the default timeouts), or "
                    "lower CONNECT_TIMEOUT or TIMEOUT.",
                    id="pubsubpull.E006",
                )
            )
    if _valid("PULL_LEASE", "PULL_WAIT", "PULL_TIMEOUT"):
        lease, wait, timeout = conf.pull_lease(), conf.pull_wait(), conf.pull_timeout()
        if lease <= wait + timeout:
            errors.append(
                checks.Error(
                    f"PUBSUBPULL['PULL_LEASE'] ({lease:g} s) is not longer than PULL_WAIT + "
                    f"PULL_TIMEOUT ({wait:g} + {timeout:g} s): a worker's lease on a pull "
                    "cursor can expire during one long poll, and another worker takes the "
                    "cursor over while the first still pulls.",
                    hint=f"Set PUBSUBPULL['PULL_LEASE'] above {wait + timeout:g}, with room "
                    "for a page's handler time (the default "
                    f"{conf.DEFAULTS['PULL_LEASE']:g} suits the default wait and timeout), or "
                    "lower PULL_WAIT or PULL_TIMEOUT.",
                    id="pubsubpull.E007",
                )
            )
    if _valid("BATCH_SIZE", "MAX_BATCH_SIZE") and conf.batch_size() > conf.max_batch_size():
        errors.append(
            checks.Error(
                f"PUBSUBPULL['BATCH_SIZE'] ({conf.batch_size()}) is larger than "
                f"MAX_BATCH_SIZE ({conf.max_batch_size()}): a subscription that asks for "
                "no batch_size would get more than any may ask for.",
                hint="Lower PUBSUBPULL['BATCH_SIZE'] or raise MAX_BATCH_SIZE.",
                id="pubsubpull.E008",
            )
        )
    label = conf.migrations_app() if _valid("MIGRATIONS_APP") else None
    if label is not None and label not in {c.label for c in apps.get_app_configs()}:
        errors.append(
            checks.Error(
                f"PUBSUBPULL['MIGRATIONS_APP'] is {label!r}, which is not the label of "
                "an installed app.",
                hint="Name one of your own apps in INSTALLED_APPS (its label, as in "
                "'customers'): its migrations will hold the triggers of installed "
                "packages' published models.",
                id="pubsubpull.E009",
            )
        )
    return errors


_RUN_JOBS = (
    'TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}} with '
    '"django_tasks_db" in INSTALLED_APPS (pubsubpull_worker runs its jobs), or point '
    "PUBSUBPULL['TASK_BACKEND'] at a backend whose workers run jobs (RQ, Celery, ...)"
)


def _backend_class(path: str, module: str, name: str) -> bool:
    """Whether the backend at ``path`` is ``module.name`` of a tasks package, or a subclass."""
    try:
        backend = import_string(path)
    except ImportError:
        return False  # not ours to report: the tasks framework refuses it when a job is enqueued
    for package in ("django.tasks", "django_tasks"):
        try:
            base = import_string(f"{package}.backends.{module}.{name}")
        except ImportError:
            continue
        if isinstance(backend, type) and issubclass(backend, base):
            return True
    return False


@checks.register()
def check_task_backend(app_configs=None, **kwargs):
    """Delivery and pull jobs go to a backend that runs them in workers (E010, E011, W002, W003).

    Both are enqueued on Django's Tasks framework (a subscription that has
    changes to send, every ``pubsubpull.pull()``): a backend that runs each
    job inside the call that enqueues it (Django's default when TASKS is
    unset) makes ``pull()`` pull there, budget after budget, instead of
    returning; one that never runs them leaves every subscription and pull
    waiting, silently. A service that neither delivers nor pulls may silence
    the warnings.
    """
    if not _valid("TASK_BACKEND", "TASK_QUEUE"):
        return []
    alias, queue = conf.task_backend(), conf.task_queue()
    configured = getattr(settings, "TASKS", None)
    # Unset: Django 6's global default, or nothing on 5.2 (the backport's default).
    unset = configured is None or configured is getattr(global_settings, "TASKS", None)
    if configured is None:
        configured = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}}
    if not isinstance(configured, dict) or alias not in configured:
        return [
            checks.Error(
                f"PUBSUBPULL['TASK_BACKEND'] is {alias!r}, which is not an alias of the "
                "TASKS setting: enqueueing a delivery or pull job would fail.",
                hint=f"Add {alias!r} to TASKS, or set PUBSUBPULL['TASK_BACKEND'] to one of "
                f"{sorted(configured) if isinstance(configured, dict) else []}.",
                id="pubsubpull.E010",
            )
        ]
    options = configured[alias] if isinstance(configured[alias], dict) else {}
    queues = options.get("QUEUES")
    if queues and queue not in queues:
        return [
            checks.Error(
                f"PUBSUBPULL['TASK_QUEUE'] is {queue!r}, which is not one of the QUEUES of "
                f"the TASKS backend {alias!r} ({', '.join(map(repr, queues))}): enqueueing "
                "a delivery or pull job would fail.",
                hint=f"Add {queue!r} to TASKS[{alias!r}]['QUEUES'], or set "
                "PUBSUBPULL['TASK_QUEUE'] to one of them.",
                id="pubsubpull.E011",
            )
        ]
    path = options.get("BACKEND", "")
    if _backend_class(path, "immediate", "ImmediateBackend"):
        default = " (Django's default: TASKS is unset)" if unset else ""
        return [
            checks.Warning(
                f"Delivery and pull jobs go to the TASKS backend {alias!r}, an "
                f"ImmediateBackend{default}, which runs each job inside the call that "
                "enqueues it: pubsubpull.pull() (and a Mirror's pull) pulls inside the "
                "call, budget after budget, instead of storing the cursor and returning, "
                "and pubsubpull_worker delivers in its listening thread, one subscription "
                "at a time, while notifications wait.",
                hint=f"Set {_RUN_JOBS}. Silence pubsubpull.W002 only on a service that "
                "neither delivers nor pulls.",
                id="pubsubpull.W002",
            )
        ]
    if _backend_class(path, "dummy", "DummyBackend"):
        return [
            checks.Warning(
                f"Delivery and pull jobs go to the TASKS backend {alias!r}, a DummyBackend, "
                "which never runs a job: no subscription is delivered and no pull advances.",
                hint=f"Set {_RUN_JOBS}.",
                id="pubsubpull.W003",
            )
        ]
    return []


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
        for state in publishing.status(alias):
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
