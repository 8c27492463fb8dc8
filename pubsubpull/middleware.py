"""The stable dotted path of the request middleware, as settings name it.

``MIDDLEWARE = ["pubsubpull.middleware.RequestMiddleware", ...]`` is what the
README gives users; the middleware lives with the rest of the capture side, in
``pubsubpull.capture.middleware``.
"""

from pubsubpull.capture.middleware import RequestMiddleware, flush

__all__ = ["RequestMiddleware", "flush"]
