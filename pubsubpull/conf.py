"""pubsubpull's settings: one ``PUBSUBPULL = {...}`` dict in the project's settings.

Every key and its default is stated once, in :data:`DEFAULTS` (whose comments
``scripts/settings_doc.py`` turns into docs/settings.rst). The rest of the
package reads each setting through its typed function below (``conf.lease()``
for ``LEASE``), never by string key; :mod:`pubsubpull.checks` checks the values'
types, ranges and the invariants between them at startup.
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
    # What makemigrations writes to publish a model: 3, a jsonb row per
    # change in the shared pubsubpull_change; 4, the model's own log table,
    # a row per chunk of up to 1,024 of a statement's rows, typed copies
    # instead of JSON (docs/publishing.rst). Changing it writes a migration per
    # published model; going back folds a version 4 log into pubsubpull_change.
    "CAPTURE_VERSION": 3,
    # Pull over HTTP (pubsubpull.urls). Items per page of instances or
    # changes when the caller gives no ?limit=.
    "PAGE_SIZE": 100,
    # The largest ?limit= a caller may ask for; a larger one is 400
    # invalid_limit.
    "MAX_PAGE_SIZE": 5000,
    # The longest ?wait= a change feed request may long-poll, in seconds.
    "MAX_WAIT": 60,
    # A filtered read of the feed (?filters=, or a subscription's filters)
    # looks at most this many changes (or its limit, if larger) per page or
    # batch: a filter that matches little still answers promptly, with a
    # cursor past the changes it looked at and skipped.
    "FILTER_SCAN": 10000,
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
    # Whether RequestMiddleware adds Pubsubpull-Position (the feed position of
    # the request's last change, for read-your-writes) to the response of a
    # request that wrote: one indexed query per database it wrote (about
    # 0.3 ms). False saves it; pubsubpull.position() works either way.
    "POSITION_HEADER": True,
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
    # The largest batch_size a subscription may ask for (at least BATCH_SIZE:
    # pubsubpull.E008).
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
    # CONNECT_TIMEOUT + TIMEOUT (pubsubpull.E006 otherwise), so a slow answer
    # is not also sent by a second worker; a killed worker's batch is
    # redelivered by another this soon.
    "LEASE": 25.0,
    # Workers also sweep for due subscriptions this often (retries, and any
    # wake-up a lost notification or job missed).
    "SWEEP_INTERVAL": 2.0,
    # Threads of pubsubpull_worker that run delivery and pull jobs.
    "WORKER_THREADS": 4,
    # The alias in TASKS that delivery and pull jobs go to (pubsubpull.E010 if
    # TASKS has no such alias). It must be a backend with workers
    # (django-tasks-db, RQ, ...): Django's default when TASKS is unset, the
    # ImmediateBackend, runs each job inside the call that enqueues it, so
    # pubsubpull.pull() pulls inside the call instead of returning and the
    # worker delivers in its listening thread (pubsubpull.W002); a
    # DummyBackend never runs one (pubsubpull.W003).
    "TASK_BACKEND": "default",
    # The queue of that backend that delivery and pull jobs go to
    # (pubsubpull_worker runs this queue's jobs with django-tasks-db).
    "TASK_QUEUE": "default",
    # After rotate_secret, the old secret keeps signing beside the new one
    # this long, so receivers can switch without losing a notification.
    "SECRET_GRACE": 24 * 3600.0,
    # CloudEvents framing (a subscription's "format": "cloudevents", or a feed
    # request's ?format=cloudevents). Each event's source: an absolute URI
    # naming this service, e.g. "https://customers.example.com/pubsubpull/".
    # None: the path of pubsubpull's service document ("/pubsubpull/"), which
    # is unique only within one site; set it when events of several services
    # meet.
    "CLOUDEVENTS_SOURCE": None,
    # The start of each event's type, reverse-DNS of your organisation; the
    # type is "<prefix>.<app_label>.<model>.<op>", e.g.
    # "org.pubsubpull.shop.customer.update".
    "CLOUDEVENTS_TYPE_PREFIX": "org.pubsubpull",
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
    # PULL_WAIT + PULL_TIMEOUT plus a page's handler time (pubsubpull.E007
    # if not longer than PULL_WAIT + PULL_TIMEOUT).
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
    """The value of ``PUBSUBPULL[name]``, or its default.

    The lookup the typed functions below share; read a setting through its
    function (``conf.lease()``), which says its type.
    """
    if name not in DEFAULTS:
        raise ImproperlyConfigured(f"pubsubpull has no setting {name!r}.")
    given = configured()
    return given.get(name, DEFAULTS[name]) if isinstance(given, dict) else DEFAULTS[name]


def configured() -> Any:
    """The project's PUBSUBPULL setting as given (``{}`` when unset)."""
    return getattr(settings, "PUBSUBPULL", {})


