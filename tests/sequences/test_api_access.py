"""Who may call which API route: anonymous, viewer, operator, admin; by token and by session.

The matrix comes from the served OpenAPI document, where each operation names its role
(`x-hub-role`): a new route is covered the day it lands.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from accounts.access import RANK, ROLES
from dashboard.api.auth import ROLE_KEY, HubRouter, Role
from dashboard.processes import stop_process
from tests.conftest import Hub, Person, free_port, start_web, web_url

pytestmark = pytest.mark.django_db(transaction=True)

UNKNOWN = "no-such-id"  # every path parameter: refusals for lack of role come before lookups


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path under /api/v1, operation) for every operation of an OpenAPI document."""
    return [
        (method.upper(), path.removeprefix("/api/v1"), operation)
        for path, item in doc["paths"].items()
        for method, operation in item.items()
    ]


def served_operations(base: str) -> list[tuple[str, str, dict[str, Any]]]:
    response = httpx.get(base + "/openapi.json", timeout=30)
    assert response.status_code == 200, response.text
    return operations(response.json())


def fill(template: str) -> str:
    return re.sub(r"{[^}]+}", UNKNOWN, template)


def least_role(method: str, path: str) -> str:
    """The policy docs/api.md states: viewers read; operators run and steer (and configure
    observing modes); admins manage sequences, components, workers and the modes' configuration.
    A route that should differ says so here, on purpose."""
    if method == "GET":
        return "viewer"
    if path.startswith(("/component", "/components", "/worker/")):
        return "admin"
    if path in ("/sequence", "/sequence/{seq_id}", "/modes/config"):
        return "admin"
    return "operator"


def test_every_operation_declares_its_role(hub: Hub):
    """A route with no declared role cannot be added (HubRouter refuses it at import); were one
    to get in some other way, its operation here would lack the role."""
    ops = served_operations(hub.api)
    assert len(ops) >= 50
    undeclared = [(m, p) for m, p, op in ops if op.get(ROLE_KEY) not in ROLES]
    assert not undeclared, undeclared


def test_declared_roles_follow_the_documented_policy(hub: Hub):
    wrong = [
        (m, p, op[ROLE_KEY], least_role(m, p))
        for m, p, op in served_operations(hub.api)
        if op[ROLE_KEY] != least_role(m, p)
    ]
    assert not wrong, wrong


def test_a_route_without_a_role_is_refused_where_it_is_declared():
    router = HubRouter()
    with pytest.raises(ImproperlyConfigured, match="declare who may call it"):
        router.get("/open")(lambda request: {})
    with pytest.raises(ImproperlyConfigured):
        router.post("/open", auth=None)(lambda request: {})
    with pytest.raises(ValueError, match="no role"):
        Role("root")


def answer(client: httpx.Client, method: str, path: str) -> tuple[int | None, dict[str, Any]]:
    """The status, and the body of a refusal; the rest is not read, as some routes never end.
    None when no answer came in time (a refusal, made before any work, would have)."""
    body = b"x" if method in ("POST", "PUT") and path.startswith("/sequence") else b"{}"
    try:
        with client.stream(method, path, content=body if method != "GET" else None) as response:
            if response.status_code not in (401, 403):
                return response.status_code, {}
            response.read()
            return response.status_code, response.json()
    except httpx.ReadTimeout:
        return None, {}


def refusal(role: str, needed: str) -> tuple[int, str] | None:
    """The status and code a caller of that role gets from a route needing `needed`."""
    if role == "none":  # no one known, and the hub admits no anonymous clients
        return 401, "NEED_AUTHENTICATION"
    if RANK[role] < RANK[needed]:
        return 403, "NOT_AUTHORIZED"
    return None


def callers(people: dict[str, Person]) -> dict[str, tuple[dict[str, str], str | None]]:
    """Each caller's headers and role; None for those the hub sees as anonymous."""
    revoked = _person_with_a_revoked_token()
    return {
        "anonymous": ({}, None),
        "viewer": (people["viewer"].headers(), "viewer"),
        "operator": (people["operator"].headers(), "operator"),
        "admin": (people["admin"].headers(), "admin"),
        "revoked admin token": (revoked.headers(), None),
        "made-up token": ({"Authorization": "Bearer hub_nope"}, None),
    }


def _person_with_a_revoked_token() -> Person:
    from django.contrib.auth.models import Group, User

    from accounts.models import ApiToken

    user = User.objects.create(username="revoked-admin")
    user.groups.add(Group.objects.get(name="admin"))
    _, raw = ApiToken.issue(user, "tests")
    _revoke(user.username)
    return Person(user.username, "admin", raw)


