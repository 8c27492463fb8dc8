"""The publisher's serving side: what other services read and receive.

The change feed and snapshots, retention, the listener that wakes long polls,
the HTTP API (``api/``) and the delivery of notifications to subscribers
(``delivery/``). The subscriber side (``pubsubpull.client``) imports none of it.
"""
