"""Users and tokens in the console: admins add users, set roles and deactivate them; tokens
lapse and act with at most the role they were given; failed log-ins are audited."""

from __future__ import annotations

import time
from datetime import timedelta
from html import unescape
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from accounts.access import issue_token
from accounts.models import ApiToken, AuditEntry
from tests.dashboard.conftest import PASSWORD

STRONG = "correct-horse-battery-9"


def _api(raw: str, path: str = "/api/v1/sequences", method: str = "get", **extra):
    client = Client()
    return getattr(client, method)(path, HTTP_AUTHORIZATION=f"Bearer {raw}", **extra)


def test_only_admins_see_the_users_page_and_its_link(clients, users):
    assert clients["viewer"].get("/users/").status_code == 403
    assert clients["operator"].post("/users/new/", {"username": "x"}).status_code == 403
    page = clients["admin"].get("/users/").content.decode()
    assert users["viewer"].username in page and users["operator"].username in page
    assert 'href="/users/"' in page
    assert 'href="/users/"' not in clients["operator"].get("/").content.decode()


def test_an_admin_adds_a_user_who_can_log_in_with_that_role(clients, users):
    answer = clients["admin"].post(
        "/users/new/", {"username": "ada", "password": STRONG, "role": "operator"}
    )
    assert answer.status_code == 302
    ada = User.objects.get(username="ada")
    assert list(ada.groups.values_list("name", flat=True)) == ["operator"]
    fresh = Client()
    assert fresh.post("/login/", {"username": "ada", "password": STRONG}).status_code == 302
    assert "ada · operator" in fresh.get("/").content.decode()
    entry = AuditEntry.objects.get(action="user.create")
    assert entry.target == "ada" and entry.detail == {"role": "operator"}


def test_a_refused_new_user_says_why_beside_the_field_and_makes_nothing(clients, users):
    taken = users["viewer"].username
    answer = clients["admin"].post(
        "/users/new/", {"username": taken.upper(), "password": STRONG, "role": "viewer"}
    )
    assert answer.status_code == 400
    assert f"a user named {taken.upper()!r} already exists" in unescape(answer.content.decode())
    answer = clients["admin"].post(
        "/users/new/", {"username": "bob", "password": "12345678", "role": "viewer"}
    )
    html = answer.content.decode()
    assert answer.status_code == 400 and "too common" in html and 'value="bob"' in html
    answer = clients["admin"].post(
        "/users/new/", {"username": "bob", "password": STRONG, "role": "root"}
    )
    assert answer.status_code == 400 and "root is not one of the available choices" in (
        answer.content.decode()
    )
    assert not User.objects.filter(username="bob").exists()


def test_changing_a_role_takes_effect_on_the_users_tokens_at_once(clients, users):
    viewer = users["viewer"]
    _, raw = ApiToken.issue(viewer, "cli")
    assert _api(raw, "/api/v1/sequences").status_code == 200
    assert _api(raw, "/api/v1/sequence/nope", "delete").status_code == 403
    clients["admin"].post(f"/users/{viewer.id}/role/", {"role": "admin"})
    assert list(viewer.groups.values_list("name", flat=True)) == ["admin"]
    # Now an admin: the delete reaches the route (404: no such sequence), not the role check.
    assert _api(raw, "/api/v1/sequence/nope", "delete").status_code == 404
    entry = AuditEntry.objects.get(action="user.role")
    assert entry.detail == {"before": "viewer", "role": "admin"}


def test_the_last_admin_keeps_the_role_and_no_one_deactivates_themselves(clients, users):
    User.objects.filter(is_superuser=True).update(is_active=False)
    admin = users["admin"]
    clients["admin"].post(f"/users/{admin.id}/role/", {"role": "viewer"})
    assert list(admin.groups.values_list("name", flat=True)) == ["admin"]
    page = clients["admin"].get("/users/").content.decode()
    assert "is the last active admin" in page
    clients["admin"].post(f"/users/{admin.id}/active/", {"active": "0"})
    admin.refresh_from_db()
    assert admin.is_active
    assert "you cannot deactivate yourself" in clients["admin"].get("/users/").content.decode()
    assert AuditEntry.objects.filter(outcome="refused", action__startswith="user.").count() == 2


