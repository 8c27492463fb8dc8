"""The worker process: wake jobs on NOTIFY, sweep for due ones, run them.

``manage.py pubsubpull_worker`` runs one :class:`Worker`, for every kind of
job registered with the engine (delivering subscriptions, running pulls).
It

- LISTENs on the channels the kinds name (delivery: ``pubsubpull``, which
  the capture trigger notifies with the model label when a transaction that
  changed a published table commits) and wakes the rows a notification
  concerns at once;
- sweeps every SWEEP_INTERVAL seconds, for every kind, for due retries and
  anything a lost notification or job missed;
- runs the jobs itself when they go to a django-tasks-db backend (the
  default): WORKER_THREADS threads claim ``run_job`` jobs from the database
  queue, and the ones this process enqueued are picked up without the
  backend's polling delay. Jobs enqueued by other processes are found
  within ``poll`` seconds. With any other backend (RQ, Celery, …) the jobs
  are left to that backend's own workers.

Any number of these processes may run, on any number of machines: the row's
lease decides who works on it, never the job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg
from django.db import close_old_connections, connection, transaction

from pubsubpull import conf
from pubsubpull.jobs import engine, tasks
from pubsubpull.jobs.engine import kinds
from pubsubpull.jobs.identity import WORKER_NAME
from pubsubpull.jobs.models import WorkerHeartbeat

logger = logging.getLogger("pubsubpull.delivery")

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
        self.threads = conf.worker_threads() if threads is None else threads
        self.sweep_interval = conf.sweep_interval() if sweep_interval is None else sweep_interval
        self.run_jobs = _uses_database_backend() if run_jobs is None else run_jobs
        self.poll = poll
        self.log = log
        self.stop = threading.Event()
        self.ready = threading.Event()
        self._jobs = threading.Semaphore(0)
        self.name = WORKER_NAME
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
        for channel in self._channels():
            conn.execute(f"LISTEN {channel}")
        return conn

    def _channels(self) -> list[str]:
        return sorted({k.listen.channel for k in kinds() if k.listen is not None})

    def _stay_awake(self, listener: psycopg.Connection) -> None:
        """Ask writers to go on notifying (they notify only while a listener asks),
        and tell the health endpoint that this worker lives."""
        for kind in kinds():
            if kind.listen is not None and kind.listen.stay_awake_sql:
                listener.execute(kind.listen.stay_awake_sql)
        self._heartbeat()

    def _sweep(self) -> None:
        for kind in kinds():
            self._enqueued(kind.sweep())

    def _notified(self, payloads: dict[str, set[str]]) -> None:
        for kind in kinds():
            if kind.listen is not None and payloads.get(kind.listen.channel):
                self._enqueued(kind.listen.wake(payloads[kind.listen.channel]))

    def run(self) -> None:
        """Run until :attr:`stop` is set (the command sets it on SIGTERM/SIGINT)."""
        if self.run_jobs:
            for n in range(self.threads):
                thread = threading.Thread(
                    target=self._run_jobs, name=f"pubsubpull-jobs-{n}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        self.log(
            "pubsubpull worker: listening on "
            + ", ".join(f"'{c}'" for c in self._channels())
            + f", sweeping every {self.sweep_interval:g} s for "
            + ", ".join(k.name for k in kinds())
            + " jobs, "
            + (
                f"running jobs in {self.threads} threads"
                if self.run_jobs
                else "leaving jobs to the TASKS backend's workers"
            )
        )
        backoff = 0.1
        while not self.stop.is_set():
            try:
                with self._listen() as listener:
                    # Notifications sent while we were not listening are lost:
                    # sweep first.
                    next_sweep = 0.0
                    self._stay_awake(listener)
                    next_stamp = time.monotonic() + self._stay_awake_every()
                    self.ready.set()
                    backoff = 0.1
                    while not self.stop.is_set():
                        now = time.monotonic()
                        if now >= next_stamp:
                            self._stay_awake(listener)
                            next_stamp = now + self._stay_awake_every()
                        if now >= next_sweep:
                            self._sweep()
                            next_sweep = now + self.sweep_interval
                        payloads: dict[str, set[str]] = {}
                        timeout = min(max(next_sweep - time.monotonic(), 0.0), 0.5)
                        for notify in listener.notifies(timeout=timeout, stop_after=1):
                            payloads.setdefault(notify.channel, set()).add(notify.payload)
                        if payloads:
                            self._notified(payloads)
            except Exception:
                # Told to stop as the connection failed (a race no test can time):
                # not a failure to log.
                if self.stop.is_set():  # pragma: no cover
                    break
                logger.exception("pubsubpull worker: listening failed; retrying")
                close_old_connections()
                connection.close()
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        for thread in self._threads:
            thread.join(timeout=conf.timeout() + 5)
        try:
            WorkerHeartbeat.objects.filter(name=self.name).delete()
        except Exception:  # the database may be what stopped us
            logger.warning("pubsubpull worker: could not remove its heartbeat", exc_info=True)
        connection.close()

    def _stay_awake_every(self) -> float:
        every = [k.listen.stay_awake_every for k in kinds() if k.listen is not None]
        return min(every, default=5.0)

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
            queue_names=[conf.task_queue()],
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
            queue_name=conf.task_queue(),
            task_path=engine.run_job.module_path,
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
                logger.exception("pubsubpull worker: running a job failed")
                connection.close()
                self.stop.wait(1.0)
                continue
            self._jobs.acquire(timeout=self.poll)
        connection.close()
