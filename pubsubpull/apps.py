from django.apps import AppConfig
from django.db.models.signals import post_migrate


class PubSubPullConfig(AppConfig):
    name = "pubsubpull"
    verbose_name = "Publish, subscribe, pull"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks

        # After `migrate`, say at once if a published table lacks its trigger
        # (registered but never migrated, or dropped by hand).
        post_migrate.connect(checks.warn_after_migrate, sender=self)
