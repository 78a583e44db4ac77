"""API authentication: bearer tokens or the session; roles checked per route."""

import asyncio
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.http import HttpRequest
from ninja.security.http import HttpBearer
from ninja.utils import check_csrf

from accounts.access import RANK, bearer, request_user, user_role
from accounts.identity import Identity, identity_for_token, identity_for_token_sync
from core.db_threads import db_call
from sequences.errors import HubError

SAFE_METHODS = {"GET", "HEAD", "OPTIONS", "TRACE"}


class HubAuth(HttpBearer):
    """Lets a request through when it carries a valid token or session, or the hub admits
    anonymous clients (HUB_ANONYMOUS_ROLE); the route then checks the role it needs.

    Async routes get a coroutine (tokens come from the per-process cache, no thread hop);
    sync routes, which Django runs in a thread with no event loop, get the answer itself.
    """

    def __init__(self) -> None:
        super().__init__()
        self.is_async = True  # ninja then calls it on async routes' loop, not in a thread

    def __call__(self, request: HttpRequest) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._check_sync(request)
        return self._check_async(request)

    def _check_sync(self, request: HttpRequest) -> Any:
        raw = bearer(request)
        if raw is not None:
            result = self._admit_token(request, identity_for_token_sync(raw))
        else:
            user = request_user(request)
            if (
                user.is_authenticated
                and request.method not in SAFE_METHODS
                and check_csrf(request) is not None
            ):
                # A browser session may call the API, but only from the hub's own pages.
                raise HubError(403, "CSRF_FAILED", "CSRF check failed: send the X-CSRFToken header")
            result = self._admit(request, user, user_role(user))
        _release_connection()
        return result

    async def _check_async(self, request: HttpRequest) -> Any:
        raw = bearer(request)
        if raw is not None:
            return self._admit_token(request, await identity_for_token(raw))
        if not hasattr(request, "user"):  # the API handler: no session middleware, no cookie
            return self._admit(request, AnonymousUser(), settings.HUB_ANONYMOUS_ROLE)
        return await db_call(self._check_sync, request)

    def _admit_token(self, request: HttpRequest, identity: Identity | None) -> Any:
        if identity is None:  # unknown, revoked, or its user deactivated: as if there were none
            return self._admit(request, AnonymousUser(), settings.HUB_ANONYMOUS_ROLE)
        return self._admit(request, identity.user, identity.role)

    @staticmethod
    def _admit(request: HttpRequest, user: Any, role: str) -> Any:
        if user.is_authenticated or settings.HUB_ANONYMOUS_ROLE != "none":
            request.hub_user = user
            request.hub_role = role
            return user
        return None

    def authenticate(self, request: HttpRequest, token: str) -> Any:  # pragma: no cover
        return None


def _release_connection() -> None:
    """Give the pooled database connection back now, not when the response ends.

    Otherwise a streaming response (stdout followed for minutes) keeps the connection its
    authentication borrowed, and a few hundred readers exhaust the pool. Without a pool
    (SQLite) there is nothing to give back.
    """
    if connection.settings_dict.get("OPTIONS", {}).get("pool") and not connection.in_atomic_block:
        connection.close()


def need(request: HttpRequest, role: str) -> Any:
    """The request's user, or a 403 naming the role it lacks."""
    user = getattr(request, "hub_user", None)
    if user is None:
        user = request_user(request)
        request.hub_role = user_role(user)
    if RANK[request.hub_role] < RANK[role]:
        raise HubError(
            403, "NOT_AUTHORIZED", f"role {request.hub_role} may not do this: it needs {role}"
        )
    return user
