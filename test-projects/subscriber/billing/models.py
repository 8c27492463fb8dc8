"""The billing service keeps its own copy of some customer attributes, and greets new users."""

import uuid

from django.db import models


class CustomerCountry(models.Model):
    """Billing's copy of each customer's name and country, kept by a mirror (billing.mirrors)."""

    remote_id = models.BigIntegerField(unique=True, help_text="The customer's id at customers.")
    remote_sequence = models.BigIntegerField(default=0)
    name = models.CharField(max_length=200)
    country = models.CharField(max_length=2, null=True, blank=True)

    def __str__(self):
        return f"{self.name} ({self.country or '-'})"


class Welcome(models.Model):
    """A welcome e-mail "sent" to a new user: the comms-style reaction to an event."""

    user_id = models.BigIntegerField()
    username = models.CharField(max_length=150)
    sequence = models.BigIntegerField(help_text="The change that created the user.")
    via = models.CharField(max_length=10, help_text="pull or push")
    at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"welcome {self.username}"


class CustomerCard(models.Model):
    """Billing's card per customer: mirrored name and country, and fields of billing's own.

    The fields the mirror does not map get their defaults on insert: a fresh
    ``card`` number per row (a callable), a ``tier``, timestamps, and the
    database's own default for ``score``.
    """

    remote_id = models.BigIntegerField(unique=True)
    remote_sequence = models.BigIntegerField(default=0)
    name = models.CharField(max_length=20, help_text="Billing prints at most 20 characters.")
    country = models.CharField(max_length=2, null=True, blank=True)
    card = models.UUIDField(default=uuid.uuid4, unique=True)
    tier = models.CharField(max_length=20, default="standard")
    limits = models.JSONField(default=dict)
    score = models.IntegerField(db_default=7)
    issued = models.DateTimeField(auto_now_add=True)
    touched = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"{self.name} ({self.card})"
