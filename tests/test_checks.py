"""A misconfigured service says so at startup: the system checks of pubsubpull's settings."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from django.core.checks import Error, Warning, run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from pubsubpull import checks, conf
from pubsubpull.client.models import PullCursor
from pubsubpull.publisher.delivery.models import Subscription

ROOT = Path(__file__).resolve().parent.parent


def ours():
    """The pubsubpull messages of ``manage.py check``."""
    return [m for m in run_checks() if m.id and m.id.startswith("pubsubpull.")]


def ids(messages) -> list[str]:
    return [m.id for m in messages]


@pytest.fixture
def pubsubpull(settings):
    """Set PUBSUBPULL keys on top of the test project's."""

    def set(**values):
        settings.PUBSUBPULL = {**settings.PUBSUBPULL, **values}

    return set


def test_the_test_project_and_the_defaults_pass():
    assert ours() == []


def test_the_defaults_keep_the_invariants_they_document(settings):
    settings.PUBSUBPULL = {}
    assert conf.lease() > conf.connect_timeout() + conf.timeout()
    assert conf.pull_lease() > conf.pull_wait() + conf.pull_timeout()
    assert ours() == []


def test_a_lease_no_longer_than_connect_and_answer_is_an_error(pubsubpull):
    pubsubpull(CONNECT_TIMEOUT=5.0, TIMEOUT=20.0, LEASE=25.0)
    [error] = ours()
    assert isinstance(error, Error) and error.id == "pubsubpull.E006"
    assert "CONNECT_TIMEOUT + TIMEOUT (5 + 20 s)" in error.msg
    assert "PUBSUBPULL['LEASE'] above 25" in error.hint
    pubsubpull(LEASE=25.5)
    assert ours() == []


def test_a_pull_lease_no_longer_than_one_long_poll_is_an_error(pubsubpull):
    pubsubpull(PULL_WAIT=30.0, PULL_TIMEOUT=15.0, PULL_LEASE=40.0)
    [error] = ours()
    assert isinstance(error, Error) and error.id == "pubsubpull.E007"
    assert "PULL_WAIT + PULL_TIMEOUT (30 + 15 s)" in error.msg
    assert "PUBSUBPULL['PULL_LEASE'] above 45" in error.hint
    pubsubpull(PULL_WAIT=0.0)  # no long poll: the request timeout alone
    assert ours() == []


def test_manage_py_check_refuses_to_start_with_a_broken_invariant(pubsubpull, settings):
    settings.SILENCED_SYSTEM_CHECKS = []
    pubsubpull(LEASE=1.0)
    with pytest.raises(SystemCheckError, match=r"pubsubpull\.E006.*LEASE"):
        call_command("check")
    settings.SILENCED_SYSTEM_CHECKS = ["pubsubpull.E006"]  # as the test services do
    call_command("check")


@pytest.mark.parametrize(
    ("name", "value", "wanted"),
    [
        ("LEASE", "25", "a finite number"),
        ("LEASE", True, "a finite number"),
        ("PULL_WAIT", float("inf"), "a finite number"),
        ("TIMEOUT", float("nan"), "a finite number"),
        ("BATCH_SIZE", 10.5, "an integer"),
        ("WORKER_THREADS", None, "an integer"),
        ("HEALTH_REQUIRE_WORKER", "no", "True or False"),
        ("TASK_QUEUE", "", "a non-empty string"),
        ("TASK_BACKEND", None, "a non-empty string"),
        ("TRUSTED_PROXY_HEADER", 1, "a string or None"),
        ("CALLBACK_ALLOW", "10.0.0.0/8", "a list of strings"),
        ("ANONYMOUS_MODELS", ["customers.country", 3], "a list of strings"),
    ],
)
def test_a_setting_of_the_wrong_type_is_an_error_naming_it(pubsubpull, name, value, wanted):
    pubsubpull(**{name: value})
    [error] = ours()
    assert error.id == "pubsubpull.E004"
    assert error.msg == f"PUBSUBPULL[{name!r}] is {value!r}, not {wanted}."
    assert error.hint.startswith(f"Set PUBSUBPULL[{name!r}] to {wanted} (the default is ")


@pytest.mark.parametrize(
    ("name", "value", "wanted"),
    [
        ("LEASE", 0, "more than 0"),
        ("RETRY_BASE", -1.0, "more than 0"),
        ("PULL_RETRY_BASE", 0.0, "more than 0"),
        ("SWEEP_INTERVAL", 0, "more than 0"),
        ("WORKER_THREADS", 0, "at least 1"),
        ("PAGE_SIZE", 0, "at least 1"),
        ("TRUSTED_PROXY_COUNT", 0, "at least 1"),
        ("SECRET_GRACE", -5, "at least 0"),
        ("MAX_WAIT", -1, "at least 0"),
    ],
)
def test_a_setting_out_of_range_is_an_error_naming_it(pubsubpull, name, value, wanted):
    pubsubpull(**{name: value})
    [error] = ours()
    assert error.id == "pubsubpull.E005"
    assert error.msg == f"PUBSUBPULL[{name!r}] is {value!r}; it must be {wanted}."
    assert f"Set PUBSUBPULL[{name!r}] to a number {wanted}" in error.hint


def test_zero_is_a_valid_wait_grace_or_excerpt(pubsubpull):
    pubsubpull(PULL_WAIT=0, MAX_WAIT=0, SECRET_GRACE=0, RESPONSE_EXCERPT=0, RETENTION=0)
    assert ours() == []


