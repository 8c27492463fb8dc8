"""django-pubsubpull: publish, subscribe to and pull data changes between Django services.

The public API is what this module exports; everything else may change.
"""

from pubsubpull.capture.context import context
from pubsubpull.capture.registry import (
    Registration,
    get_registration,
    register,
    registrations,
    unregister,
)
from pubsubpull.version import __version__

# The subscribing side. Imported lazily: these need Django's app registry,
# and ``import pubsubpull`` happens in models.py files before it is ready.
_CLIENT = {
    "Event": "pubsubpull.protocol.events",
    "Mirror": "pubsubpull.client.mirror",
    "mirror": "pubsubpull.client.mirror",
    "pull": "pubsubpull.client.pulling",
    "pull_down": "pubsubpull.client.pulling",
    "pull_up": "pubsubpull.client.pulling",
    "Receiver": "pubsubpull.client.receiver",
    "receiver": "pubsubpull.client.receiver",
    "subscribe": "pubsubpull.client.receiver",
    "unsubscribe": "pubsubpull.client.receiver",
    # The publishing side's read-your-writes position (reads the change log).
    "position": "pubsubpull.publisher.positions",
}


def __getattr__(name: str):
    module = _CLIENT.get(name)
    if module is None:
        raise AttributeError(f"module 'pubsubpull' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "Event",
    "Mirror",
    "Receiver",
    "Registration",
    "__version__",
    "context",
    "get_registration",
    "mirror",
    "position",
    "pull",
    "pull_down",
    "pull_up",
    "receiver",
    "register",
    "registrations",
    "subscribe",
    "unregister",
    "unsubscribe",
]
