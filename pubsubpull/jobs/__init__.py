"""One job engine for every background job: delivering subscriptions and running pulls.

Delivery (``pubsubpull.publisher.delivery.deliver``) and pulling
(``pubsubpull.client.pulling``) are two kinds of job registered with it. Each
kind is a row with a lease (a subscription, a pull cursor) and a function
that works on that row while it holds the lease. The engine owns what they
share, once:

- ``lease.py``: a :class:`LeaseSpec` per kind, from which the claim, renew,
  release, wake and sweep statements are made (and what a spent wake is);
- ``backoff.py``: the retry schedule; ``identity.py``: the worker's name
  and lease owner tokens; ``outcome.py``: how a run ended;
- ``engine.py``: :class:`Kind`, the registry, the loop that runs a row
  (claim, work, let go, again if woken, re-enqueue when the budget ran out),
  and the one Tasks job (``run_job(kind, id)``) with its enqueue;
- ``tasks.py``: Django's Tasks framework (or its backport) and the backend;
- ``models.py``: the running workers' heartbeats;
- ``worker.py``: ``manage.py pubsubpull_worker``'s process, which listens,
  sweeps and runs the jobs of every kind.

A kind is registered when the app is ready (``apps.py``)::

    DELIVERY = jobs.register(jobs.Kind("deliver", spec, work, budget=lambda: 10.0))
    DELIVERY.wake([subscription_id])       # enqueue a job unless one is pending
    jobs.run(DELIVERY, subscription_id)    # what the job does: an Outcome
"""

from __future__ import annotations

from pubsubpull.jobs.backoff import backoff
from pubsubpull.jobs.engine import Ending, Kind, Lease, Listen, get, kinds, register, run
from pubsubpull.jobs.identity import WORKER_NAME, new_owner
from pubsubpull.jobs.lease import LeaseSpec
from pubsubpull.jobs.outcome import Outcome

__all__ = [
    "WORKER_NAME",
    "Ending",
    "Kind",
    "Lease",
    "LeaseSpec",
    "Listen",
    "Outcome",
    "backoff",
    "get",
    "kinds",
    "new_owner",
    "register",
    "run",
]
