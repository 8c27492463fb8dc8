"""``manage.py pubsubpull_cursors``: the pulls this service runs, and what to do with a stuck one.

manage.py pubsubpull_cursors                   a status table of every pull cursor
manage.py pubsubpull_cursors resume NAME       run it again now (the cause is fixed)
manage.py pubsubpull_cursors park NAME         set aside what fails on its next page, go on
manage.py pubsubpull_cursors pause NAME        stop running it until resumed
manage.py pubsubpull_cursors reapply NAME      re-apply its parked events, oldest first
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from pubsubpull.client import parking, pulling
from pubsubpull.client.models import ParkedEvent, PullCursor


def _ago(moment) -> str:
    if moment is None:
        return "-"
    seconds = (timezone.now() - moment).total_seconds()
    return f"in {-seconds:.0f}s" if seconds < 0 else f"{seconds:.0f}s ago"


class Command(BaseCommand):
    help = "Show pull cursors (state, phase, rows, parked events, error); resume, park, pause."

    def add_arguments(self, parser):
        parser.add_argument(
            "action",
            nargs="?",
            default="list",
            choices=["list", "resume", "park", "pause", "reapply"],
        )
        parser.add_argument("names", nargs="*", help="Cursor names (see the list).")

    def handle(self, *args, action, names, **options):
        if action == "list":
            return self.list()
        if not names:
            raise CommandError(f"Name the cursor(s) to {action}: see manage.py pubsubpull_cursors.")
        cursors = list(PullCursor.objects.filter(name__in=names))
        unknown = set(names) - {c.name for c in cursors}
        if unknown:
            raise CommandError(f"No pull cursor named {', '.join(sorted(unknown))}.")
        if action == "resume":
            pulling.resume(cursors)
            self.stdout.write(f"Resumed {', '.join(names)}.")
        elif action == "park":
            pulling.park(cursors)
            self.stdout.write(
                f"{', '.join(names)}: the events that fail on the next page will be parked "
                "and the pull goes on."
            )
        elif action == "pause":
            pulling.pause(cursors)
            self.stdout.write(f"Paused {', '.join(names)}.")
        else:
            parked = ParkedEvent.objects.filter(cursor__in=cursors).select_related("cursor")
            applied, failing = parking.reapply(parked)
            self.stdout.write(f"Applied {applied} parked event(s); {failing} still fail.")
            if failing:
                for item in ParkedEvent.objects.filter(cursor__in=cursors)[:10]:
                    self.stdout.write(f"  {item.op} {item.model} {item.object_pk}: {item.error}")

    def list(self):
        rows = [("NAME", "STATE", "PHASE", "ROWS", "PARKED", "LAST OK", "NEXT", "ERROR")]
        for c in PullCursor.objects.order_by("name"):
            rows.append(
                (
                    c.name,
                    c.state,
                    c.phase,
                    f"{c.rows:,}",
                    str(c.parked.count()),
                    _ago(c.last_success_at),
                    _ago(c.next_run_at) if c.state == "failing" else "-",
                    c.last_error.splitlines()[0][:80] if c.last_error else "",
                )
            )
        if len(rows) == 1:
            self.stdout.write("No pull cursors.")
            return
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )
