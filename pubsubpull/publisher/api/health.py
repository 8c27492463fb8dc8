"""For operators: a health check for load balancers, and Prometheus metrics."""

from __future__ import annotations

from datetime import timedelta

from django.db import DatabaseError, connection
from django.db.models import Count, Q
from django.http import HttpResponse
from django.utils import timezone

from pubsubpull import conf
from pubsubpull.exceptions import AccessDenied
from pubsubpull.jobs.models import WorkerHeartbeat
from pubsubpull.publisher import feed
from pubsubpull.publisher.api import auth
from pubsubpull.publisher.api.responses import endpoint, json_response
from pubsubpull.publisher.delivery import subscriptions
from pubsubpull.publisher.delivery.models import Attempt, ParkedChange, Subscription


def _workers() -> tuple[int, int]:
    """How many workers have a fresh heartbeat, and how many a stale one."""
    stale_before = timezone.now() - timedelta(seconds=conf.health_worker_stale())
    fresh = WorkerHeartbeat.objects.filter(last_seen__gte=stale_before).count()
    stale = WorkerHeartbeat.objects.filter(last_seen__lt=stale_before).count()
    return fresh, stale


@endpoint("GET", public=True)
def health(request, caller):
    """200 when the database answers and a worker's heartbeat is fresh, else 503.

    Open to anyone (load balancers have no credentials); it tells counts only.
    """
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        fresh, stale = _workers()
    except DatabaseError:
        return json_response({"status": "unavailable", "database": "unreachable"}, status=503)
    healthy = fresh > 0 or not conf.health_require_worker()
    body = {
        "status": "ok" if healthy else "degraded",
        "database": "ok",
        "workers": {"fresh": fresh, "stale": stale},
    }
    return json_response(body, status=200 if healthy else 503)


def _allowed(caller) -> bool:
    if caller.token is not None:
        return caller.token.can_read("*")
    user = caller.user
    return user is not None and user.has_perm("pubsubpull.view_subscription")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _first_pending(subscription: Subscription) -> int:
    shown = subscriptions.pending(subscription)
    return shown["changes"][0] if shown and shown["changes"] else 0


@endpoint("GET")
def metrics(request, caller):
    """Prometheus text: changes recorded, per-subscription lag and deliveries, workers.

    Needs a service token scoped to every model (``*``) or a user with the
    ``pubsubpull.view_subscription`` permission.
    """
    if caller.token is None and caller.user is None:
        raise auth.NotAuthenticated(
            "Metrics need credentials: a service token scoped to '*', or a user with "
            "the pubsubpull.view_subscription permission."
        )
    if not _allowed(caller):
        raise AccessDenied(
            f"{caller.name} may not read metrics: it needs the '*' scope or the "
            "pubsubpull.view_subscription permission."
        )
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]):
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            lines.append(f"{name}{{{label_text}}} {value:g}" if labels else f"{name} {value:g}")

    recorded = feed.newest_change_id()
    metric(
        "pubsubpull_changes_recorded_total",
        "counter",
        "The latest change id taken: the changes recorded while every model is "
        "published with capture version 3 (ids step by 1); a version 4 log row "
        "takes 1,024 ids for up to 1,024 changes.",
        [({}, recorded)],
    )
    rows = list(Subscription.objects.order_by("owner", "name"))
    lags = [(s, subscriptions.lag(s)) for s in rows]
    name = lambda s: {"subscription": f"{s.owner}/{s.name}"}  # noqa: E731
    metric(
        "pubsubpull_subscription_lag_changes",
        "gauge",
        "Changes a subscription has not had acknowledged yet.",
        [(name(s), lag["changes"]) for s, lag in lags],
    )
    metric(
        "pubsubpull_subscription_lag_seconds",
        "gauge",
        "Age of the oldest change a subscription has not had acknowledged.",
        [(name(s), lag["seconds"]) for s, lag in lags],
    )
    metric(
        "pubsubpull_subscription_delivered_total",
        "counter",
        "Changes a subscription's receiver has acknowledged.",
        [(name(s), s.delivered) for s in rows],
    )
    metric(
        "pubsubpull_subscription_failures",
        "gauge",
        "Failed delivery attempts in a row.",
        [(name(s), s.failures) for s in rows],
    )
    metric(
        "pubsubpull_subscription_state",
        "gauge",
        "1 for the state each subscription is in.",
        [({**name(s), "state": s.state}, 1) for s in rows],
    )
    parked = dict(
        ParkedChange.objects.values("subscription_id")
        .annotate(n=Count("id"))
        .values_list("subscription_id", "n")
    )
    metric(
        "pubsubpull_subscription_parked_changes",
        "gauge",
        "Changes parked (set aside after the receiver refused them), to send again or forget.",
        [(name(s), parked.get(s.id, 0)) for s in rows],
    )
    pending = [s for s in rows if s.pending_batch]
    metric(
        "pubsubpull_subscription_pending_change",
        "gauge",
        "The change a subscription is stopped at (the first of the batch being retried): "
        "its id. A blocked subscription waits for its receiver, or for it to be parked.",
        [({**name(s), "state": s.state}, _first_pending(s)) for s in pending],
    )
    success = Q(status__gte=200, status__lt=300)
    counts = Attempt.objects.values("subscription_id").annotate(
        success=Count("id", filter=success), failure=Count("id", filter=~success)
    )
    by_id = {s.id: s for s in rows}
    metric(
        "pubsubpull_delivery_attempts",
        "gauge",
        "Delivery attempts on record (pruned after ATTEMPT_RETENTION), by outcome.",
        [
            ({**name(by_id[c["subscription_id"]]), "outcome": outcome}, c[outcome])
            for c in counts
            if c["subscription_id"] in by_id
            for outcome in ("success", "failure")
        ],
    )
    fresh, stale = _workers()
    metric(
        "pubsubpull_workers",
        "gauge",
        "pubsubpull_worker processes by heartbeat.",
        [({"heartbeat": "fresh"}, fresh), ({"heartbeat": "stale"}, stale)],
    )
    return HttpResponse(
        "\n".join(lines) + "\n", content_type="text/plain; version=0.0.4; charset=utf-8"
    )
