"""Settings for the benchmarks: the three identical tables, created by migrations.

``write_overhead.py`` creates its own database (``BENCH_DB_NAME``) on the server
named by ``DATABASE_URL`` and drops it when done. The peer app is only
installed when django-pghistory is (``pip install -e '.[bench]'``).
"""

import importlib.util
import os

from scripts.postgres import django_database

SECRET_KEY = "benchmarks-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

PGHISTORY_INSTALLED = importlib.util.find_spec("pghistory") is not None

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "pubsubpull",
    "benchmarks.writes",
]
if PGHISTORY_INSTALLED:
    INSTALLED_APPS += ["pgtrigger", "pghistory", "benchmarks.peer"]

DATABASES = {
    "default": django_database(
        os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        os.environ.get("BENCH_DB_NAME", "bench_write"),
    )
}
