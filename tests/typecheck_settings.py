"""The smallest settings the type checker's Django plugin can load (pyproject.toml, mypy).

It reads the models, never a database; the test projects' settings need
environment variables and the test databases.
"""

SECRET_KEY = "type-checking only"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.messages",
    "django.contrib.sessions",
    "pubsubpull",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "unused"}}
USE_TZ = True
