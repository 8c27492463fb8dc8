"""``manage.py pubsubpull_subscriptions``: a status table of every subscription."""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db.models import Count
from django.utils import timezone

from pubsubpull.publisher.delivery.models import Subscription
from pubsubpull.publisher.delivery.subscriptions import lag

# States whose reason matters more than the last error (it says what to do).
_EXPLAINED = {"blocked", "forbidden", "disabled", "paused"}
_RETRYING = {"failing", "blocked", "forbidden"}


def _ago(moment) -> str:
    if moment is None:
        return "-"
    seconds = (timezone.now() - moment).total_seconds()
    if seconds < 0:
        return f"in {-seconds:.0f}s"
    return f"{seconds:.0f}s ago"


class Command(BaseCommand):
    help = (
        "Show every subscription: state, lag, deliveries, parked changes, last success, "
        "next try, and why it is not active."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--width", type=int, default=100, help="Cut the last column to this many characters."
        )

    def handle(self, *args, width, **options):
        rows = [
            ("NAME", "OWNER", "STATE", "LAG", "BEHIND", "DELIVERED", "PARKED", "LAST OK", "NEXT",
             "REASON")
        ]  # fmt: skip
        subscriptions = Subscription.objects.annotate(parked_count=Count("parked"))
        for s in subscriptions.order_by("owner", "name"):
            behind = lag(s)
            reason = s.state_reason if s.state in _EXPLAINED else s.last_error or s.state_reason
            rows.append(
                (
                    s.name,
                    s.owner,
                    s.state,
                    str(behind["changes"]),
                    f"{behind['seconds']:.0f}s",
                    str(s.delivered),
                    str(s.parked_count),
                    _ago(s.last_success_at),
                    _ago(s.next_attempt_at) if s.state in _RETRYING else "-",
                    reason[:width],
                )
            )
        if len(rows) == 1:
            self.stdout.write("No subscriptions.")
            return
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )
