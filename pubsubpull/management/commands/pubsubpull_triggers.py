"""List, install, repair and prune pubsubpull's triggers without migrations."""

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS

from pubsubpull.capture import publishing, triggers
from pubsubpull.capture.registry import get_registration


class Command(BaseCommand):
    help = (
        "Show each published model's triggers as installed, outdated, missing or "
        "orphaned; `install` installs missing and outdated ones, `prune` removes "
        "orphaned ones. Migrations normally do this; the command is for projects "
        "that cannot use them, and for repairs."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "action",
            nargs="?",
            default="list",
            choices=["list", "install", "prune"],
            help="list (default), install (missing and outdated), prune (orphaned)",
        )
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)

    def handle(self, *args, action, database, **options):
        rows = publishing.status(database)
        if action == "install":
            for row in rows:
                registration = get_registration(row.label) if row.label else None
                if registration is not None and row.state in (row.MISSING, row.OUTDATED):
                    publishing.install(registration, database)
                    self.stdout.write(f"installed {row.label} ({row.table})")
        elif action == "prune":
            for row in rows:
                if row.state == row.ORPHANED:
                    triggers.uninstall(row.table, database)
                    self.stdout.write(f"pruned {row.table}")
        if action != "list":
            rows = publishing.status(database)
        if not rows:
            self.stdout.write("No model is published and no pubsubpull trigger is installed.")
            return
        width = max(len(row.label or "-") for row in rows)
        for row in rows:
            style = self.style.SUCCESS if row.state == row.INSTALLED else self.style.WARNING
            self.stdout.write(f"{(row.label or '-'):<{width}}  {row.table:<30}  {style(row.state)}")
        bad = [r for r in rows if r.state != r.INSTALLED]
        if bad and options["verbosity"] and action == "list":
            self.stdout.write(
                "Run `pubsubpull_triggers install` to install missing and outdated "
                "triggers, `pubsubpull_triggers prune` to remove orphaned ones."
            )
        if bad and action != "list":
            raise CommandError(f"{len(bad)} table(s) still need attention.")
