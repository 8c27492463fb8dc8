"""``migrate`` whose check for unmigrated changes also sees pubsubpull triggers."""

from django.core.management.commands import migrate

from pubsubpull.autodetector import PublishingAutodetector


class Command(migrate.Command):
    autodetector = PublishingAutodetector
