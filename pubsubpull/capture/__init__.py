"""The capture side: what runs in the publisher's own writes.

- ``registry.py``: the published models and their options;
- ``triggers.py`` and ``sql/``: the capture trigger, in frozen versions;
  ``autodetector.py``: the migrations that install it;
- ``models.py``: the change log and the requests (read-only to the ORM);
- ``context.py``: the request context a write is tied to;
  ``middleware.py``: that context for web requests, with ``request_info.py``
  (what a request row says) and ``status.py`` (status and duration, written
  after the response).

Code here runs inside the transactions that change published data, and
imports nothing of the serving side.
"""