def check_matrix(base: str, anonymous_role: str, people: dict[str, Person]) -> list[str]:
    """Every served operation, called by every kind of caller: refused (401 when no one is
    known and the hub admits no anonymous clients, else 403 naming the role) exactly when the
    caller's role is below the operation's declared one. The mismatches, described."""
    wrong = []
    ops = served_operations(base)
    for who, (headers, role) in callers(people).items():
        role = role or anonymous_role
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            for method, template, op in ops:
                needed, path = op[ROLE_KEY], fill(template)
                status, body = answer(client, method, path)
                what = f"{who} {method} {path} (needs {needed}): {status} {body}"
                expected = refusal(role, needed)
                if expected is None:
                    if status in (401, 403):
                        wrong.append(f"{what}, expected no refusal")
                elif (status, body.get("code")) != expected:
                    wrong.append(f"{what}, expected {expected}")
                elif status == 403 and needed not in body["error"]:
                    wrong.append(f"{what}, expected the error to name {needed}")
    return wrong


def test_each_route_admits_exactly_the_roles_it_declares(hub: Hub, people):
    wrong = check_matrix(hub.api, settings.HUB_ANONYMOUS_ROLE, people)
    assert not wrong, "\n".join(wrong)


def test_with_an_anonymous_role_anonymous_callers_get_that_role(hub: Hub, people, tmp_path: Path):
    web = start_web(tmp_path, free_port(), HUB_ANONYMOUS_ROLE="viewer")
    try:
        wrong = check_matrix(web_url(web) + "/api/v1", "viewer", people)
    finally:
        stop_process(web.proc)
    assert not wrong, "\n".join(wrong)


# A sync route reads the token from the database; an async one from the web's cache, which a
# change must clear in every process at once.
ROUTES_BY_KIND = {"sync": "/sequences", "async": "/instance/no-such-instance/output"}


def _revoke(username: str) -> None:
    """As the Tokens page and the admin site do: a save, which tells the web's caches."""
    from django.utils import timezone

    from accounts.models import ApiToken

    for token in ApiToken.objects.filter(user__username=username):
        token.revoked = timezone.now()
        token.save(update_fields=["revoked"])


@pytest.mark.parametrize("kind", ROUTES_BY_KIND)
def test_a_revoked_token_is_refused_at_once(hub: Hub, people, kind):
    path, headers = ROUTES_BY_KIND[kind], people["viewer"].headers()
    for _ in range(3):  # the async route remembers the token after the first answer
        assert httpx.get(hub.api + path, headers=headers).status_code in (200, 404)
    _revoke(people["viewer"].username)
    response = httpx.get(hub.api + path, headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "NEED_AUTHENTICATION"


def test_a_role_taken_away_applies_at_once(hub: Hub, people):
    from django.contrib.auth.models import Group, User

    headers = people["operator"].headers()
    start = hub.api + "/sequence/no-such-sequence/start"
    for _ in range(3):
        assert httpx.post(start, headers=headers, json={}).status_code == 404
    user = User.objects.get(username=people["operator"].username)
    user.groups.remove(Group.objects.get(name="operator"))
    user.groups.add(Group.objects.get(name="viewer"))
    response = httpx.post(start, headers=headers, json={})
    assert response.status_code == 403, response.text
    assert "it needs operator" in response.json()["error"]


def test_a_deactivated_users_token_is_refused_at_once(hub: Hub, people):
    from django.contrib.auth.models import User

    headers, path = people["admin"].headers(), ROUTES_BY_KIND["async"]
    for _ in range(3):
        assert httpx.get(hub.api + path, headers=headers).status_code == 404
    user = User.objects.get(username=people["admin"].username)
    user.is_active = False
    user.save()
    assert httpx.get(hub.api + path, headers=headers).status_code == 401


def test_a_made_up_token_is_refused(hub: Hub, people):
    response = httpx.get(hub.api + "/sequences", headers={"Authorization": "Bearer hub_nope"})
    assert response.status_code == 401


def session_client(hub: Hub, person: Person) -> httpx.Client:
    """A browser-like client: logged in through the login page, with its CSRF cookie."""
    client = httpx.Client(base_url=hub.url, timeout=30, follow_redirects=True)
    client.get("/login/")
    token = client.cookies["csrftoken"]
    response = client.post(
        "/login/",
        data={
            "username": person.username,
            "password": person.password,
            "csrfmiddlewaretoken": token,
        },
    )
    assert "sessionid" in client.cookies, response.text[:500]
    return client


@pytest.mark.parametrize("who", ["viewer", "operator", "admin"])
def test_a_browser_session_reads_with_its_role(hub: Hub, people, who):
    client = session_client(hub, people[who])
    assert client.get("/api/v1/sequences").status_code == 200
    response = client.post(
        "/api/v1/sequence/none/start",
        content=b"{}",
        headers={"X-CSRFToken": client.cookies["csrftoken"]},
    )
    assert response.status_code == (403 if who == "viewer" else 404)
    client.close()


def test_a_session_post_without_the_csrf_token_is_refused(hub: Hub, people):
    client = session_client(hub, people["admin"])
    response = client.post("/api/v1/sequence/none/start", content=b"{}")
    assert response.status_code == 403
    assert response.json()["code"] == "CSRF_FAILED"
    client.close()
