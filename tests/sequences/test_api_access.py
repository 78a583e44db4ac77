"""Who may call which API route: anonymous, viewer, operator, admin; by token and by session."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Hub, Person

pytestmark = pytest.mark.django_db(transaction=True)

RANK = {"anonymous": 0, "viewer": 1, "operator": 2, "admin": 3}

# (method, path, role needed). Unknown ids: an allowed caller gets 404 or 409, never 401/403.
ROUTES = [
    ("GET", "/version", "viewer"),
    ("GET", "/load-check", "viewer"),
    ("GET", "/sequences", "viewer"),
    ("GET", "/sequence/none", "viewer"),
    ("GET", "/sequence/none/instances", "viewer"),
    ("GET", "/instances", "viewer"),
    ("GET", "/instance/none", "viewer"),
    ("GET", "/instance/none/health", "viewer"),
    ("GET", "/instance/none/stdout", "viewer"),
    ("GET", "/instance/none/stderr", "viewer"),
    ("GET", "/instance/none/output", "viewer"),
    ("GET", "/instance/none/log", "viewer"),
    ("GET", "/instance/none/event/x", "viewer"),
    ("GET", "/instance/none/once/x", "viewer"),
    ("GET", "/instance/none/events/x", "viewer"),
    ("POST", "/sequence", "admin"),
    ("PUT", "/sequence/none", "admin"),
    ("DELETE", "/sequence/none", "admin"),
    ("POST", "/sequence/none/start", "operator"),
    ("POST", "/instance/none/input", "operator"),
    ("POST", "/instance/none/stdin", "operator"),
    ("POST", "/instance/none/_event", "operator"),
    ("POST", "/instance/none/_stop", "operator"),
    ("POST", "/instance/none/_kill", "operator"),
]


def call(client: httpx.Client, method: str, path: str) -> httpx.Response:
    body = b"x" if method in ("POST", "PUT") and "sequence" in path else b"{}"
    return client.request(method, path, content=body if method != "GET" else None)


@pytest.mark.parametrize(("method", "path", "needed"), ROUTES, ids=lambda v: str(v))
def test_each_route_admits_exactly_the_roles_it_should_by_token(
    hub: Hub, people, method, path, needed
):
    for who in ("anonymous", "viewer", "operator", "admin"):
        headers = {} if who == "anonymous" else people[who].headers()
        with httpx.Client(base_url=hub.api, headers=headers, timeout=30) as client:
            response = call(client, method, path)
        if who == "anonymous":
            assert response.status_code == 401, (who, response.text)
            assert response.json()["code"] == "NEED_AUTHENTICATION"
        elif RANK[who] < RANK[needed]:
            assert response.status_code == 403, (who, response.text)
            assert response.json()["code"] == "NOT_AUTHORIZED"
            assert needed in response.json()["error"]
        else:
            assert response.status_code not in (401, 403), (who, response.text)


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
