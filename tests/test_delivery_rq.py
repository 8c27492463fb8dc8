"""The same delivery on another Tasks backend: django-tasks-rq against a real Redis."""

from __future__ import annotations

import os
import time

import pytest

from customers.models import Customer
from pubsubpull.jobs import tasks

from .delivery_helpers import WorkerThread, make_subscription, use_fast_settings
from .receivers import Receiver

pytestmark = pytest.mark.django_db(transaction=True)

REDIS = {"HOST": "127.0.0.1", "PORT": 6379, "DB": 0}


def _redis():
    try:
        import redis
    except ImportError:
        return None
    client = redis.Redis(host=REDIS["HOST"], port=REDIS["PORT"], socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        return None
    return client


@pytest.fixture
def rq_queue(settings):
    if _redis() is None:
        pytest.skip(
            "no Redis at 127.0.0.1:6379 (install redis-server; ./runtests.sh starts it "
            "when it is installed but down)"
        )
    import django_rq

    name = f"pubsubpull-test-{os.getpid()}"
    use_fast_settings(settings)
    settings.RQ_QUEUES = {name: REDIS}
    settings.TASKS = {
        **settings.TASKS,
        "rq": {"BACKEND": "django_tasks_rq.RQBackend", "QUEUES": [name]},
    }
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "TASK_BACKEND": "rq", "TASK_QUEUE": name}
    queue = django_rq.get_queue(name)
    queue.empty()
    yield queue
    queue.empty()
    queue.delete(delete_jobs=True)


def test_delivery_jobs_run_on_rq_workers(rq_queue):
    from django_tasks_rq.backend import Job
    from rq import SimpleWorker

    assert type(tasks.backend()).__name__ == "RQBackend"
    with Receiver() as receiver:
        make_subscription(receiver.url())
        # The worker command wakes subscriptions on NOTIFY and, the backend not
        # being the database, leaves the jobs to RQ's workers.
        with WorkerThread() as worker:
            assert not worker.run_jobs
            Customer.objects.create(name="Ada")
            Customer.objects.create(name="Grace")
            deadline = time.monotonic() + 60
            while rq_queue.count == 0:
                assert time.monotonic() < deadline, "no job reached the RQ queue"
                time.sleep(0.02)
            assert receiver.requests == []  # nothing runs until an RQ worker does
        rq_worker = SimpleWorker([rq_queue], connection=rq_queue.connection, job_class=Job)
        deadline = time.monotonic() + 60
        while len(receiver.accepted_changes()) < 2:
            assert time.monotonic() < deadline, "the RQ worker did not deliver"
            rq_worker.work(burst=True)
            time.sleep(0.05)
    assert [c["new"]["name"] for c in receiver.accepted_changes()] == ["Ada", "Grace"]
