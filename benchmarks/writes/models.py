"""Identical tables with and without capture, for ``write_overhead.py``.

The shape is a typical service row: a few short strings, a flag, a number and
two timestamps.
"""

from django.db import models

import pubsubpull


class Row(models.Model):
    name = models.CharField(max_length=200)
    email = models.EmailField(blank=True)
    country = models.CharField(max_length=2, blank=True)
    newsletter = models.BooleanField(default=False)
    score = models.IntegerField(default=0)
    created = models.DateTimeField()
    updated = models.DateTimeField()

    class Meta:
        abstract = True

    def __str__(self):
        return self.name


class Plain(Row):
    """The baseline: no trigger."""


@pubsubpull.register
class Published(Row):
    """Every change recorded by pubsubpull, installed by this app's migration."""
