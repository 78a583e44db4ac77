"""Console fixtures: a user and a logged-in test client per role, and recorded objects."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client

PASSWORD = "pw-for-tests-1"
ROLES = ("viewer", "operator", "admin")


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    # PBKDF2 at full strength costs about a second per user made; these tests make many.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def users(db):
    from django.contrib.auth.models import Group, User

    from accounts.access import ensure_groups

    ensure_groups()
    made = {}
    for role in ROLES:
        user = User.objects.create_user(f"{role}-{uuid.uuid4().hex[:6]}", password=PASSWORD)
        user.groups.add(Group.objects.get(name=role))
        made[role] = user
    return made


@pytest.fixture
def clients(users) -> dict[str, Client]:
    """A client per role, plus `anonymous`."""
    result = {"anonymous": Client()}
    for role, user in users.items():
        client = Client()
        client.force_login(user)
        result[role] = client
    return result


@pytest.fixture
def sequence(db, users):
    """A recorded Python sequence (through the catalog, as an upload would)."""
    from sequences import catalog
    from tests.packaging import python_package

    data = python_package("def run(context, input, *args):\n    print('hi')\n")
    path = catalog.spool_upload([data])
    return catalog.add_sequence(path, users["admin"])


@pytest.fixture
def ended_instance(db, sequence):
    """An instance that ran and ended, with a few lines of stdout stored."""
    from django.utils import timezone

    from sequences.models import Instance, StreamChunk

    instance = Instance.objects.create(
        sequence=sequence,
        sequence_name=sequence.name,
        args=["a", 1],
        status="completed",
        exit_code=0,
        reason="Instance completed",
        started=timezone.now(),
        ended=timezone.now(),
    )
    chunks = [b"line 1\nline ", b"2\n\x1b[31mred line\x1b[0m\n", b"<b>not bold</b>\nlast"]
    for seq, data in enumerate(chunks):
        StreamChunk.objects.create(instance=instance, stream="stdout", seq=seq, data=data)
    return instance
