"""``manage.py pubsubpull_pull URL --handler dotted.path``: a pull in the foreground.

For first syncs and backfills: it shows rows done, rows/s and an ETA (from
the publisher's row estimate, when it has one) and stops when caught up
(``--follow`` keeps following). It uses the same cursor as the worker would
(named ``--name``, default the handler's path), so an interrupted run
resumes where it stopped, and the worker can take over afterwards.

While the command runs, the cursor is its own: it is created already held
by the command (or taken when free), and held between its runs and retries,
so a ``pubsubpull_worker`` beside it does not take it. The hold is a lease
renewed with each page: if the command is killed, a worker takes the cursor
over when the lease (PULL_LEASE seconds) runs out.
"""

from __future__ import annotations

import os
import sys
import time

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from pubsubpull import jobs
from pubsubpull.client import pulling
from pubsubpull.client.models import PullCursor
from pubsubpull.client.source import Publisher, SourceError, split_source


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Bar:
    """One status line, rewritten in place on a terminal."""

    def __init__(self, stream, total: int | None):
        self.stream = stream
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.last_drawn = 0.0
        self.tty = stream.isatty()

    def update(self, progress: pulling.Progress) -> None:
        self.done += progress.handled
        if progress.restarted:
            self.done, self.started = 0, time.monotonic()
            self.stream.write("\nthe publisher's log no longer reaches the cursor: new snapshot\n")
        now = time.monotonic()
        if now - self.last_drawn < (0.2 if self.tty else 5.0):
            return
        self.last_drawn = now
        self.draw(progress.phase, progress.caught_up)

    def draw(self, phase: str, caught_up: bool = False) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed
        line = f"{phase}: {self.done:,} rows"
        if self.total and phase == PullCursor.Phase.SNAPSHOT:
            share = min(self.done / self.total, 1.0)
            filled = int(share * 30)
            line = f"{phase} [{'#' * filled}{'.' * (30 - filled)}] {self.done:,}/~{self.total:,}"
            if rate > 0:
                line += f"  ETA {_duration(max(self.total - self.done, 0) / rate)}"
        line += f"  {rate:,.0f} rows/s  {_duration(elapsed)}"
        if caught_up:
            line += "  caught up"
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        self.stream.flush()


class Command(BaseCommand):
    help = (
        "Pull a publisher in the foreground with a progress bar: the snapshot, then the "
        "feed until caught up (--follow: keep following)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "url", help="The publisher's service document, or one model's instances URL."
        )
        parser.add_argument("--handler", required=True, help="Dotted path of the handler.")
        parser.add_argument("--models", default="", help="Comma-separated model labels.")
        parser.add_argument(
            "--start", default="beginning", help='"beginning" (default), "now" or a feed cursor.'
        )
        parser.add_argument(
            "--token",
            default=os.environ.get("PUBSUBPULL_TOKEN", ""),
            help="The publisher's bearer token (default: $PUBSUBPULL_TOKEN, else the cursor's).",
        )
        parser.add_argument("--page-size", type=int, default=None)
        parser.add_argument(
            "--whole-transactions",
            action="store_true",
            default=None,
            help="Pages that never split a publisher's transaction (default: the cursor's).",
        )
        parser.add_argument("--name", default=None, help="Cursor name (default: the handler).")
        parser.add_argument("--follow", action="store_true", help="Keep following the feed.")

    def handle(self, *args, **options):
        models = [m.strip() for m in options["models"].split(",") if m.strip()] or None
        owner = jobs.new_owner("command:")
        try:
            cursor = pulling.pull(
                options["url"],
                options["handler"],
                models=models,
                start=options["start"],
                page_size=options["page_size"],
                whole_transactions=options["whole_transactions"],
                auth=options["token"] or None,
                name=options["name"],
                enqueue=False,
                lease_owner=owner,
            )
        except (SourceError, ImportError, ValueError) as e:
            raise CommandError(str(e)) from e
        try:
            self._follow(cursor, owner, options)
        finally:
            pulling.release(cursor.id, owner)

    def _follow(self, cursor: PullCursor, owner: str, options) -> None:
        bar = Bar(sys.stderr, self._total(cursor) if cursor.phase == "snapshot" else None)
        self.stdout.write(
            f"pulling {cursor.source} into {cursor.handler} (cursor {cursor.name!r}, "
            f"{cursor.phase}, {cursor.rows:,} rows so far)"
        )
        if cursor.state in (PullCursor.State.BLOCKED, PullCursor.State.PAUSED):
            PullCursor.objects.filter(id=cursor.id).update(state=PullCursor.State.ACTIVE)
        while True:
            try:
                outcome = pulling.run(
                    cursor.id,
                    budget=3600.0,
                    progress=bar.update,
                    stop_when_caught_up=not options["follow"],
                    now=True,
                    raise_errors=True,
                    owner=owner,
                )
            except pulling.PageCannotApply as e:
                raise CommandError(
                    f"The handler's database refused a page ({e}, at {e.position}); it can "
                    "never apply as it is. Nothing of it was kept and the cursor is blocked: "
                    "fix the cause and run again, or park the events that fail and go on "
                    f"(manage.py pubsubpull_cursors park {cursor.name})."
                ) from e
            except SourceError as e:
                if e.status is not None and e.status < 500 and e.status not in (408, 429):
                    raise CommandError(str(e)) from e  # retrying will not help
                outcome = jobs.Outcome.FAILED
            except Exception as e:
                raise CommandError(
                    f"The handler failed: {type(e).__name__}: {e}. Nothing of its page was "
                    "kept; fix it and run again to resume."
                ) from e
            cursor.refresh_from_db()
            if outcome in ("caught_up", "done"):
                bar.draw(cursor.phase, caught_up=True)
                sys.stderr.write("\n")
                self.stdout.write(f"caught up: {cursor.rows:,} rows handled in all")
                return
            if outcome == "busy":
                raise CommandError(
                    f"The cursor {cursor.name!r} is held by {cursor.lease_owner or 'a worker'} "
                    f"until {cursor.lease_expires}; stop it, or use another --name."
                )
            if outcome == "failed":
                wait = max((cursor.next_run_at - timezone.now()).total_seconds(), 0.0)
                sys.stderr.write(f"\n{cursor.last_error}\nretrying in {wait:.1f} s\n")
                time.sleep(wait)

    def _total(self, cursor: PullCursor) -> int | None:
        service_url, _ = split_source(cursor.source)
        try:
            document = Publisher(service_url, cursor.token).document
        except SourceError:
            return None
        wanted = set(cursor.model_labels)
        counts = [m.get("count") for m in document["models"] if not wanted or m["model"] in wanted]
        if not counts or any(c is None for c in counts):
            return None
        return sum(counts)
