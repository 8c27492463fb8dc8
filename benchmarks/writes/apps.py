from django.apps import AppConfig


class WritesConfig(AppConfig):
    name = "benchmarks.writes"
    label = "bench_writes"
    default_auto_field = "django.db.models.BigAutoField"
