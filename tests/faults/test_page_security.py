"""Pages: every form refuses a POST without its CSRF token, every page sends the security
headers, and log-in attempts are limited on a real hub (its cache is Redis).

Routes are read from the URL configuration, so a page added later is covered too.
"""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

pytestmark = pytest.mark.django_db

FILLERS = {"int": "1", "str": "x", "slug": "x", "uuid": str(uuid.uuid4()), "path": "x"}


def page_paths() -> list[str]:
    """Every page route (the API and its own CSRF rules aside), parameters filled in."""
    paths: list[str] = []

    def walk(patterns: list, prefix: str) -> None:
        for entry in patterns:
            route = prefix + str(entry.pattern)
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, route)
            elif isinstance(entry, URLPattern) and not route.startswith("api/"):
                paths.append(
                    "/" + re.sub(r"<(?:(\w+):)?\w+>", lambda m: FILLERS[m[1] or "str"], route)
                )

    walk(get_resolver().url_patterns, "")
    return paths


@pytest.fixture
def admin_client(django_user_model) -> Client:
    user = django_user_model.objects.create_superuser(f"root-{uuid.uuid4().hex[:6]}", "", "pw")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def test_every_page_route_refuses_a_post_without_the_csrf_token(admin_client):
    paths = page_paths()
    assert "/login/" in paths and "/tokens/new/" in paths and len(paths) > 20
    for path in paths:
        for client in (admin_client, Client(enforce_csrf_checks=True)):
            response = client.post(path, {"name": "x", "username": "a", "password": "b"})
            assert response.status_code == 403, (path, response.status_code)


def test_a_post_with_the_token_gets_past_csrf(admin_client):
    page = admin_client.get("/tokens/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)[1]
    response = admin_client.post("/tokens/new/", {"name": "x", "csrfmiddlewaretoken": token})
    assert response.status_code != 403


def assert_security_headers(response, where: str) -> None:
    csp = response["Content-Security-Policy"]
    directives = dict(
        (part.split()[0], part.split()[1:]) for part in csp.split(";") if part.strip()
    )
    assert directives["default-src"] == ["'self'"], where
    assert directives["script-src"] == ["'self'"], where
    assert directives["style-src"] == ["'self'"], where
    assert directives["object-src"] == ["'none'"], where
    assert directives["frame-ancestors"] == ["'none'"], where
    # Only the hub's own origin: no other host, no inline code, no eval.
    for name, sources in directives.items():
        for source in sources:
            assert source in {"'self'", "'none'", "data:", "ws:", "wss:"}, (where, name, source)
    assert response["X-Frame-Options"] == "DENY", where
    assert response["X-Content-Type-Options"] == "nosniff", where
    assert response["Referrer-Policy"] == "same-origin", where


def test_every_page_sends_the_security_headers(admin_client):
    for path in page_paths():
        response = admin_client.get(path)
        if response.status_code == 405:
            continue  # a POST-only action
        assert_security_headers(response, path)
    assert_security_headers(Client().get("/login/"), "/login/ anonymous")
    assert_security_headers(Client().get("/api/v1/version"), "/api/v1/version anonymous")


@pytest.mark.django_db(transaction=True)
def test_log_in_attempts_are_limited_on_a_live_hub(private_hub, django_user_model):
    hub = private_hub(web_env={"HUB_LOGIN_ATTEMPTS": "3"})
    name = f"target-{uuid.uuid4().hex[:6]}"
    django_user_model.objects.create_user(name, password="right-password")
    base = str(hub.api.base_url).removesuffix("/api/v1/").removesuffix("/api/v1")
    with httpx.Client(base_url=base, timeout=30) as browser:

        def attempt(password: str) -> httpx.Response:
            page = browser.get("/login/").text
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)[1]
            return browser.post(
                "/login/",
                data={"username": name, "password": password, "csrfmiddlewaretoken": token},
                headers={"Referer": base + "/login/"},
            )

        assert [attempt("wrong").status_code for _ in range(3)] == [401, 401, 401]
        refused = attempt("right-password")  # the right password no longer helps
        assert refused.status_code == 429
        assert "Too many failed log-ins" in refused.text


@pytest.mark.django_db(transaction=True)
def test_api_answers_from_a_live_hub_carry_the_security_headers(hub, people):
    # A token client's requests go through the API's own handler, without the pages' middleware.
    headers = people["viewer"].headers()
    for path in ("/version", "/sequences", "/instance/nope/output", "/no-such-route"):
        response = httpx.get(hub.api + path, headers=headers)
        assert_security_headers(response.headers, path)
    assert_security_headers(httpx.get(hub.api + "/version").headers, "/version anonymous")
