"""Receive pushed notifications: the view a subscription's callback URL names.

::

    # urls.py of the subscribing service
    import pubsubpull
    from billing.handlers import welcome

    urlpatterns = [path("hooks/users/", pubsubpull.receiver(welcome))]

    # once, to subscribe (stores the secret the receiver verifies with)
    pubsubpull.subscribe(
        "http://customers.internal/pubsubpull/", "welcome",
        "http://billing.internal/hooks/users/", models=["auth.user"], auth=TOKEN,
    )

The receiver accepts only PUT, in either framing: pubsubpull's own body or a
CloudEvents batch (``application/cloudevents-batch+json``, or one structured
event). It verifies the Standard Webhooks signature with what the
subscription stored: its ``whsec_`` secret (``v1``), or for a ``v1a``
subscription its ``whpk_`` public key, and then only ``v1a`` signatures
count (401 with the reason, handler not called), answers 204 to a batch it
has handled before (same ``webhook-id``) without calling the handler, drops
changes at or before the last cursor it handled, calls the handler for each
change in order, and answers 204 only after the handler's transaction
committed; any error rolls it back and answers 500, so the publisher sends
the same batch again.
"""

from __future__ import annotations

import base64
import binascii
import logging
import random
import time
from datetime import timedelta
from typing import Any

from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from pubsubpull import conf, keys, tracing
from pubsubpull.client.handlers import CANNOT_APPLY, Handler, call_handler, resolve_handler
from pubsubpull.client.models import ReceivedBatch, RemoteSubscription
from pubsubpull.client.source import Publisher, SourceError, request, split_source
from pubsubpull.client.waiting import DEFAULT_TIMEOUT, latest, wait_until_applied
from pubsubpull.exceptions import MissingDependency
from pubsubpull.protocol import cloudevents, jsonbody, notification
from pubsubpull.protocol import cursor as cursors
from pubsubpull.protocol import filters as filtering
from pubsubpull.protocol.cursor import Position
from pubsubpull.protocol.events import Event

logger = logging.getLogger("pubsubpull.client")

# Envelope, change and row: a column's JSON may nest this deep, less a few
# levels. Well below Python's recursion limit (about 1,000, less the stack of a
# request), so deeper bodies are a 400 and never a RecursionError.
MAX_DEPTH = 512


def _error(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"status": status, "error": code, "detail": detail}, status=status)


_RECORD_BATCH_SQL = """
INSERT INTO pubsubpull_receivedbatch (webhook_id, subscription_id, changes, at)
VALUES (%s, %s, %s, now())
ON CONFLICT (webhook_id) DO NOTHING
RETURNING id
"""


