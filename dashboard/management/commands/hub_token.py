"""`python manage.py hub_token USERNAME [--name NAME] [--days N] [--role ROLE]`: print a new API
token for a user."""

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.access import ROLES, AccessError, audit, issue_token


class Command(BaseCommand):
    help = "Create an API bearer token for USERNAME and print it (it is shown only once)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="cli", help="a label to recognise the token by")
        parser.add_argument("--days", type=int, help="the token lapses after this many days")
        parser.add_argument(
            "--role", default="", choices=["", *ROLES], help="act with at most this role"
        )

    def handle(
        self,
        *args: Any,
        username: str,
        name: str,
        days: int | None = None,
        role: str = "",
        **options: Any,
    ) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        if days is not None and days <= 0:
            raise CommandError("--days must be a positive number of days")
        expires = timezone.now() + timedelta(days=days) if days else None
        try:
            token, raw = issue_token(user, name, expires, role)
        except AccessError as exc:
            raise CommandError(str(exc)) from exc
        audit(user, "token.create", token.prefix, via="cli", name=name, role=role or "owner's")
        self.stdout.write(raw)
