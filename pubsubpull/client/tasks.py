"""The pull job, on Django's Tasks framework (as delivery jobs are).

The job carries only a cursor id; where to resume is read from the cursor row
when it runs, so a lost job costs a sweep and a duplicated one finds the
cursor busy.
"""

from __future__ import annotations

from pubsubpull import conf
from pubsubpull.publisher.delivery.tasks import task


@task()
def pull_job(cursor_id: int) -> str:
    """Run one pull cursor for up to PULL_BUDGET seconds; it re-enqueues itself to go on."""
    from pubsubpull.client.pulling import run

    return run(cursor_id)


def enqueue(cursor_id: int) -> None:
    pull_job.using(backend=conf.get("TASK_BACKEND"), queue_name=conf.get("TASK_QUEUE")).enqueue(
        cursor_id
    )