def test_a_deactivated_user_cannot_log_in_or_use_tokens_and_comes_back(clients, users):
    operator = users["operator"]
    _, raw = ApiToken.issue(operator, "cli")
    clients["admin"].post(f"/users/{operator.id}/active/", {"active": "0"})
    assert _api(raw).status_code == 401
    answer = Client().post("/login/", {"username": operator.username, "password": PASSWORD})
    assert answer.status_code == 401
    assert "deactivated" in clients["admin"].get("/users/").content.decode()
    clients["admin"].post(f"/users/{operator.id}/active/", {"active": "1"})
    assert _api(raw).status_code == 200
    actions = list(
        AuditEntry.objects.filter(target=operator.username).values_list("action", flat=True)
    )
    assert "user.deactivate" in actions and "user.activate" in actions


def test_a_token_acts_with_at_most_its_role(clients, users):
    clients["admin"].post("/tokens/new/", {"name": "read-only", "role": "viewer"})
    token = ApiToken.objects.get(name="read-only")
    assert token.role == "viewer" and token.user == users["admin"]
    # The raw value is shown once, on the page the creation leads to.
    page = clients["admin"].get("/tokens/").content.decode()
    shown = page.split("data-copy>")[1].split("<")[0]
    assert _api(shown).status_code == 200
    assert _api(shown, "/api/v1/sequence/nope", "delete").status_code == 403
    assert "viewer" in clients["admin"].get("/tokens/").content.decode()


def test_a_token_may_not_hold_more_than_its_owner(clients, users):
    answer = clients["viewer"].post("/tokens/new/", {"name": "sneaky", "role": "admin"})
    assert answer.status_code == 302
    assert not ApiToken.objects.filter(name="sneaky").exists()
    page = clients["viewer"].get("/tokens/").content.decode()
    assert "a token may not hold more than its owner" in page


def test_a_token_lapses_at_its_expiry(clients, users):
    clients["operator"].post("/tokens/new/", {"name": "week", "expires_in": "7"})
    token = ApiToken.objects.get(name="week")
    left = token.expires - timezone.now()
    assert timedelta(days=6, hours=23) < left <= timedelta(days=7)
    page = clients["operator"].get("/tokens/").content.decode()
    shown = page.split("data-copy>")[1].split("<")[0]
    assert _api(shown).status_code == 200
    # One that lapses in a moment: refused once it has, though the web remembered it.
    _, short = issue_token(users["operator"], "short", timezone.now() + timedelta(seconds=1))
    assert _api(short).status_code == 200
    time.sleep(1.1)
    assert _api(short).status_code == 401
    assert "expired" in clients["operator"].get("/tokens/").content.decode()
    answer = clients["operator"].post("/tokens/new/", {"name": "odd", "expires_in": "2"})
    assert answer.status_code == 302 and not ApiToken.objects.filter(name="odd").exists()


def test_failed_log_ins_are_audited_with_the_name_and_address(db, users):
    answer = Client().post("/login/", {"username": users["viewer"].username, "password": "nope"})
    assert answer.status_code == 401
    entry = AuditEntry.objects.get(action="login", outcome="refused")
    assert entry.target == users["viewer"].username and entry.actor == "anonymous"
    assert entry.detail == {"reason": "bad credentials", "address": "127.0.0.1"}


def test_hub_token_makes_a_lapsing_token_with_a_role_and_refuses_more_than_the_owner(users):
    out = StringIO()
    call_command(
        "hub_token", users["admin"].username, "--days", "30", "--role", "viewer", stdout=out
    )
    token = ApiToken.objects.get(prefix=out.getvalue().strip()[:8])
    assert token.role == "viewer" and timedelta(days=29) < token.expires - timezone.now()
    with pytest.raises(CommandError, match="may not hold more than its owner"):
        call_command("hub_token", users["viewer"].username, "--role", "admin", stdout=out)
    with pytest.raises(CommandError, match="positive number of days"):
        call_command("hub_token", users["viewer"].username, "--days", "0", stdout=out)
