"""The delivery job, on Django's Tasks framework.

``django.tasks`` on Django 6, the ``django-tasks`` backport on 5.2. The job
carries only a subscription id: what to send and where to resume is read from
pubsubpull's tables when it runs, so a lost or duplicated job costs at most a
redundant wake.
"""

from __future__ import annotations

try:  # Django 6.0+
    from django.tasks import task, task_backends
except ImportError:  # Django 5.2: the backport
    from django_tasks import task, task_backends  # type: ignore[no-redef]

from pubsubpull import conf

__all__ = ["backend", "deliver", "enqueue", "task_backends"]


@task()
def deliver(subscription_id: int) -> str:
    """Deliver one subscription's backlog until caught up, failing, or 10 s passed."""
    from pubsubpull.publisher.delivery.deliver import drain

    return drain(subscription_id)


def _configured():
    return deliver.using(backend=conf.get("TASK_BACKEND"), queue_name=conf.get("TASK_QUEUE"))


def backend():
    """The TASKS backend delivery jobs go to (PUBSUBPULL["TASK_BACKEND"])."""
    return task_backends[conf.get("TASK_BACKEND")]


def enqueue(subscription_id: int) -> None:
    _configured().enqueue(subscription_id)
