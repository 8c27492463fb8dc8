"""django-pubsubpull: publish, subscribe to and pull data changes between Django services.

The public API is what this module exports; everything else may change.
"""

from .context import context
from .registry import Registration, get_registration, register, registrations, unregister

__version__ = "0.1.0.dev0"

__all__ = [
    "Registration",
    "__version__",
    "context",
    "get_registration",
    "register",
    "registrations",
    "unregister",
]
