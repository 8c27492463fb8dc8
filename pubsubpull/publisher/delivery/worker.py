"""The publisher's worker process: wake subscriptions on NOTIFY and run delivery jobs.

``manage.py pubsubpull_worker`` runs one :class:`Worker`. It

- LISTENs on the ``pubsubpull`` channel, which the capture trigger notifies
  (with the model label) when a transaction that changed a published table
  commits, and wakes the subscriptions that follow that model at once;
- sweeps every SWEEP_INTERVAL seconds for due retries and anything a lost
  notification or job missed;
- runs the delivery jobs itself when they go to a django-tasks-db backend
  (the default): WORKER_THREADS threads claim ``deliver`` jobs from the
  database queue, and the ones this process enqueued are picked up without
  the backend's polling delay. Jobs enqueued by other processes are found
  within ``poll`` seconds. With any other backend (RQ, Celery, …) the jobs
  are left to that backend's own workers.

Any number of these processes may run, on any number of machines: the
subscription row's lease decides who delivers, never the job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

import psycopg
from django.db import close_old_connections, connection, transaction

from pubsubpull import conf
from pubsubpull.client import tasks as pull_tasks
from pubsubpull.client import wake as pull_wake
from pubsubpull.models import WorkerHeartbeat
from pubsubpull.publisher import feed
from pubsubpull.publisher.delivery import tasks, wake

logger = logging.getLogger("pubsubpull.delivery")

CHANNEL = "pubsubpull"

_HEARTBEAT_SQL = """
INSERT INTO pubsubpull_workerheartbeat (name, started, last_seen) VALUES (%s, now(), now())
ON CONFLICT (name) DO UPDATE SET last_seen = now()
"""


def _uses_database_backend() -> bool:
    try:
        from django_tasks_db.backend import DatabaseBackend
    except ImportError:  # pragma: no cover - a project without django-tasks-db
        return False
    return isinstance(tasks.backend(), DatabaseBackend)


class Worker:
    def __init__(
        self,
        *,
        threads: int | None = None,
        sweep_interval: float | None = None,
        run_jobs: bool | None = None,
        poll: float = 1.0,
        log: Callable[[str], None] = logger.info,
    ):
        self.threads = conf.get("WORKER_THREADS") if threads is None else threads
        self.sweep_interval = (
            conf.get("SWEEP_INTERVAL") if sweep_interval is None else sweep_interval
        )
        self.run_jobs = _uses_database_backend() if run_jobs is None else run_jobs
        self.poll = poll
        self.log = log
        self.stop = threading.Event()
        self.ready = threading.Event()
        self._jobs = threading.Semaphore(0)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._threads: list[threading.Thread] = []

    # -- waking ---------------------------------------------------------------

    def _enqueued(self, ids: list[int]) -> None:
        for _ in ids:
            self._jobs.release()

    def _listen(self) -> psycopg.Connection:
        params = connection.get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        conn = psycopg.connect(**params, autocommit=True)
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def run(self) -> None:
        """Run until :attr:`stop` is set (the command sets it on SIGTERM/SIGINT)."""
        if self.run_jobs:
            for n in range(self.threads):
                thread = threading.Thread(
                    target=self._run_jobs, name=f"pubsubpull-delivery-{n}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        self.log(
            f"pubsubpull worker: listening on '{CHANNEL}', sweeping every "
            f"{self.sweep_interval:g} s, "
            + (
                f"running delivery jobs in {self.threads} threads"
                if self.run_jobs
                else "leaving delivery jobs to the TASKS backend's workers"
            )
        )
        backoff = 0.1
        while not self.stop.is_set():
            try:
                with self._listen() as listener:
                    # Notifications sent while we were not listening are lost:
                    # sweep first.
                    next_sweep = 0.0
                    # Writers notify only while a listener asks them to.
                    listener.execute(feed.STAY_AWAKE_SQL)
                    self._heartbeat()
                    next_stamp = time.monotonic() + feed.STAY_AWAKE_EVERY
                    self.ready.set()
                    backoff = 0.1
                    while not self.stop.is_set():
                        now = time.monotonic()
                        if now >= next_stamp:
                            listener.execute(feed.STAY_AWAKE_SQL)
                            self._heartbeat()
                            next_stamp = now + feed.STAY_AWAKE_EVERY
                        if now >= next_sweep:
                            self._enqueued(wake.sweep() + pull_wake.sweep())
                            next_sweep = now + self.sweep_interval
                        labels = set()
                        timeout = min(max(next_sweep - time.monotonic(), 0.0), 0.5)
                        for notify in listener.notifies(timeout=timeout, stop_after=1):
                            labels.add(notify.payload)
                        if labels:
                            self._enqueued(wake.wake_models(labels))
            except Exception:
                if self.stop.is_set():
                    break
                logger.exception("pubsubpull worker: listening failed; retrying")
                close_old_connections()
                connection.close()
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        for thread in self._threads:
            thread.join(timeout=conf.get("TIMEOUT") + 5)
        try:
            WorkerHeartbeat.objects.filter(name=self.name).delete()
        except Exception:  # the database may be what stopped us
            logger.warning("pubsubpull worker: could not remove its heartbeat", exc_info=True)
        connection.close()

    def _heartbeat(self) -> None:
        """Tell the health endpoint this worker is alive (see WorkerHeartbeat)."""
        with connection.cursor() as cursor:
            cursor.execute(_HEARTBEAT_SQL, [self.name])

    # -- running jobs (django-tasks-db) --------------------------------------

    def _run_jobs(self) -> None:
        from django_tasks_db.management.commands.db_worker import Worker as DBWorker
        from django_tasks_db.models import DBTaskResult

        name = tasks.backend().alias
        runner = DBWorker(
            queue_names=[conf.get("TASK_QUEUE")],
            interval=self.poll,
            batch=False,
            backend_name=name,
            startup_delay=False,
            max_tasks=None,
            worker_id=f"pubsubpull-{threading.current_thread().name}",
            excluded_queue_names=[],
        )
        jobs = DBTaskResult.objects.ready().filter(
            backend_name=name,
            queue_name=conf.get("TASK_QUEUE"),
            # Pull jobs too: a subscribing service runs this same worker.
            task_path__in=[tasks.deliver.module_path, pull_tasks.pull_job.module_path],
        )
        while not self.stop.is_set():
            try:
                with transaction.atomic():
                    job = jobs.get_locked()
                    if job is not None:
                        job.claim(runner.worker_id)
                if job is not None:
                    runner.run_task(job)
                    continue
            except Exception:
                logger.exception("pubsubpull worker: running a delivery job failed")
                connection.close()
                self.stop.wait(1.0)
                continue
            self._jobs.acquire(timeout=self.poll)
        connection.close()