def test_an_invariant_over_a_broken_setting_is_not_checked_twice(pubsubpull):
    pubsubpull(TIMEOUT="15")
    assert ids(ours()) == ["pubsubpull.E004"]


def test_a_pubsubpull_setting_that_is_not_a_dict_is_one_error(settings):
    settings.PUBSUBPULL = [("LEASE", 30.0)]
    [error] = ours()
    assert error.id == "pubsubpull.E003"
    assert error.msg == "PUBSUBPULL is list, not a dict."


def test_an_unknown_key_is_still_an_error(pubsubpull):
    pubsubpull(LEASE_TIME=30.0)
    assert ids(ours()) == ["pubsubpull.E002"]


def test_a_default_batch_larger_than_any_may_ask_for_is_an_error(pubsubpull):
    pubsubpull(BATCH_SIZE=500, MAX_BATCH_SIZE=200)
    [error] = ours()
    assert error.id == "pubsubpull.E008"
    assert "BATCH_SIZE" in error.hint and "MAX_BATCH_SIZE" in error.hint


def test_a_migrations_app_that_is_not_installed_is_an_error(pubsubpull):
    pubsubpull(MIGRATIONS_APP="customer")  # a typo of "customers"
    [error] = ours()
    assert error.id == "pubsubpull.E009"
    assert "'customer'" in error.msg and "INSTALLED_APPS" in error.hint


def test_a_task_backend_not_in_tasks_is_an_error(pubsubpull):
    pubsubpull(TASK_BACKEND="rq")
    [error] = ours()
    assert error.id == "pubsubpull.E010"
    assert "['default']" in error.hint


def test_a_task_queue_the_backend_does_not_serve_is_an_error(pubsubpull, settings):
    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["mail"]}}
    [error] = ours()
    assert error.id == "pubsubpull.E011"
    assert "'default'" in error.msg and "QUEUES" in error.hint
    pubsubpull(TASK_QUEUE="mail")
    assert ours() == []


def test_with_tasks_unset_jobs_would_run_inside_the_caller_and_a_warning_says_so(settings):
    del settings.TASKS
    [warning] = ours()
    assert isinstance(warning, Warning) and warning.id == "pubsubpull.W002"
    assert "ImmediateBackend (Django's default: TASKS is unset)" in warning.msg
    assert "pubsubpull.pull()" in warning.msg and "instead of storing the cursor" in warning.msg
    assert "django_tasks_db.DatabaseBackend" in warning.hint


def test_an_immediate_backend_set_on_purpose_is_warned_about_too(settings):
    immediate = (
        "django.tasks.backends.immediate.ImmediateBackend"
        if _has_django_tasks()
        else "django_tasks.backends.immediate.ImmediateBackend"
    )
    settings.TASKS = {"default": {"BACKEND": immediate}}
    [warning] = ours()
    assert warning.id == "pubsubpull.W002" and "TASKS is unset" not in warning.msg


def test_a_backend_that_never_runs_jobs_is_warned_about(settings):
    dummy = (
        "django.tasks.backends.dummy.DummyBackend"
        if _has_django_tasks()
        else "django_tasks.backends.dummy.DummyBackend"
    )
    settings.TASKS = {"default": {"BACKEND": dummy}}
    [warning] = ours()
    assert warning.id == "pubsubpull.W003"
    assert "never runs a job" in warning.msg


def _has_django_tasks() -> bool:
    try:
        import django.tasks  # noqa: F401
    except ImportError:
        return False
    return True


def test_every_setting_has_one_typed_accessor_returning_its_default(settings):
    settings.PUBSUBPULL = {}
    for name, default in conf.DEFAULTS.items():
        accessor = getattr(conf, name.lower())
        assert accessor() == default, name
        assert f"``{name}``" in accessor.__doc__, name
        kind = typing.get_type_hints(accessor)["return"]
        assert kind in checks._TYPES, f"{name}: the checks know no type {kind}"
        if kind in (int, float):
            assert name in checks._RANGES, f"{name}: give it a range in checks._RANGES"


def test_modules_read_settings_through_their_accessors():
    """No string keys outside conf.py: a typo there is an AttributeError at import time."""
    offenders = []
    for path in sorted((ROOT / "pubsubpull").rglob("*.py")):
        if path.name == "conf.py":
            continue
        text = path.read_text()
        if re.search(r"conf\.get\(|PUBSUBPULL\b.*\.get\(|settings\.PUBSUBPULL", text):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_model_defaults_are_the_settings_defaults():
    """The fields keep a constant default (a migration states it), equal to the setting's."""
    assert Subscription._meta.get_field("batch_size").default == conf.DEFAULTS["BATCH_SIZE"]
    assert PullCursor._meta.get_field("page_size").default == conf.DEFAULTS["PULL_PAGE_SIZE"]


def test_every_check_id_is_documented_and_every_documented_one_exists():
    emitted = set(
        re.findall(r'id="(pubsubpull\.[EW]\d{3})"', (ROOT / "pubsubpull" / "checks.py").read_text())
    )
    docs = "\n".join(p.read_text() for p in [*(ROOT / "docs").glob("*.rst"), ROOT / "README.rst"])
    documented = set(re.findall(r"``(pubsubpull\.[EW]\d{3})``", docs))
    assert emitted == documented
