"""`python manage.py hub_init`: what a hub needs before it starts, made once and kept.

The data folder (its modes, the secret key, the embedded Redis's password: dashboard/data_dir.py),
a check that the package storage answers (dashboard/package_storage.py), the database's tables,
the role groups and, the first time, an admin account. Settings only read, so this runs before
anything else (`make run`, `make migrate`; runhub at every start); safe to run again.
"""

import os
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from accounts.access import ensure_groups
from dashboard.data_dir import prepare_data_dir
from dashboard.package_storage import StorageSettingError, check_reachable
from sequences import live
from sequences.models import HubIdentity


class Command(BaseCommand):
    help = (
        "Make the data folder ready (modes, secret key, embedded Redis password), apply "
        "migrations, create the role groups and, on a hub with no users, an admin account."
    )

    def handle(self, *args: Any, verbosity: int = 1, **options: Any) -> None:
        # The secrets made here are for the processes started after this one: this one needs
        # none (migrations and password hashes use no SECRET_KEY).
        prepare_data_dir()
        # A bucket that does not answer, or a folder that cannot be written, stops the start
        # here, named, rather than at the first upload.
        try:
            check_reachable()
        except StorageSettingError as exc:
            raise CommandError(str(exc)) from None
        call_command("migrate", interactive=False, verbosity=verbosity)
        ensure_groups()
        # The hub id, made here the first time: the namespace of its Redis keys.
        made = not HubIdentity.objects.exists()
        hub_id = live.hub_id()
        if made and verbosity and not settings.HUB_ID:
            self.stdout.write(f"Made the hub id {hub_id}: its Redis keys are under {live.key('')}")
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
