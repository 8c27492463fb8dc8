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


@pubsubpull.register
class PublishedV4(Row):
    """Every change recorded by capture version 4 (``pubsubpull.capture.statement_log``).

    Registered so its log table is the one a registration gives, but no
    migration installs its triggers: nothing installs version 4 yet, so
    write_overhead.py creates its log table and triggers after migrate.
    """


# Candidate capture designs (issue 13), measured side by side with the shipped
# one: plain tables here, their trigger functions and change tables created by
# write_overhead.py (benchmarks/designs.py) after migrate.


class DesignTyped(Row):
    """Design "typed": old and new as typed composite images in a per-model change table."""


class DesignTypedNew(Row):
    """Design "typed, new only": the new image only (a bound: no no-op skip, no old values)."""


class DesignFlat(Row):
    """Design "typed flat": old and new as typed columns of a per-model change table."""


class DesignStatementTyped(Row):
    """Design "statement typed": one change-log row per statement, typed image arrays."""


class DesignStatement(Row):
    """Design "per statement": one change-log row per statement, the rows as one json array."""


class DesignJson(Row):
    """Design "json": the shared log with json (not jsonb) images and a bigint key."""
