"""``migrate`` whose check for unmigrated changes also sees pubsubpull triggers."""

from django.core.management.commands import migrate

from pubsubpull.capture.autodetector import publishing


class Command(migrate.Command):
    @property
    def autodetector(self):  # type: ignore[override]  # Django's is a class attribute
        # Read at run time: another app may have patched Django's command.
        return publishing(migrate.Command.autodetector)
