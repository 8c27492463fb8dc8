from django.apps import AppConfig
from django.db.models.signals import post_migrate


class PubSubPullConfig(AppConfig):
    name = "pubsubpull"
    verbose_name = "Publish, subscribe, pull"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db import connections
        from django.db.backends.signals import connection_created

        from pubsubpull import checks
        from pubsubpull.capture.context import install

        # Every connection, of every alias and thread, sends the active
        # request or job with its data-changing statements.
        connection_created.connect(install, dispatch_uid="pubsubpull.context")
        for connection in connections.all(initialized_only=True):
            install(connection)

        # The two kinds of job the worker runs (pubsubpull.jobs): delivering
        # subscriptions and running pulls. Importing them registers them.
        from pubsubpull.client import pulling  # noqa: F401
        from pubsubpull.publisher.delivery import deliver  # noqa: F401

        # After `migrate`, say at once if a published table lacks its trigger
        # (registered but never migrated, or dropped by hand).
        post_migrate.connect(checks.warn_after_migrate, sender=self)
