"""`python manage.py hub_init`: role groups, and an admin account the first time."""

import os
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand

from accounts.access import ensure_groups


class Command(BaseCommand):
    help = "Create the role groups and, on a hub with no users, an admin account."

    def handle(self, *args: Any, **options: Any) -> None:
        ensure_groups()
        users = get_user_model().objects
        if users.exists():
            return
        username = os.environ.get("HUB_ADMIN_USER", "admin")
        password = os.environ.get("HUB_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        user = users.create_superuser(username=username, password=password, email="")
        user.groups.add(Group.objects.get(name="admin"))
        shown = "(from HUB_ADMIN_PASSWORD)" if os.environ.get("HUB_ADMIN_PASSWORD") else password
        self.stdout.write(
            self.style.SUCCESS(f"Created the admin account: user {username}, password {shown}")
        )
        self.stdout.write("This password is shown only once; change it after logging in.")
