"""Subscriptions and their delivery attempts.

All the state that matters for delivery lives here, not in the job queue: a
job only says "look at subscription N", so a lost job costs a sweep interval
and a duplicated one a redundant wake, never a lost or reordered change.
"""

from __future__ import annotations

from django.db import models

from pubsubpull import conf


class Subscription(models.Model):
    """Another service's wish to be told about changes to some models.

    ``position`` is the feed position (txid, change id) of the last change the
    receiver acknowledged with a 2xx; delivery resumes after it. A batch that
    was sent but not acknowledged is remembered (``pending_*``) so that its
    retries carry exactly the same changes under the same ``webhook-id``.
    """

    class State(models.TextChoices):
        ACTIVE = "active"
        FAILING = "failing", "failing (retrying with backoff)"
        DISABLED = "disabled"
        PAUSED = "paused"
        # The receiver refuses the batch it is sent (a 413, or the same 4xx
        # again): retried with backoff, never disabled by the streak; the
        # operator fixes the receiver or parks the change (ParkedChange).
        BLOCKED = "blocked", "blocked (the receiver refuses a change)"
        # Its owner (token or user) is gone, inactive, or may no longer read
        # one of its models: nothing is sent until access returns.
        FORBIDDEN = "forbidden", "forbidden (its owner lost access)"

    owner = models.CharField(
        max_length=200,
        help_text="Who created it (e.g. token:3 or user:7); only they see or change it.",
    )
    name = models.CharField(max_length=100)
    callback = models.CharField(max_length=2000, help_text="Checked by the SSRF guard.")
    # A JSON list, not an ArrayField: that would make every project add
    # django.contrib.postgres to INSTALLED_APPS on Django 6.1.
    model_labels = models.JSONField(default=list, help_text="The models it follows (labels).")
    filters = models.JSONField(
        default=dict,
        blank=True,
        help_text="Per model label: where / changed / fields (pubsubpull.protocol.filters), "
        "in their canonical form; empty: every change, every field.",
    )
    batch_size = models.PositiveIntegerField(default=conf.DEFAULTS["BATCH_SIZE"])
    whole_transactions = models.BooleanField(
        default=False,
        help_text="Never split a transaction's changes across batches: a batch holds whole "
        "transactions, and one larger than batch_size goes alone.",
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    state_reason = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    position_txid = models.BigIntegerField(default=0)
    position_id = models.BigIntegerField(default=0)
    delivered = models.BigIntegerField(default=0, help_text="Changes acknowledged so far.")

    pending_batch = models.CharField(
        max_length=64, blank=True, help_text="webhook-id of the batch sent but not acknowledged."
    )
    pending_txid = models.BigIntegerField(null=True, blank=True)
    pending_id = models.BigIntegerField(null=True, blank=True)
    pending_count = models.PositiveIntegerField(default=0)

    next_attempt_at = models.DateTimeField(auto_now_add=True)
    failures = models.PositiveIntegerField(default=0, help_text="Failed attempts in a row.")
    failing_since = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    # Which worker holds the subscription, until when. A killed worker's lease
    # runs out in seconds and another worker redelivers its batch.
    lease_owner = models.CharField(max_length=100, blank=True)
    lease_expires = models.DateTimeField(null=True, blank=True)
    wake_requested_at = models.DateTimeField(null=True, blank=True)

    # How notifications look: pubsubpull's own body, or a CloudEvents batch
    # (pubsubpull.protocol.cloudevents).
    framing = models.CharField(
        max_length=16,
        choices=[("pubsubpull", "pubsubpull"), ("cloudevents", "CloudEvents batch")],
        default="pubsubpull",
    )
    # Standard Webhooks v1 (HMAC, a whsec_ secret) or v1a (ed25519, a whsk_
    # secret key; receivers verify with its whpk_ public key).
    signature = models.CharField(
        max_length=8,
        choices=[("v1", "v1 (HMAC-SHA256)"), ("v1a", "v1a (ed25519)")],
        default="v1",
    )
    # Standard Webhooks signs with the raw secret (or secret key), so it is
    # stored as is; the previous one keeps signing during its grace period.
    secret = models.CharField(max_length=100)
    previous_secret = models.CharField(max_length=100, blank=True)
    previous_secret_expires = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["owner", "name"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="pubsubpull_subscription_name")
        ]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"], name="pubsubpull_subscription_due")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.owner})"


class Attempt(models.Model):
    """One PUT of a batch to a subscription's callback, whatever came of it."""

    subscription = models.ForeignKey(
        Subscription, on_delete=models.CASCADE, related_name="attempts"
    )
    at = models.DateTimeField()
    webhook_id = models.CharField(max_length=64)
    changes = models.PositiveIntegerField()
    first_change_id = models.BigIntegerField(null=True)
    last_change_id = models.BigIntegerField(null=True)
    status = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="HTTP status; empty when no response came."
    )
    duration = models.DurationField()
    error = models.TextField(blank=True)
    response = models.TextField(blank=True, help_text="The start of the response body.")
    worker = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["-at"]
        indexes = [models.Index(fields=["subscription", "-at"], name="pubsubpull_attempt_recent")]

    def __str__(self) -> str:
        return f"{self.webhook_id} → {self.status or self.error[:40]}"


class ParkedChange(models.Model):
    """A change an operator set aside so that delivery goes on behind it (a dead letter).

    Kept with the change as it was sent and the attempts that failed, so it
    can be looked at and sent again (``resend``) once the receiver can take
    it; the change log may be pruned meanwhile.
    """

    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="parked")
    change_id = models.BigIntegerField()
    txid = models.BigIntegerField()
    model = models.CharField(max_length=200)
    object_pk = models.TextField(blank=True)
    change = models.JSONField(help_text="The change as the feed serves it (what was sent).")
    attempts = models.JSONField(
        default=list, help_text="The failed attempts of its batch: at, status, error, webhook_id."
    )
    reason = models.TextField(blank=True, help_text="Why it was parked: the last error.")
    parked_at = models.DateTimeField(auto_now_add=True)
    parked_by = models.CharField(max_length=200, blank=True)
    resent_at = models.DateTimeField(null=True, blank=True)
    resent_status = models.PositiveSmallIntegerField(null=True, blank=True)
    resent_error = models.TextField(blank=True)

    class Meta:
        ordering = ["subscription", "txid", "change_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "change_id"], name="pubsubpull_parkedchange_once"
            )
        ]

    def __str__(self) -> str:
        return f"change {self.change_id} of {self.subscription.name}"

    @property
    def resent(self) -> bool:
        """Whether a re-send was acknowledged with a 2xx."""
        return self.resent_status is not None and 200 <= self.resent_status < 300
