"""The subscribing side: pull another service, receive its notifications, mirror its data.

Everything public is re-exported by ``pubsubpull``; see docs/pull-and-receive.rst.
"""
