from django.apps import AppConfig


class PubSubPullConfig(AppConfig):
    name = "pubsubpull"
    verbose_name = "Publish, subscribe, pull"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db import connections
        from django.db.backends.signals import connection_created

        from . import checks  # noqa: F401  (registers the system checks)
        from .context import install

        # Every connection, of every alias and thread, sends the active
        # request or job with its data-changing statements.
        connection_created.connect(install, dispatch_uid="pubsubpull.context")
        for connection in connections.all(initialized_only=True):
            install(connection)
