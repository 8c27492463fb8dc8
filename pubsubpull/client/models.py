"""What a subscribing service keeps: pull cursors, subscriptions it made, batches it took.

The state that matters lives in these rows, not in the job queue: a pull job
only says "run cursor N", so a lost job costs a sweep and a duplicated one a
redundant wake, never a skipped or repeated page.
"""

from __future__ import annotations

import hashlib

from django.db import models

from pubsubpull import conf


class PullCursor(models.Model):
    """One pull of another service: where it is, how it is doing.

    ``phase`` is ``snapshot`` while the instances are read page by page
    (``snapshot_next`` is the next page's URL, ``snapshot_models`` the models
    still to read), then ``feed`` (``feed_position`` is the last cursor whose
    page was handled and committed), and ``done`` for a ``pull_down`` that
    has walked everything once.

    ``state`` is ``active``, ``failing`` (retried with backoff), ``blocked``
    (a page its handler's database can never apply: not retried until resumed
    or parked, see ``pubsubpull.client.parking``) or ``paused``.
    """

    class Phase(models.TextChoices):
        SNAPSHOT = "snapshot"
        FEED = "feed"
        DONE = "done"

    class State(models.TextChoices):
        ACTIVE = "active"
        FAILING = "failing", "failing (retrying with backoff)"
        BLOCKED = "blocked", "blocked (a page that can never apply: resume or park it)"
        PAUSED = "paused"

    name = models.CharField(max_length=200, unique=True)
    source = models.URLField(
        max_length=2000, help_text="The publisher's service document or one instances URL."
    )
    service_url = models.URLField(max_length=2000, help_text="The publisher's service document.")
    handler = models.CharField(max_length=300, help_text="Dotted path of the handler.")
    model_labels = models.JSONField(
        default=list, blank=True, help_text="The models pulled; empty for all readable ones."
    )
    filters = models.JSONField(
        default=dict,
        blank=True,
        help_text="Per model label: where / changed / fields, sent with every page request.",
    )
    token = models.TextField(
        blank=True, help_text="Bearer token for the publisher (pubsubpull_token create there)."
    )
    page_size = models.PositiveIntegerField(default=conf.DEFAULTS["PULL_PAGE_SIZE"])
    whole_transactions = models.BooleanField(
        default=False,
        help_text="Ask for pages that never split a publisher's transaction "
        "(each page is applied in one database transaction).",
    )
    every = models.FloatField(
        default=0.0,
        help_text="Seconds between looks for new changes once caught up; 0 follows "
        "the feed continuously by long poll.",
    )
    once = models.BooleanField(
        default=False, help_text="pull_down: stop when caught up (phase done)."
    )
    framing = models.CharField(
        max_length=16,
        default="pubsubpull",
        help_text="How feed pages are asked for: pubsubpull's page, or a CloudEvents batch.",
    )

    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    phase = models.CharField(max_length=16, choices=Phase.choices, default=Phase.SNAPSHOT)
    snapshot_models = models.JSONField(default=list, blank=True)
    snapshot_next = models.TextField(blank=True)
    feed_position = models.CharField(max_length=200, blank=True)
    snapshots = models.PositiveIntegerField(
        default=0, help_text="Snapshots started (a 410 from the publisher starts another)."
    )
    rows = models.BigIntegerField(default=0, help_text="Instances and changes handled.")

    created = models.DateTimeField(auto_now_add=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    failures = models.PositiveIntegerField(default=0, help_text="Failed attempts in a row.")
    next_run_at = models.DateTimeField(auto_now_add=True)

    park_failures = models.BooleanField(
        default=False,
        help_text="Set by the park action of a blocked cursor: the next page is applied event "
        "by event, the events that fail are parked (ParkedEvent) and the pull goes on.",
    )

    lease_owner = models.CharField(max_length=100, blank=True)
    lease_expires = models.DateTimeField(null=True, blank=True)
    wake_requested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["state", "next_run_at"], name="pubsubpull_pullcursor_due")]

    def __str__(self) -> str:
        return self.name


