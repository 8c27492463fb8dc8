"""The publisher's own tables: the change log's pruning horizon and service tokens."""

from __future__ import annotations

from django.db import models


class Horizon(models.Model):
    """How far the change log has been pruned: one row, maintained by the database.

    Deleting change rows (the prune command, or a DELETE in psql) moves it, in
    the deleting transaction, to the newest feed position deleted, by a trigger
    on each log table and on the log itself (``sql/log_v1.sql``). A feed cursor before it
    answers 410 Gone: changes after that cursor may be missing.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    txid = models.BigIntegerField(default=0)
    change_id = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(id=1), name="pubsubpull_horizon_one")
        ]

    def __str__(self) -> str:
        return f"changes up to ({self.txid}, {self.change_id}) pruned"


class ServiceToken(models.Model):
    """A bearer token another service uses to read published models over HTTP.

    Created with ``manage.py pubsubpull_token create NAME --models app.model``;
    only a SHA-256 hash of the token is stored, so it is shown once.
    """

    name = models.CharField(max_length=100, unique=True)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(
        max_length=12, editable=False, help_text="The token's first characters, to recognise it."
    )
    scope = models.JSONField(
        default=list,
        blank=True,
        help_text='Model labels the token may read, e.g. ["customers.customer"]; '
        '["*"] for every published model.',
    )
    is_active = models.BooleanField(default=True)
    created = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def can_read(self, label: str) -> bool:
        return self.is_active and ("*" in self.scope or label in self.scope)
