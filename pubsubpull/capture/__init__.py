"""The capture side: what runs in the publisher's own writes.

The registry of published models, the trigger SQL and its versions (``sql/``),
the request context and the middleware that ties changes to web requests. Code
here runs inside the transactions that change published data.
"""
