"""The job engine that delivery and pulling share: one lease, one wake, one loop.

Each behaviour is checked for both kinds of job (a subscription being
delivered, a pull cursor being pulled), on real PostgreSQL rows.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from django.utils import timezone

from pubsubpull import conf, jobs
from pubsubpull.client import pulling
from pubsubpull.client.models import PullCursor
from pubsubpull.publisher.delivery import deliver
from pubsubpull.publisher.delivery.models import Subscription

from .delivery_helpers import make_subscription, use_fast_settings

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent / "pubsubpull"


@pytest.fixture(params=["deliver", "pull"])
def job(request, settings):
    """A due, free row of each kind: (kind, model, id)."""
    use_fast_settings(settings)
    if request.param == "deliver":
        # Nothing listens there; these tests never send.
        subscription = make_subscription("http://127.0.0.1:9/hook/").subscription
        return deliver.DELIVERY, Subscription, subscription.id
    cursor = PullCursor.objects.create(
        name="engine-test",
        source="http://127.0.0.1:9/pubsubpull/",
        service_url="http://127.0.0.1:9/pubsubpull/",
        handler="tests.client_handlers.record",
    )
    return pulling.PULL, PullCursor, cursor.id


def flag(model, id_):
    return model.objects.values_list("wake_requested_at", flat=True).get(id=id_)


def test_both_kinds_are_registered_with_the_engine():
    assert {k.name for k in jobs.kinds()} >= {"deliver", "pull"}
    assert jobs.get("deliver") is deliver.DELIVERY
    assert jobs.get("pull") is pulling.PULL
    with pytest.raises(LookupError, match="No job kind 'nope'"):
        jobs.get("nope")


def test_wakes_coalesce_while_a_job_is_pending(job):
    kind, model, id_ = job
    assert kind.wake([id_]) == [id_]
    assert flag(model, id_) is not None
    assert kind.wake([id_]) == []  # a job is pending already
    assert kind.sweep() == []
    assert kind.wake([id_], force=True) == [id_]


def test_a_spent_wake_is_cleared_so_the_next_one_enqueues(job):
    """The job finds its row paused: the wake is used up, not left to refuse others."""
    kind, model, id_ = job
    assert kind.wake([id_]) == [id_]
    model.objects.filter(id=id_).update(state="paused")
    assert kind.run(id_) == jobs.Outcome.BUSY == "busy"
    assert flag(model, id_) is None
    model.objects.filter(id=id_).update(state="active")
    assert kind.wake([id_]) == [id_]  # not refused for a lease's length


def test_a_wake_while_held_is_for_the_holder(job):
    kind, model, id_ = job
    assert kind.spec.claim(id_, "holder") is not None
    assert flag(model, id_) is None  # the claim used up the wake that brought it
    assert kind.wake([id_]) == []  # no job: the holder will see it
    assert flag(model, id_) is not None
    assert kind.spec.release(id_, "holder") is True
    assert kind.spec.claim(id_, "another") is not None  # free again


def test_letting_go_to_retry_later_uses_up_the_wake(job):
    kind, model, id_ = job
    assert kind.spec.claim(id_, "holder") is not None
    kind.wake([id_])
    assert kind.spec.release(id_, "holder", next_in=60.0) is False
    assert flag(model, id_) is None
    due = model.objects.values_list(kind.spec.due, flat=True).get(id=id_)
    assert (due - timezone.now()).total_seconds() > 50
    assert kind.wake([id_]) == [] and kind.sweep() == []  # not due
    assert kind.run(id_) == "busy"
    model.objects.filter(id=id_).update(**{kind.spec.due: timezone.now()})
    assert kind.wake([id_]) == [id_]  # due: woken at once, not a lease later


def test_one_holder_at_a_time_and_a_command_holds_across_runs(job):
    kind, _, id_ = job
    assert kind.spec.claim(id_, "first") is not None
    assert kind.spec.claim(id_, "second") is None
    assert kind.spec.renew(id_, "first") and not kind.spec.renew(id_, "second")
    assert kind.spec.claim(id_, "first") is not None  # its own lease: taken again
    assert not kind.spec.hold(id_, "second")
    kind.spec.release(id_, "first", keep=True)  # keeps holding
    assert kind.spec.claim(id_, "second") is None
    kind.spec.release(id_, "first")
    assert kind.spec.hold(id_, "second")


def test_both_kinds_back_off_on_one_schedule(settings):
    settings.PUBSUBPULL = {
        **settings.PUBSUBPULL,
        "RETRY_BASE": 1.0,
        "RETRY_MAX": 8.0,
        "PULL_RETRY_BASE": 1.0,
        "PULL_RETRY_MAX": 8.0,
    }
    for spec in (deliver.SUBSCRIPTIONS, pulling.CURSORS):
        assert 0.5 <= spec.backoff(1) <= 1.0
        assert 2.0 <= spec.backoff(3) <= 4.0
        assert 4.0 <= spec.backoff(50) <= 8.0
        assert spec.backoff(1, retry_after=5) == 5
        assert spec.backoff(1, retry_after=100) == 8.0


# -- the loop ---------------------------------------------------------------


def _probe_kind(work):
    """A kind of job on the pull cursor table with a work function of the test's."""
    spec = jobs.LeaseSpec(
        table="pubsubpull_pullcursor",
        runnable="state = 'active'",
        due="next_run_at",
        lease=conf.pull_lease,
        retry_base=conf.pull_retry_base,
        retry_max=conf.pull_retry_max,
    )
    return jobs.Kind("probe", spec, work, budget=lambda: 5.0)


