"""Settings of the subscriber test service (billing), which follows the publisher.

The database comes from DATABASE_URL (a server; the service uses its own
database on it, SUBSCRIBER_DB_NAME, default "subscriber"). ./runtests.sh and the
demo set DATABASE_URL for you.
"""

import json
import os
from pathlib import Path

from scripts.postgres import django_database

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "subscriber-test-service-not-secret")
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
    "billing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "subscriber.urls"

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
DATABASES = {
    "default": django_database(DATABASE_URL, os.environ.get("SUBSCRIBER_DB_NAME", "subscriber")),
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

# Pull jobs go to the database queue; pubsubpull_worker runs them.
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

PUBSUBPULL = {}
# Worker processes started by the tests get their short timings this way.
PUBSUBPULL.update(json.loads(os.environ.get("PUBSUBPULL_OVERRIDES", "{}")))
# Those timings make leases shorter than the timeouts on purpose, to see a
# killed worker's lease taken over within seconds.
if "PUBSUBPULL_OVERRIDES" in os.environ:
    SILENCED_SYSTEM_CHECKS = ["pubsubpull.E006", "pubsubpull.E007"]

# Where the customers service publishes, and billing's token there
# (manage.py pubsubpull_token create billing --models customers.customer there).
CUSTOMERS_URL = os.environ.get("CUSTOMERS_URL", "http://127.0.0.1:8000/pubsubpull/")
CUSTOMERS_TOKEN = os.environ.get("CUSTOMERS_TOKEN", "")
