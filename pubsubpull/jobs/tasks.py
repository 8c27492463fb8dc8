"""The one job task, on Django's Tasks framework, and the one way to enqueue it.

``django.tasks`` on Django 6, the ``django-tasks`` backport on 5.2. A job
carries only its kind's name and a row id: what to do and where to resume is
read from the row when it runs, so a lost or duplicated job costs at most a
redundant wake. Jobs go to ``PUBSUBPULL["TASK_BACKEND"]`` and
``["TASK_QUEUE"]``.
"""

from __future__ import annotations

try:  # Django 6.0+
    from django.tasks import task, task_backends
except ImportError:  # Django 5.2: the backport
    from django_tasks import task, task_backends  # type: ignore[no-redef]

from pubsubpull import conf

__all__ = ["backend", "enqueue", "run_job", "task_backends"]


@task()
def run_job(kind: str, id_: int) -> str:
    """Run row ``id_`` of the job kind named ``kind`` (see pubsubpull.jobs.engine.run)."""
    from pubsubpull.jobs.engine import get, run

    return str(run(get(kind), id_))


def backend():
    """The TASKS backend jobs go to (PUBSUBPULL["TASK_BACKEND"])."""
    return task_backends[conf.get("TASK_BACKEND")]


def enqueue(kind: str, id_: int) -> None:
    run_job.using(backend=conf.get("TASK_BACKEND"), queue_name=conf.get("TASK_QUEUE")).enqueue(
        kind, id_
    )
