"""Loyalty points: a published model that lives in a second database ("other")."""

from django.db import models

import pubsubpull


@pubsubpull.register
class Entry(models.Model):
    # A plain id, not a foreign key: customers live in the default database.
    customer_id = models.BigIntegerField()
    points = models.IntegerField()
    reason = models.CharField(max_length=200, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "entries"

    def __str__(self):
        return f"{self.points:+d} points for customer {self.customer_id}"