class RemoteSubscription(models.Model):
    """A subscription this service made at a publisher, with the secret that signs it.

    ``pubsubpull.subscribe`` writes it; the receiver reads the secret to verify
    notifications and stores the cursor of the last change it handled, in the
    handler's transaction (a pull from there fills any gap).
    """

    publisher = models.URLField(max_length=2000, help_text="The publisher's service document.")
    owner = models.CharField(
        max_length=40,
        blank=True,
        help_text="Who we are at the publisher: a fingerprint of the token that subscribed "
        "(two tokens may each have a subscription of the same name there).",
    )
    name = models.CharField(max_length=100)
    callback = models.URLField(max_length=2000)
    model_labels = models.JSONField(default=list)
    filters = models.JSONField(
        default=dict, blank=True, help_text="The filters it was made with (per model label)."
    )
    secret = models.CharField(max_length=100, blank=True)
    public_key = models.CharField(
        max_length=100,
        blank=True,
        help_text="For a v1a subscription: the whpk_ key its notifications verify with "
        "(and then only v1a signatures are accepted).",
    )
    token = models.TextField(blank=True)
    position = models.CharField(
        max_length=200, blank=True, help_text="Feed cursor of the last change handled."
    )
    received = models.BigIntegerField(default=0, help_text="Changes handled.")
    created = models.DateTimeField(auto_now_add=True)
    last_received_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["publisher", "owner", "name"], name="pubsubpull_remotesubscription_owner"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} at {self.publisher}"

    @staticmethod
    def owner_for(token: str | None) -> str:
        """The ``owner`` of subscriptions made with ``token``: a fingerprint, not the token."""
        if not token:
            return ""
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]


class ReceivedBatch(models.Model):
    """A notification batch the receiver handled (committed), by its ``webhook-id``."""

    webhook_id = models.CharField(max_length=100, unique=True)
    subscription = models.ForeignKey(
        RemoteSubscription, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    changes = models.PositiveIntegerField(default=0)
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return self.webhook_id


class MirrorTombstone(models.Model):
    """A deleted remote object of a mirror, so an older event cannot bring it back.

    Kept MIRROR_TOMBSTONE_RETENTION seconds (see ``pubsubpull.client.mirror``
    for why that is enough), then pruned by the mirror itself.
    """

    mirror = models.CharField(max_length=200)
    object_pk = models.TextField()
    sequence = models.BigIntegerField()
    at = models.DateTimeField(auto_now=True, help_text="When the delete was last applied.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["mirror", "object_pk"], name="pubsubpull_tombstone_pk")
        ]
        indexes = [models.Index(fields=["mirror", "at"], name="pubsubpull_tombstone_at")]

    def __str__(self) -> str:
        return f"{self.mirror} {self.object_pk} deleted at {self.sequence}"


class MirrorSeen(models.Model):
    """A key a mirror's snapshot in progress has written: at its end, the rows of
    the local model without one are gone at the publisher, and are deleted.

    The row with no ``object_pk`` says that this snapshot marks at all: one
    that began with the local table empty has nothing to sweep, so its pages
    write no marks (a first copy costs nothing more).
    """

    mirror = models.CharField(max_length=200)
    object_pk = models.TextField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["mirror", "object_pk"], name="pubsubpull_mirrorseen_pk")
        ]

    def __str__(self) -> str:
        return f"{self.mirror} {self.object_pk}"


class ParkedEvent(models.Model):
    """An event a pull's handler could not apply, set aside so the pull goes on.

    A cursor that meets a page that can never apply (an IntegrityError, say)
    is ``blocked``; the operator's park action applies that page event by
    event, keeps here each event that fails (with its error), and moves on.
    Re-apply them (admin action, or :func:`pubsubpull.client.parking.reapply`)
    once the cause is fixed.
    """

    cursor = models.ForeignKey(PullCursor, on_delete=models.CASCADE, related_name="parked")
    position = models.CharField(
        max_length=2000, blank=True, help_text="Where the page was: feed cursor or snapshot URL."
    )
    model = models.CharField(max_length=200)
    object_pk = models.TextField(blank=True)
    op = models.CharField(max_length=16)
    event = models.JSONField(help_text="The event as the handler received it.")
    error = models.TextField()
    attempts = models.PositiveIntegerField(default=1)
    created = models.DateTimeField(auto_now_add=True)
    last_attempt_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["cursor", "id"]

    def __str__(self) -> str:
        return f"{self.op} {self.model} {self.object_pk} ({self.cursor})"
