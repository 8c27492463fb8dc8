"""pubsubpull's settings: one ``PUBSUBPULL = {...}`` dict in the project's settings.

Read them with ``conf.get(name)``; every key and its default is listed here.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

DEFAULTS: dict[str, Any] = {
    # The app whose migrations install triggers for published models of
    # installed packages (auth.User, say). Models of your own apps get theirs
    # in their own app's migrations.
    "MIGRATIONS_APP": None,
    # Pull over HTTP (pubsubpull.urls). Items per page of instances or
    # changes when the caller gives no ?limit=.
    "PAGE_SIZE": 100,
    # The largest ?limit= a caller may ask for; a larger one is 400
    # invalid_limit.
    "MAX_PAGE_SIZE": 5000,
    # The longest ?wait= a change feed request may long-poll, in seconds.
    "MAX_WAIT": 60,
    # Model labels anonymous callers may read; none by default. Everyone else
    # needs a service token scoped to the model, or a user with its view
    # permission.
    "ANONYMOUS_MODELS": [],
    # The health endpoint calls a worker stale when its heartbeat (every few
    # seconds) is older than this many seconds.
    "HEALTH_WORKER_STALE": 30.0,
    # Whether the health endpoint answers 503 when no worker is fresh. False
    # for web servers of a service without subscriptions or pulls.
    "HEALTH_REQUIRE_WORKER": True,
    # pubsubpull_prune deletes changes older than this (seconds) unless told
    # --older-than; never one a subscription has not received.
    "RETENTION": 30 * 24 * 3600.0,
    # The request header whose value RequestMiddleware stores as the Request's
    # request_id (an id your proxy or client sends to correlate logs), or None.
    "REQUEST_ID_HEADER": "X-Request-ID",
    # A header your reverse proxy sets with the client's address, e.g.
    # "X-Forwarded-For" or "X-Real-IP". None: use REMOTE_ADDR. Set it only
    # behind a proxy that always sets it, or clients can choose their address.
    "TRUSTED_PROXY_HEADER": None,
    # How many proxies you run in front of Django: the address taken from a
    # comma-separated TRUSTED_PROXY_HEADER is this many entries from the right.
    "TRUSTED_PROXY_COUNT": 1,
    # Subscriptions (pubsubpull.publisher.delivery). Times are in seconds.
    #
    # Callbacks may not resolve to an address the IANA special-purpose
    # registries call not globally reachable (private, loopback, link-local,
    # shared, documentation, ...), to multicast or cloud-metadata addresses,
    # or to an IPv6 form (NAT64, 6to4, Teredo, IPv4-mapped) of one, unless
    # listed here: host names ("billing.internal"), addresses or networks
    # ("10.0.0.0/8"; an IPv4 network covers its addresses inside IPv6 forms).
    "CALLBACK_ALLOW": [],
    # Changes per PUT unless a subscription asks for another batch_size.
    "BATCH_SIZE": 100,
    # The largest batch_size a subscription may ask for.
    "MAX_BATCH_SIZE": 1000,
    # A notification body (the JSON PUT to a callback) holds changes up to
    # this many bytes; the rest follow in the next batch. A single change
    # larger than this is sent alone. 1 MiB passes a default nginx
    # (client_max_body_size 1m) in front of a receiver.
    "BATCH_MAX_BYTES": 1024 * 1024,
    # Per PUT: the longest wait to open the connection to the receiver (TCP,
    # and the TLS handshake for https).
    "CONNECT_TIMEOUT": 5.0,
    # Per PUT, once connected: the longest wait to send the body and for each
    # part of the answer (its status line, then each chunk of the body). A
    # receiver silent this long fails the attempt, which is retried. The
    # response is read for at most this long from the start of the attempt,
    # and only its first RESPONSE_EXCERPT bytes are kept. Redirects are never
    # followed.
    "TIMEOUT": 15.0,
    # After the n-th failed attempt in a row, the next try waits a random time
    # between half and all of RETRY_BASE * 2 ** (n - 1) seconds, at most
    # RETRY_MAX: 1-2 s, then 2-4 s, 4-8 s, ... with the defaults.
    "RETRY_BASE": 2.0,
    # The cap of that wait (30 to 60 minutes from the 12th failure on, with
    # the defaults), and the longest Retry-After of a 429 or 503 honoured.
    "RETRY_MAX": 3600.0,
    # A subscription whose owner lost access (token revoked or narrowed, user
    # deactivated or deleted) is "forbidden": it sends nothing and checks
    # again this often, resuming in order when access is back.
    "ACCESS_RECHECK": 30.0,
    # A subscription failing without a success for this long is disabled; its
    # backlog is kept and re-enabling it resumes in order.
    "DISABLE_AFTER": 3 * 24 * 3600.0,
    # How long a worker holds a subscription per batch. Keep it above
    # CONNECT_TIMEOUT + TIMEOUT, so a slow answer is not also sent by a second
    # worker; a killed worker's batch is redelivered by another this soon.
    "LEASE": 25.0,
    # Workers also sweep for due subscriptions this often (retries, and any
    # wake-up a lost notification or job missed).
    "SWEEP_INTERVAL": 2.0,
    # Threads of pubsubpull_worker that run delivery and pull jobs.
    "WORKER_THREADS": 4,
    # The alias in TASKS that delivery and pull jobs go to. It must be a
    # backend with workers (django-tasks-db, RQ, ...): Django's default when
    # TASKS is unset, the ImmediateBackend, runs each job inside the call that
    # enqueues it.
    "TASK_BACKEND": "default",
    # The queue of that backend that delivery and pull jobs go to
    # (pubsubpull_worker runs this queue's jobs with django-tasks-db).
    "TASK_QUEUE": "default",
    # After rotate_secret, the old secret keeps signing beside the new one
    # this long, so receivers can switch without losing a notification.
    "SECRET_GRACE": 24 * 3600.0,
    # How much of a receiver's response body an attempt record keeps (bytes).
    "RESPONSE_EXCERPT": 4096,
    # Attempt records older than this are removed by prune_attempts().
    "ATTEMPT_RETENTION": 7 * 24 * 3600.0,
    # Pulling from another service (pubsubpull.client). Times are in seconds.
    #
    # Instances or changes asked for per page (the publisher caps it at its
    # MAX_PAGE_SIZE).
    "PULL_PAGE_SIZE": 1000,
    # A pull that follows the feed long-polls this long per request.
    "PULL_WAIT": 20.0,
    # Per request to the publisher, on top of the long poll.
    "PULL_TIMEOUT": 15.0,
    # How long a worker holds a cursor without committing a page; a killed
    # worker's cursor is taken up by another this soon. Longer than
    # PULL_WAIT + PULL_TIMEOUT plus a page's handler time.
    "PULL_LEASE": 60.0,
    # A pull job runs this long, then enqueues its successor (so jobs of
    # many cursors take turns on the worker threads).
    "PULL_BUDGET": 30.0,
    # After the n-th failure in a row of a pull (the publisher or the
    # handler), the next try waits a random time between half and all of
    # PULL_RETRY_BASE * 2 ** (n - 1) seconds, at most PULL_RETRY_MAX.
    "PULL_RETRY_BASE": 1.0,
    # The cap of that wait, and the longest Retry-After of the publisher
    # honoured.
    "PULL_RETRY_MAX": 300.0,
    # The largest notification body pubsubpull.receiver reads (bytes); a
    # larger one is answered 413. Django's DATA_UPLOAD_MAX_MEMORY_SIZE does
    # not apply to it. Keep it at least the publisher's BATCH_MAX_BYTES.
    "RECEIVER_MAX_BYTES": 50 * 1024 * 1024,
    # The receiver remembers the webhook-id of each batch it handled this
    # long, to drop redeliveries (older ones are also dropped by position).
    "RECEIVED_RETENTION": 7 * 24 * 3600.0,
    # A mirror keeps the tombstone of a deleted object this long, so an older
    # event of that object (from a transaction that committed before the
    # delete but is served after it) cannot bring the row back. Such events
    # come within the lifetime of the publisher's longest transaction.
    "MIRROR_TOMBSTONE_RETENTION": 7 * 24 * 3600.0,
}


def get(name: str) -> Any:
    """The value of ``PUBSUBPULL[name]``, or its default."""
    if name not in DEFAULTS:
        raise ImproperlyConfigured(f"pubsubpull has no setting {name!r}.")
    configured = getattr(settings, "PUBSUBPULL", {})
    return configured.get(name, DEFAULTS[name])


def check_keys() -> list[str]:
    """Names in the PUBSUBPULL setting that pubsubpull does not know."""
    configured = getattr(settings, "PUBSUBPULL", {})
    if not isinstance(configured, dict):
        return ["<PUBSUBPULL must be a dict>"]
    return sorted(set(configured) - set(DEFAULTS))
