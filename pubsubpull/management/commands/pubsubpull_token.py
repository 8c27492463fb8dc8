"""Service tokens for the pull API: create, list, revoke.

manage.py pubsubpull_token create billing --models customers.customer customers.country
manage.py pubsubpull_token create audit --all-models
manage.py pubsubpull_token list
manage.py pubsubpull_token revoke billing
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from pubsubpull.capture.registry import get_registration, registrations
from pubsubpull.publisher.api.auth import create_token
from pubsubpull.publisher.models import ServiceToken


class Command(BaseCommand):
    help = "Create, list and revoke the bearer tokens other services pull with."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="Create a token; it is printed once.")
        create.add_argument("name")
        scope = create.add_mutually_exclusive_group(required=True)
        scope.add_argument("--models", nargs="+", metavar="APP.MODEL")
        scope.add_argument("--all-models", action="store_true")
        sub.add_parser("list", help="List tokens and their scopes.")
        revoke = sub.add_parser("revoke", help="Revoke a token (kept, inactive).")
        revoke.add_argument("name")
        delete = sub.add_parser("delete", help="Delete a token.")
        delete.add_argument("name")

    def handle(self, *args, action, **options):
        getattr(self, f"handle_{action}")(**options)

    def handle_create(self, name, models, all_models, **options):
        if ServiceToken.objects.filter(name=name).exists():
            raise CommandError(f"A token named {name!r} exists; revoke or delete it first.")
        if all_models:
            scope = ["*"]
        else:
            scope = []
            for label in models:
                registration = get_registration(label)
                if registration is None:
                    known = ", ".join(r.label for r in registrations())
                    raise CommandError(f"{label!r} is not a published model. Published: {known}.")
                scope.append(registration.label)
        _, token = create_token(name, scope)
        self.stderr.write(f"Created token {name!r} for {', '.join(scope)}. It is shown only once:")
        self.stdout.write(token)

    def handle_list(self, **options):
        for token in ServiceToken.objects.all():
            state = "active" if token.is_active else "revoked"
            used = token.last_used.isoformat() if token.last_used else "never"
            self.stdout.write(
                f"{token.name}\t{token.prefix}…\t{state}\tlast used {used}\t"
                f"{', '.join(token.scope) or '-'}"
            )

    def handle_revoke(self, name, **options):
        if not ServiceToken.objects.filter(name=name).update(is_active=False):
            raise CommandError(f"No token named {name!r}.")
        self.stdout.write(f"Revoked {name!r}.")

    def handle_delete(self, name, **options):
        deleted, _ = ServiceToken.objects.filter(name=name).delete()
        if not deleted:
            raise CommandError(f"No token named {name!r}.")
        self.stdout.write(f"Deleted {name!r}.")