# One typed function per setting (the checks read their return types). Numbers
# typed ``float`` accept ints too.


def migrations_app() -> str | None:
    """``MIGRATIONS_APP``: the app whose migrations hold installed packages' triggers."""
    return get("MIGRATIONS_APP")


def capture_version() -> int:
    """``CAPTURE_VERSION``: 3 or 4, the capture makemigrations writes."""
    version = get("CAPTURE_VERSION")
    if version not in (3, 4) or isinstance(version, bool):
        raise ImproperlyConfigured(
            f"PUBSUBPULL['CAPTURE_VERSION'] is {version!r}: it must be 3 or 4."
        )
    return version


def page_size() -> int:
    """``PAGE_SIZE``: items per page when a caller gives no ``?limit=``."""
    return get("PAGE_SIZE")


def max_page_size() -> int:
    """``MAX_PAGE_SIZE``: the largest ``?limit=`` a caller may ask for."""
    return get("MAX_PAGE_SIZE")


def filter_scan() -> int:
    """``FILTER_SCAN``: the most changes a filtered page or batch looks at."""
    return get("FILTER_SCAN")


def max_wait() -> float:
    """``MAX_WAIT``: the longest ``?wait=`` of a change feed long poll (seconds)."""
    return get("MAX_WAIT")


def anonymous_models() -> list[str]:
    """``ANONYMOUS_MODELS``: model labels anonymous callers may read."""
    return get("ANONYMOUS_MODELS")


def health_worker_stale() -> float:
    """``HEALTH_WORKER_STALE``: seconds after which a worker's heartbeat is stale."""
    return get("HEALTH_WORKER_STALE")


def health_require_worker() -> bool:
    """``HEALTH_REQUIRE_WORKER``: whether the health endpoint answers 503 without a fresh worker."""
    return get("HEALTH_REQUIRE_WORKER")


def position_header() -> bool:
    """``POSITION_HEADER``: whether writing requests' responses carry ``Pubsubpull-Position``."""
    return get("POSITION_HEADER")


def retention() -> float:
    """``RETENTION``: seconds of changes ``pubsubpull_prune`` keeps by default."""
    return get("RETENTION")


def request_id_header() -> str | None:
    """``REQUEST_ID_HEADER``: the header stored as a Request's ``request_id``, or None."""
    return get("REQUEST_ID_HEADER")


def trusted_proxy_header() -> str | None:
    """``TRUSTED_PROXY_HEADER``: the proxy header holding the client's address, or None."""
    return get("TRUSTED_PROXY_HEADER")


def trusted_proxy_count() -> int:
    """``TRUSTED_PROXY_COUNT``: how many proxies run in front of Django."""
    return get("TRUSTED_PROXY_COUNT")


def callback_allow() -> list[str]:
    """``CALLBACK_ALLOW``: hosts, addresses and networks callbacks may use although not global."""
    return get("CALLBACK_ALLOW")


def batch_size() -> int:
    """``BATCH_SIZE``: changes per PUT unless a subscription asks for another batch_size."""
    return get("BATCH_SIZE")


def max_batch_size() -> int:
    """``MAX_BATCH_SIZE``: the largest batch_size a subscription may ask for."""
    return get("MAX_BATCH_SIZE")


def batch_max_bytes() -> int:
    """``BATCH_MAX_BYTES``: the largest notification body (bytes), bar a larger change."""
    return get("BATCH_MAX_BYTES")


def connect_timeout() -> float:
    """``CONNECT_TIMEOUT``: seconds a PUT may take to connect (TCP, TLS) to the receiver."""
    return get("CONNECT_TIMEOUT")


def timeout() -> float:
    """``TIMEOUT``: seconds a connected PUT waits to send, and for each part of the answer."""
    return get("TIMEOUT")


