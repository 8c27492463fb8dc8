"""``manage.py pubsubpull_worker``: everything a service runs besides its web server.

It runs the job engine's worker (``pubsubpull.jobs.worker``) for every kind of
job: delivering subscriptions (a publisher) and running pulls (a subscriber).
"""

from __future__ import annotations

import signal

from django.core.management.base import BaseCommand

from pubsubpull.jobs.worker import Worker


class Command(BaseCommand):
    help = (
        "Deliver subscriptions: wake on the change NOTIFY, sweep for retries, and run "
        "the delivery jobs (when TASKS uses django-tasks-db). Run one or more per service."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--threads", type=int, default=None, help="Delivery threads (WORKER_THREADS)."
        )
        parser.add_argument(
            "--sweep-interval",
            type=float,
            default=None,
            help="Seconds between sweeps for due retries (SWEEP_INTERVAL).",
        )
        parser.add_argument(
            "--no-jobs",
            action="store_true",
            help="Only wake subscriptions; leave the jobs to the TASKS backend's own workers.",
        )

    def handle(self, *args, **options):
        worker = Worker(
            threads=options["threads"],
            sweep_interval=options["sweep_interval"],
            run_jobs=False if options["no_jobs"] else None,
            log=lambda message: self.stdout.write(message),
        )

        def stop(signum, frame):
            self.stdout.write("pubsubpull worker: stopping after the current deliveries")
            worker.stop.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        worker.run()
