from django.apps import AppConfig


class PubSubPullConfig(AppConfig):
    name = "pubsubpull"
    verbose_name = "Publish, subscribe, pull"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
