"""The subscriber side: pull another service, receive its notifications, mirror its data.

It imports nothing of the publisher side (``pubsubpull.capture``,
``pubsubpull.publisher``): what crosses the wire is ``pubsubpull.protocol``'s,
and its background work runs on ``pubsubpull.jobs``, as delivery does.

- ``pulling.py``: a pull (snapshot, then the feed) as a kind of job, and the
  operator's actions on its cursor (resume, park, pause);
- ``receiver.py``: the callback view for pushed notifications, and
  ``subscribe()``/``unsubscribe()`` at a publisher;
- ``mirror.py``: a local copy of some remote fields, by pull or by push;
- ``waiting.py``: read your writes, waiting until a publisher's position is
  applied here (``Mirror.wait_for``, ``pulling.wait_for``, ``receiver.wait_for``);
- ``handlers.py``: your code, found by its dotted path and given events;
- ``parking.py``: applying a page event by event, setting aside what fails;
- ``source.py``: HTTP to the publisher (errors, Retry-After, parsing);
- ``models.py``, ``admin.py``: cursors, remote subscriptions, parked events.

Everything public is re-exported by ``pubsubpull``; see docs/pull-and-receive.rst.
"""
