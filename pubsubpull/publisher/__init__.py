"""The publisher's serving side: what other services read and receive.

- ``feed.py``: the only module that reads the change log by position (pages,
  backlogs, pruning, the NOTIFY channel);
- ``snapshot.py``: pages of a model's instances;
- ``listener.py`` and ``longpoll.py``: one LISTEN connection per process that
  wakes every waiting long poll, and the waits themselves;
- ``retention.py``: pruning the change log;
- ``models.py``: the pruning horizon and service tokens;
- ``api/``: the HTTP API (views, auth, OpenAPI, health and metrics);
- ``delivery/``: signed notifications PUT to subscribers, a kind of job of
  ``pubsubpull.jobs``.

The subscriber side (``pubsubpull.client``) imports none of it.
"""