def retry_base() -> float:
    """``RETRY_BASE``: the base of a delivery's exponential backoff (seconds)."""
    return get("RETRY_BASE")


def retry_max() -> float:
    """``RETRY_MAX``: the cap of a delivery's backoff and of Retry-After (seconds)."""
    return get("RETRY_MAX")


def access_recheck() -> float:
    """``ACCESS_RECHECK``: how often a forbidden subscription checks its access again (seconds)."""
    return get("ACCESS_RECHECK")


def disable_after() -> float:
    """``DISABLE_AFTER``: seconds of failing without a success before a subscription is disabled."""
    return get("DISABLE_AFTER")


def lease() -> float:
    """``LEASE``: seconds a worker holds a subscription per batch."""
    return get("LEASE")


def sweep_interval() -> float:
    """``SWEEP_INTERVAL``: how often workers sweep for due subscriptions and cursors (seconds)."""
    return get("SWEEP_INTERVAL")


def worker_threads() -> int:
    """``WORKER_THREADS``: threads of ``pubsubpull_worker`` that run jobs."""
    return get("WORKER_THREADS")


def task_backend() -> str:
    """``TASK_BACKEND``: the TASKS alias delivery and pull jobs go to."""
    return get("TASK_BACKEND")


def task_queue() -> str:
    """``TASK_QUEUE``: the queue of that backend delivery and pull jobs go to."""
    return get("TASK_QUEUE")


def secret_grace() -> float:
    """``SECRET_GRACE``: seconds the old secret keeps signing after ``rotate_secret``."""
    return get("SECRET_GRACE")


def cloudevents_source() -> str | None:
    """``CLOUDEVENTS_SOURCE``: the ``source`` of CloudEvents, or None for the service path."""
    return get("CLOUDEVENTS_SOURCE")


def cloudevents_type_prefix() -> str:
    """``CLOUDEVENTS_TYPE_PREFIX``: the start of a CloudEvent's ``type``."""
    return get("CLOUDEVENTS_TYPE_PREFIX")


def response_excerpt() -> int:
    """``RESPONSE_EXCERPT``: bytes of a receiver's response an attempt record keeps."""
    return get("RESPONSE_EXCERPT")


def attempt_retention() -> float:
    """``ATTEMPT_RETENTION``: seconds attempt records are kept."""
    return get("ATTEMPT_RETENTION")


def pull_page_size() -> int:
    """``PULL_PAGE_SIZE``: instances or changes asked for per page of a pull."""
    return get("PULL_PAGE_SIZE")


def pull_wait() -> float:
    """``PULL_WAIT``: seconds a pull following the feed long-polls per request."""
    return get("PULL_WAIT")


def pull_timeout() -> float:
    """``PULL_TIMEOUT``: seconds per request to the publisher, on top of the long poll."""
    return get("PULL_TIMEOUT")


def pull_lease() -> float:
    """``PULL_LEASE``: seconds a worker holds a cursor without committing a page."""
    return get("PULL_LEASE")


def pull_budget() -> float:
    """``PULL_BUDGET``: seconds a pull job runs before it enqueues its successor."""
    return get("PULL_BUDGET")


def pull_retry_base() -> float:
    """``PULL_RETRY_BASE``: the base of a pull's exponential backoff (seconds)."""
    return get("PULL_RETRY_BASE")


def pull_retry_max() -> float:
    """``PULL_RETRY_MAX``: the cap of a pull's backoff and of Retry-After (seconds)."""
    return get("PULL_RETRY_MAX")


def receiver_max_bytes() -> int:
    """``RECEIVER_MAX_BYTES``: the largest notification body the receiver reads (bytes)."""
    return get("RECEIVER_MAX_BYTES")


def received_retention() -> float:
    """``RECEIVED_RETENTION``: seconds the receiver remembers a handled batch's webhook-id."""
    return get("RECEIVED_RETENTION")


def mirror_tombstone_retention() -> float:
    """``MIRROR_TOMBSTONE_RETENTION``: seconds a mirror keeps a deleted object's tombstone."""
    return get("MIRROR_TOMBSTONE_RETENTION")


def check_keys() -> list[str]:
    """Names in the PUBSUBPULL setting that pubsubpull does not know."""
    given = configured()
    if not isinstance(given, dict):
        return []  # pubsubpull.E003 says so
    return sorted(set(given) - set(DEFAULTS))