class Receiver(View):
    """The callback view. Subclass it, or use :func:`pubsubpull.receiver`.

    ``handler`` takes one :class:`~pubsubpull.protocol.events.Event` (or is an
    object with ``handle_events(events)``; or a dotted path to either).
    ``subscription`` names the subscription whose secret verifies; by
    default the name the notification carries.
    """

    handler: Handler | str | None = None
    subscription: str | None = None
    http_method_names = ["put"]

    @classmethod
    def as_view(cls, **initkwargs: Any):
        view = super().as_view(**initkwargs)
        # 204 must mean committed: never inside an ATOMIC_REQUESTS transaction.
        return csrf_exempt(transaction.non_atomic_requests(view))

    def http_method_not_allowed(self, request, *args, **kwargs):
        response = _error(
            405, "method_not_allowed", f"{request.method} is not allowed here; use PUT."
        )
        response.headers["Allow"] = "PUT"
        return response

    def get_handler(self) -> Handler:
        handler = self.handler
        if isinstance(handler, str):
            handler = resolve_handler(handler)
        if handler is None:
            raise TypeError("Receiver needs a handler")
        return handler

    def handle(self, subscription: RemoteSubscription, events: list[Event]) -> None:
        """Called in the batch's transaction with the new events (override to batch)."""
        call_handler(self.get_handler(), events)

    def put(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        # Up to RECEIVER_MAX_BYTES, read from the stream: request.body would
        # answer 400 past Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB) first,
        # and the publisher would send the same batch until it gave up.
        limit = conf.receiver_max_bytes()
        length = request.headers.get("Content-Length") or "0"
        if not length.isdigit() or int(length) > limit:
            return _error(413, "body_too_large", f"The body must be at most {limit} bytes.")
        body = request.read(limit + 1)
        if len(body) > limit:
            return _error(413, "body_too_large", f"The body must be at most {limit} bytes.")
        try:
            envelope = jsonbody.loads(body, max_depth=MAX_DEPTH)
        except jsonbody.InvalidJSON as e:
            return _error(400, "invalid_body", f"The body is not a pubsubpull notification: {e}.")
        framed = cloudevents if cloudevents.is_cloudevents(envelope) else notification
        name = self.subscription
        if name is None:
            name = framed.subscription_of(envelope)
            if name is None:
                return _error(400, "invalid_body", "The body is not a pubsubpull notification.")
        # Two publishers, or two of our tokens at one publisher, may each have a
        # subscription of this name: the one whose secret signs is the one.
        candidates = list(RemoteSubscription.objects.filter(name=name).order_by("-id"))
        if not candidates:
            return _error(
                401,
                "unknown_subscription",
                f"This service has no subscription named {name!r}: subscribe with "
                "pubsubpull.subscribe(), which stores the secret to verify with.",
            )
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified, reason = None, ""
        for candidate in candidates:
            try:
                verify(candidate, body, headers)
                verified = candidate
                break
            except MissingDependency as e:
                logger.error("Receiver: cannot verify a notification for %s: %s", name, e)
                return _error(500, "cannot_verify", str(e))
            # verify() raises ValueError (not WebhookVerificationError) on a
            # malformed signature header, and binascii.Error on bad base64.
            except (WebhookVerificationError, ValueError) as e:
                reason = str(e) or type(e).__name__
        if verified is None:
            logger.warning(
                "Receiver: refused a notification for %s: %s",
                name,
                reason,
                extra={"pubsubpull": {"event": "notification_refused", "subscription": name}},
            )
            return _error(401, "invalid_signature", f"The signature does not verify: {reason}.")
        received: notification.Notification | cloudevents.Batch
        try:
            if framed is cloudevents:
                received = cloudevents.read_batch(envelope)
            else:
                received = notification.read(envelope)
        except notification.InvalidNotification as e:
            return _error(400, "invalid_body", str(e))

        try:
            # A parked change sent again is older than the position: handle it anyway.
            # With OpenTelemetry, inside a span continuing the notification's trace.
            with tracing.receive_span(
                verified.name,
                headers.get("traceparent"),
                headers.get("tracestate"),
                len(received.changes),
            ):
                self._handle(
                    verified,
                    headers["webhook-id"],
                    received.changes,
                    received.cursor,
                    parked=received.parked,
                )
            if random.random() < 0.01:
                prune_received()
        except CANNOT_APPLY as e:
            # The database refuses the batch as it is (a constraint, a value the
            # column cannot hold): sending it again cannot help. A 4xx says so,
            # and the publisher narrows the batch to the change and blocks on it
            # until the operator parks it or the cause is fixed.
            logger.exception("Receiver: %s can never apply", headers["webhook-id"])
            return _error(
                422,
                "cannot_apply",
                f"The handler's database refused the batch ({type(e).__name__}: "
                f"{str(e).strip()[:300]}); nothing was kept.",
            )
        except Exception:
            logger.exception("Receiver: the handler failed on %s", headers["webhook-id"])
            return _error(
                500, "handler_failed", "The handler failed; nothing was kept. Send it again."
            )
        return HttpResponse(status=204)

    def _handle(
        self,
        subscription: RemoteSubscription,
        webhook_id: str,
        changes: list,
        cursor: str | None,
        parked: bool = False,
    ) -> None:
        with transaction.atomic():
            locked = RemoteSubscription.objects.select_for_update().get(pk=subscription.pk)
            with connection.cursor() as db:
                db.execute(_RECORD_BATCH_SQL, [webhook_id, locked.pk, len(changes)])
                if not db.fetchall():
                    return  # handled before: a redelivery
            done = cursors.parse(locked.position)
            events = []
            for change in changes:
                if not parked and not cursors.is_new(change.get("cursor"), done):
                    continue  # already handled (by an earlier batch or a catch-up pull)
                events.append(Event.from_change(change))
            if events:
                self.handle(locked, events)
            if cursor is not None and cursors.advances(cursor, done):
                locked.position = cursor
            locked.received += len(events)
            locked.last_received_at = timezone.now()
            locked.save(update_fields=["position", "received", "last_received_at"])


#: How far a notification's webhook-timestamp may be from now (as standardwebhooks).
TOLERANCE = 5 * 60


def verify(subscription: RemoteSubscription, body: bytes, headers: dict[str, str]) -> None:
    """Check a notification's signature as ``subscription`` stored how to.

    A ``v1a`` subscription (it stored a public key) accepts only ``v1a``
    signatures: a ``v1`` one proves nothing about who sent it, since the
    secret of a symmetric scheme could have leaked from any receiver.
    Raises ``WebhookVerificationError`` (or ``ValueError``) saying why not.
    """
    if subscription.public_key:
        verify_v1a(subscription.public_key, body, headers)
    else:
        Webhook(subscription.secret).verify(body, headers)


def verify_v1a(public_key: str, body: bytes, headers: dict[str, str]) -> None:
    """Verify a Standard Webhooks ``v1a`` (ed25519) signature with a ``whpk_`` key."""
    from cryptography.exceptions import InvalidSignature

    key = keys.public_key(public_key)
    webhook_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    header = headers.get("webhook-signature", "")
    if not webhook_id or not stamp or not header:
        raise WebhookVerificationError("Missing required headers")
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise WebhookVerificationError("Invalid Signature Headers")
    if abs(time.time() - int(stamp)) > TOLERANCE:
        raise WebhookVerificationError("Message timestamp too old or too new")
    content = f"{webhook_id}.{stamp}.".encode() + body
    found = False
    for part in header.split(" "):
        version, _, value = part.partition(",")
        if version != "v1a":
            continue
        found = True
        try:
            key.verify(base64.b64decode(value, validate=True), content)
            return
        except (InvalidSignature, binascii.Error, ValueError):
            continue
    raise WebhookVerificationError(
        "No matching signature found" if found else "No v1a signature (this subscription is v1a)"
    )


def prune_received() -> int:
    """Forget webhook-ids older than RECEIVED_RETENTION (a redelivery that old is
    still dropped by its position); the receiver calls it now and then."""
    cutoff = timezone.now() - timedelta(seconds=conf.received_retention())
    deleted, _ = ReceivedBatch.objects.filter(at__lt=cutoff).delete()
    return deleted


def receiver(handler: Handler | str, *, subscription: str | None = None):
    """A view for a subscription's callback URL that calls ``handler`` per change.

    ``handler`` takes one :class:`~pubsubpull.protocol.events.Event`; it runs
    in the batch's transaction, so its database writes commit with the
    batch being marked handled. Example::

        def welcome(event):
            if event.op == "insert":
                Welcome.objects.create(user_id=event.pk, email=event.data["email"])

        urlpatterns = [path("hooks/users/", pubsubpull.receiver(welcome))]
    """
    return Receiver.as_view(handler=handler, subscription=subscription)


def subscribe(
    publisher_url: str,
    name: str,
    callback_url: str,
    *,
    models: list[str],
    auth: str | None = None,
    start: str = "now",
    batch_size: int | None = None,
    whole_transactions: bool | None = None,
    format: str | None = None,
    signature: str | None = None,
    where: dict[str, Any] | None = None,
    changed: list[str] | None = None,
    fields: list[str] | None = None,
    filters: dict[str, Any] | None = None,
) -> RemoteSubscription:
    """Subscribe at a publisher and keep the secret the receiver verifies with.

    ``start`` (``"now"``, ``"beginning"`` or a feed cursor) applies when the
    subscription is created; subscribing again updates the callback and
    models and keeps the position. ``where``, ``changed`` and ``fields``
    filter a subscription to one model, ``filters`` (label -> ``{"where":
    ..., "changed": ..., "fields": ...}``) one to several (docs/filters.rst);
    subscribing again with other filters replaces them. Raises
    ``SourceError`` with the publisher's explanation when it refuses.
    ``whole_transactions=True`` asks for batches that never split a
    publisher's transaction (the receiver applies each batch in one
    transaction). ``format="cloudevents"`` has notifications sent as
    CloudEvents batches; ``signature="v1a"`` has them signed with ed25519
    (the publisher keeps the secret key, we keep its ``whpk_`` public key).
    Left out, each keeps what the subscription has (at first: whole
    transactions off, pubsubpull's body, ``v1``).
    """
    if signature == "v1a":
        keys.ed25519()  # the receiver could not verify: say so now
    service_url, _ = split_source(publisher_url)
    url = Publisher(service_url, auth or "").subscription_url(name)
    # The publisher keeps one subscription per owner and name: so do we.
    owner = RemoteSubscription.owner_for(auth)
    known = RemoteSubscription.objects.filter(publisher=service_url, owner=owner, name=name).first()
    body: dict[str, Any] = {"callback": callback_url, "models": list(models)}
    chosen = filtering.build(models, where=where, changed=changed, fields=fields, filters=filters)
    if chosen or (known is not None and known.filters):
        body["filters"] = chosen  # (left out otherwise: a publisher without filters)
    if batch_size is not None:
        body["batch_size"] = batch_size
    if whole_transactions is not None:
        body["whole_transactions"] = whole_transactions
    if format is not None:
        body["format"] = format
    if signature is not None:
        body["signature"] = signature
    if known is None:
        body["start"] = start
    answer = request("PUT", url, token=auth or "", json=body).json()
    secret = answer.get("secret")
    v1a = answer.get("signature") == "v1a"
    if secret is None and (known is None or not known.secret) and not v1a:
        # It exists at the publisher but we lost its secret: get a new one.
        answer = request("PUT", url, token=auth or "", json={**body, "rotate_secret": True}).json()
        secret = answer["secret"]
    values = {
        "callback": callback_url,
        "model_labels": answer.get("models", list(models)),
        "filters": answer.get("filters", chosen),
        "token": auth or "",
    }
    if v1a:
        # Only the public key: the publisher alone can sign.
        values["public_key"], values["secret"] = answer["public_key"], ""
    else:
        values["public_key"] = ""
    if secret is not None:
        values["secret"] = secret
    if known is None and start not in ("now", "beginning"):
        values["position"] = start
    record, _ = RemoteSubscription.objects.update_or_create(
        publisher=service_url, owner=owner, name=name, defaults=values
    )
    return record


def unsubscribe(publisher_url: str, name: str, *, auth: str | None = None) -> None:
    """Delete the subscription at the publisher (if it still exists) and its secret here."""
    service_url, _ = split_source(publisher_url)
    url = Publisher(service_url, auth or "").subscription_url(name)
    try:
        request("DELETE", url, token=auth or "")
    except SourceError as e:
        if e.status != 404:
            raise
    RemoteSubscription.objects.filter(
        publisher=service_url, owner=RemoteSubscription.owner_for(auth), name=name
    ).delete()


def applied_position(
    subscription: RemoteSubscription | str, publisher: str | None = None
) -> Position | None:
    """The feed position a subscription's receiver has applied changes up to (None: none yet).

    ``subscription`` is a :class:`RemoteSubscription` or its name (with
    ``publisher``, the service URL, when two publishers have one of that
    name). The receiver stores each notification's cursor in the transaction
    of the handler's writes, so every change at or before it was handled.
    """
    rows = RemoteSubscription.objects.all()
    if isinstance(subscription, RemoteSubscription):
        rows = rows.filter(pk=subscription.pk)
    else:
        rows = rows.filter(name=subscription)
        if publisher is not None:
            rows = rows.filter(publisher=split_source(publisher)[0])
    positions = [cursors.parse(p) for p in rows.values_list("position", flat=True)]
    return latest(*positions)


def wait_for(
    subscription: RemoteSubscription | str,
    position: Position | str | None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    publisher: str | None = None,
    database: str | None = None,
) -> Position | None:
    """Return once the receiver of ``subscription`` has applied ``position``.

    ``position`` is a publisher's ``Pubsubpull-Position`` header value (or a
    cursor); None returns at once. Raises :class:`~pubsubpull.exceptions.WaitTimeout`
    after ``timeout`` seconds. The receiver learns positions from the
    notifications it handles: when the request's last changes were to models
    the subscription does not carry, the next notification (or
    ``Mirror.catch_up``) moves it past them (docs/read-your-writes.rst).
    """
    name = subscription.name if isinstance(subscription, RemoteSubscription) else subscription
    return wait_until_applied(
        lambda: applied_position(subscription, publisher),
        position,
        timeout=timeout,
        what=f"The receiver of subscription {name!r}",
        database=database,
    )
