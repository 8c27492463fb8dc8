"""Settings of the publisher test service.

The database comes from DATABASE_URL (a server; the service uses its own
database on it, PUBLISHER_DB_NAME, default "publisher"). ./runtests.sh and the
demo set DATABASE_URL for you. The ledger app lives in a second database on the
same server, PUBLISHER_OTHER_DB_NAME (default: PUBLISHER_DB_NAME + "_other");
migrate it with ``manage.py migrate --database other``.
"""

import json
import os
from pathlib import Path

from scripts.postgres import django_database

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "publisher-test-service-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_tasks_db",
    "pubsubpull",
    "customers",
    "ledger",
]

MIDDLEWARE = [
    # First: it times the whole request and attributes every write to it.
    "pubsubpull.middleware.RequestMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "publisher.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
_name = os.environ.get("PUBLISHER_DB_NAME", "publisher")
DATABASES = {
    "default": django_database(DATABASE_URL, _name),
    "other": django_database(
        DATABASE_URL, os.environ.get("PUBLISHER_OTHER_DB_NAME", f"{_name}_other")
    ),
}
DATABASE_ROUTERS = ["publisher.routers.LedgerRouter"]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
# Without it, the tests' live server hands every path to its media handler
# first, which answers 500 to a path too long for a file name.
MEDIA_URL = "media/"

# Delivery jobs go to the database queue; pubsubpull_worker runs them.
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

PUBSUBPULL = {
    # auth.User is published too; its trigger migration lives in customers.
    "MIGRATIONS_APP": "customers",
    # The test receivers (and the subscriber service) listen on loopback.
    "CALLBACK_ALLOW": ["127.0.0.1", "localhost", "::1"],
}
# Worker processes started by the tests get their short timings this way.
PUBSUBPULL.update(json.loads(os.environ.get("PUBSUBPULL_OVERRIDES", "{}")))
# Those timings make leases shorter than the timeouts on purpose, to see a
# killed worker's lease taken over within seconds.
if "PUBSUBPULL_OVERRIDES" in os.environ:
    SILENCED_SYSTEM_CHECKS = ["pubsubpull.E006", "pubsubpull.E007"]
