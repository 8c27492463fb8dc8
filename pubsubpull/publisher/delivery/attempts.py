"""Keeping the attempt log bounded."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from pubsubpull import conf
from pubsubpull.publisher.delivery.models import Attempt


def prune_attempts(before: datetime | None = None) -> int:
    """Delete attempt records older than ATTEMPT_RETENTION (or ``before``); how many went.

    The cleanup command (``pubsubpull_prune``) calls this; the last attempt of
    each subscription is kept whatever its age, so GET still shows it.
    """
    if before is None:
        before = timezone.now() - timedelta(seconds=conf.attempt_retention())
    old = Attempt.objects.filter(at__lt=before)
    latest = Attempt.objects.order_by("subscription_id", "-at").distinct("subscription_id")
    deleted, _ = old.exclude(pk__in=latest.values("pk")).delete()
    return deleted
