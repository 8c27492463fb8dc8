"""``makemigrations`` that also writes the migrations installing pubsubpull triggers."""

from django.core.management.commands import makemigrations

from pubsubpull.capture.autodetector import publishing


class Command(makemigrations.Command):
    @property
    def autodetector(self):  # type: ignore[override]  # Django's is a class attribute
        # Read at run time: another app may have patched Django's command.
        return publishing(makemigrations.Command.autodetector)
