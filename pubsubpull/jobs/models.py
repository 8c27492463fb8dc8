"""The job engine's table: which worker processes are running."""

from __future__ import annotations

from django.db import models


class WorkerHeartbeat(models.Model):
    """A running ``pubsubpull_worker`` process, stamped every few seconds.

    The health endpoint reports workers whose stamp is older than
    HEALTH_WORKER_STALE as stale; a worker that stops cleanly removes its row.
    """

    name = models.CharField(max_length=200, primary_key=True, help_text="host:pid")
    started = models.DateTimeField()
    last_seen = models.DateTimeField()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