def _cursor():
    return PullCursor.objects.create(
        name="probe", source="http://x/", service_url="http://x/", handler="h.h"
    )


def test_a_run_woken_while_it_works_runs_again():
    cursor = _cursor()
    calls = []

    def work(lease, row, deadline):
        calls.append(row)
        if len(calls) == 1:
            kind.wake([lease.id])  # a change arrives while we hold the row
        return jobs.Ending(jobs.Outcome.CAUGHT_UP, lease.release())

    kind = _probe_kind(work)
    assert kind.run(cursor.id) is jobs.Outcome.CAUGHT_UP
    assert len(calls) == 2
    assert flag(PullCursor, cursor.id) is None


def test_a_run_out_of_time_enqueues_its_sequel_and_a_failed_work_lets_go():
    cursor = _cursor()

    def more(lease, row, deadline):
        return jobs.Ending(jobs.Outcome.MORE, lease.release())

    assert _probe_kind(more).run(cursor.id) == "more"
    assert flag(PullCursor, cursor.id) is not None  # a job is enqueued for the rest

    def broken(lease, row, deadline):
        raise RuntimeError("the work failed")

    with pytest.raises(RuntimeError):
        _probe_kind(broken).run(cursor.id)
    held = PullCursor.objects.values_list("lease_owner", "lease_expires").get(id=cursor.id)
    assert held == ("", None)  # let go for another worker to retry


def test_a_job_is_enqueued_through_the_one_task():
    from django_tasks_db.models import DBTaskResult

    cursor = _cursor()
    before = DBTaskResult.objects.filter(task_path=jobs.engine.run_job.module_path).count()
    pulling.PULL.wake([cursor.id])
    enqueued = DBTaskResult.objects.filter(task_path=jobs.engine.run_job.module_path)
    assert enqueued.count() == before + 1
    assert enqueued.order_by("-enqueued_at").first().args_kwargs["args"] == ["pull", cursor.id]


# -- the import graph -----------------------------------------------------------


def _imports(folder: str) -> set[str]:
    found = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return found


def test_the_engine_imports_neither_side_and_the_sides_do_not_import_each_other():
    def within(modules, prefix):
        return sorted(m for m in modules if m == prefix or m.startswith(prefix + "."))

    engine = _imports("jobs")
    for side in ("pubsubpull.publisher", "pubsubpull.client", "pubsubpull.capture"):
        assert within(engine, side) == []
    # (The client's last imports of the publisher's feed are the protocol's to remove.)
    assert within(_imports("client"), "pubsubpull.publisher.delivery") == []
    assert within(_imports("publisher/delivery"), "pubsubpull.client") == []


def test_the_worker_listens_for_the_delivery_kind_on_the_capture_channel():
    from pubsubpull.jobs.worker import Worker
    from pubsubpull.publisher import feed

    worker = Worker(threads=0, run_jobs=False, log=lambda message: None)
    assert worker._channels() == [feed.CHANNEL]
