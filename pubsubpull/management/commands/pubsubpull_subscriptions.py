"""``manage.py pubsubpull_subscriptions``: a status table of every subscription."""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.utils import timezone

from pubsubpull.delivery.models import Subscription
from pubsubpull.delivery.subscriptions import lag


def _ago(moment) -> str:
    if moment is None:
        return "-"
    seconds = (timezone.now() - moment).total_seconds()
    if seconds < 0:
        return f"in {-seconds:.0f}s"
    return f"{seconds:.0f}s ago"


class Command(BaseCommand):
    help = "Show every subscription: state, lag, deliveries, last success and error."

    def handle(self, *args, **options):
        rows = [
            ("NAME", "OWNER", "STATE", "LAG", "BEHIND", "DELIVERED", "LAST OK", "NEXT", "ERROR")
        ]
        for s in Subscription.objects.order_by("owner", "name"):
            behind = lag(s)
            rows.append(
                (
                    s.name,
                    s.owner,
                    s.state,
                    str(behind["changes"]),
                    f"{behind['seconds']:.0f}s",
                    str(s.delivered),
                    _ago(s.last_success_at),
                    _ago(s.next_attempt_at) if s.state == "failing" else "-",
                    (s.last_error or s.state_reason)[:60],
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
