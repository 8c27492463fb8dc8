"""Django's Tasks framework, as the job engine uses it (its one task is ``engine.run_job``).

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
    # The backport's classes are its own, of the same shape as Django 6's.
    from django_tasks import task, task_backends  # type: ignore[no-redef,assignment]

from pubsubpull import conf

__all__ = ["backend", "task", "task_backends"]


def backend():
    """The TASKS backend jobs go to (PUBSUBPULL["TASK_BACKEND"])."""
    return task_backends[conf.task_backend()]
