"""``makemigrations`` that also writes the migrations installing pubsubpull triggers."""

from django.core.management.commands import makemigrations

from pubsubpull.autodetector import PublishingAutodetector


class Command(makemigrations.Command):
    autodetector = PublishingAutodetector
