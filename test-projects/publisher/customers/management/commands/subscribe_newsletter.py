"""Subscribe every customer of a country to the newsletter, as one audited job."""

from django.core.management.base import BaseCommand

import pubsubpull
from customers.models import Customer


class Command(BaseCommand):
    help = "Subscribe every customer of a country to the newsletter."

    def add_arguments(self, parser):
        parser.add_argument("country", help="A country code, e.g. fr.")
        parser.add_argument("--reason", default="", help="Kept in the audit trail.")

    def handle(self, *args, country, reason, **options):
        # Every change made in the block points at one Request row whose
        # metadata says which command, for which country and why.
        with pubsubpull.context(command="subscribe_newsletter", country=country) as job:
            if reason:
                with pubsubpull.context(reason=reason):
                    count = self.subscribe(country)
            else:
                count = self.subscribe(country)
        self.stdout.write(f"{count} customers subscribed (audit trail request {job.id}).")

    def subscribe(self, country):
        return Customer.objects.filter(country_id=country, newsletter=False).update(newsletter=True)
