"""The wire protocol: what crosses between a publisher and a subscriber, defined once.

Both sides of the wire import this package, and it imports neither (only the
standard library), so the subscriber side never reaches into the publisher's
code to read what the publisher sends:

- :mod:`~pubsubpull.protocol.cursor`: feed cursors, their codec and their
  ordering (``parse``, ``is_new``, ``advances``);
- :mod:`~pubsubpull.protocol.items`: the change item and the instance item,
  each one ordered definition of keys and their JSON Schemas, from which the
  feed's JSON text, the snapshot's SQL and the OpenAPI schemas are made;
- :mod:`~pubsubpull.protocol.notification`: the body a subscription's
  callback receives, written by delivery and read by the receiver;
- :mod:`~pubsubpull.protocol.events`: items read into the
  :class:`~pubsubpull.protocol.events.Event` a handler receives;
- :mod:`~pubsubpull.protocol.jsonbody`: strict JSON for request bodies on
  both sides; :mod:`~pubsubpull.protocol.retry_after`: the ``Retry-After``
  header both sides obey.
"""
