"""Delete old changes, requests and delivery attempts, in batches."""

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS

from pubsubpull import conf
from pubsubpull.publisher.retention import parse_age, prune


class Command(BaseCommand):
    help = (
        "Delete changes older than --older-than (default: the RETENTION setting), "
        "never one that a subscription has not received yet, then the requests "
        "left without changes and old delivery attempts. Feed cursors from before "
        "the pruned range answer 410, so their readers take a new snapshot."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            help="an age: 30d, 12h, 90m, 3600s, 2w (default: PUBSUBPULL['RETENTION'])",
        )
        parser.add_argument("--batch-size", type=int, default=10_000)
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)

    def handle(self, *args, older_than, batch_size, database, verbosity, **options):
        try:
            age = parse_age(older_than) if older_than else timedelta(seconds=conf.retention())
        except ValueError as error:
            raise CommandError(str(error)) from None
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")

        def progress(done):
            if verbosity > 1:
                self.stdout.write(
                    f"  {done.changes} changes, {done.requests} requests so far", ending="\r"
                )

        done = prune(age, batch_size=batch_size, using=database, progress=progress)
        self.stdout.write(
            f"Pruned {done.changes} changes, {done.requests} requests and "
            f"{done.attempts} delivery attempts older than {age}."
        )
