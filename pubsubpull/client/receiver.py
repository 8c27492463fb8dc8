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

The receiver accepts only PUT. It verifies the Standard Webhooks signature
with the stored secret of the subscription (401 with the reason, handler not
called), answers 204 to a batch it has handled before (same ``webhook-id``)
without calling the handler, drops changes at or before the last cursor it
handled, calls the handler for each change in order, and answers 204 only
after the handler's transaction committed; any error rolls it back and
answers 500, so the publisher sends the same batch again.
"""

from __future__ import annotations

import logging
import random
from datetime import timedelta
from typing import Any

from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from pubsubpull import conf
from pubsubpull.client.handlers import CANNOT_APPLY, Handler, call_handler, resolve_handler
from pubsubpull.client.models import ReceivedBatch, RemoteSubscription
from pubsubpull.client.source import Publisher, SourceError, request, split_source
from pubsubpull.protocol import cursor as cursors
from pubsubpull.protocol import filters as filtering
from pubsubpull.protocol import jsonbody, notification
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
        name = self.subscription
        if name is None:
            name = notification.subscription_of(envelope)
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
                Webhook(candidate.secret).verify(body, headers)
                verified = candidate
                break
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
        try:
            received = notification.read(envelope)
        except notification.InvalidNotification as e:
            return _error(400, "invalid_body", str(e))

        try:
            # A parked change sent again is older than the position: handle it anyway.
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
    """
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
    if known is None:
        body["start"] = start
    answer = request("PUT", url, token=auth or "", json=body).json()
    secret = answer.get("secret")
    if secret is None and known is None:
        # It exists at the publisher but we lost its secret: get a new one.
        answer = request("PUT", url, token=auth or "", json={**body, "rotate_secret": True}).json()
        secret = answer["secret"]
    values = {
        "callback": callback_url,
        "model_labels": answer.get("models", list(models)),
        "filters": answer.get("filters", chosen),
        "token": auth or "",
    }
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
