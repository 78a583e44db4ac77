"""`python manage.py hub_token USERNAME [--name NAME]`: print a new API token for a user."""

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from accounts.access import audit
from accounts.models import ApiToken


class Command(BaseCommand):
    help = "Create an API bearer token for USERNAME and print it (it is shown only once)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="cli", help="a label to recognise the token by")

    def handle(self, *args: Any, username: str, name: str, **options: Any) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        token, raw = ApiToken.issue(user, name)
        audit(user, "token.create", token.prefix, via="cli", name=name)
        self.stdout.write(raw)
