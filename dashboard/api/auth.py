"""API access, declared once per route: `@router.get(path, auth=Role("viewer"))`.

A `Role` finds the caller (bearer token, or the session with its CSRF check, or no one: the
anonymous role) and admits them when their role reaches the route's. `HubRouter` refuses a route
declared without one, at import, and records the role in the OpenAPI document as `x-hub-role`,
which the access-matrix test reads.
"""

import asyncio
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.http import HttpRequest
from ninja import Router
from ninja.security.http import HttpBearer
from ninja.utils import check_csrf

from accounts.access import RANK, ROLES, bearer, request_user, user_role
from accounts.identity import Identity, identity_for_token, identity_for_token_sync
from core.db_threads import db_call
from sequences.errors import HubError

SAFE_METHODS = {"GET", "HEAD", "OPTIONS", "TRACE"}
ROLE_KEY = "x-hub-role"  # the OpenAPI extension naming an operation's role

Caller = tuple[Any, str]  # (a user, perhaps AnonymousUser; their role)


class ApiRequest(HttpRequest):
    """A request its route's Role admitted: Ninja sets `auth` to what the Role returned."""

    auth: Any  # the caller: a user, or AnonymousUser when HUB_ANONYMOUS_ROLE admits one


class Role(HttpBearer):
    """Admits a caller whose role is at least `needed`: 401 when no one is identified and the
    hub admits no anonymous clients (HUB_ANONYMOUS_ROLE=none), 403 naming the role otherwise.

    Async routes get a coroutine (tokens come from the per-process cache, no thread hop);
    sync routes, which Django runs in a thread with no event loop, get the answer itself.
    """

    openapi_description = (
        "A token (`Authorization: Bearer <token>`) or the console's session; each operation's "
        f"`{ROLE_KEY}` names the least role it needs."
    )

    def __init__(self, needed: str) -> None:
        if needed not in ROLES:
            raise ValueError(f"no role {needed!r}: one of {', '.join(ROLES)}")
        super().__init__()
        self.needed = needed
        self.is_async = True  # ninja then calls it on async routes' loop, not in a thread

    def __repr__(self) -> str:
        return f"Role({self.needed!r})"

    def __call__(self, request: HttpRequest) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._admit(*_caller_sync(request))
        return self._check_async(request)

    async def _check_async(self, request: HttpRequest) -> Any:
        return self._admit(*await _caller_async(request))

    def _admit(self, user: Any, role: str) -> Any:
        if not user.is_authenticated and settings.HUB_ANONYMOUS_ROLE == "none":
            return None  # Ninja answers 401 (on_auth_error)
        if RANK[role] < RANK[self.needed]:
            raise HubError(
                403, "NOT_AUTHORIZED", f"role {role} may not do this: it needs {self.needed}"
            )
        return user

    def authenticate(self, request: HttpRequest, token: str) -> Any:  # pragma: no cover
        return None


def _caller_sync(request: HttpRequest) -> Caller:
    raw = bearer(request)
    if raw is not None:
        caller = _token_caller(identity_for_token_sync(raw))
    else:
        user = request_user(request)
        if (
            user.is_authenticated
            and request.method not in SAFE_METHODS
            and check_csrf(request) is not None
        ):
            # A browser session may call the API, but only from the hub's own pages.
            raise HubError(403, "CSRF_FAILED", "CSRF check failed: send the X-CSRFToken header")
        caller = (user, user_role(user))
    _release_connection()
    return caller


async def _caller_async(request: HttpRequest) -> Caller:
    raw = bearer(request)
    if raw is not None:
        return _token_caller(await identity_for_token(raw))
    if not hasattr(request, "user"):  # the API handler: no session middleware, no cookie
        return AnonymousUser(), settings.HUB_ANONYMOUS_ROLE
    return await db_call(_caller_sync, request)


def _token_caller(identity: Identity | None) -> Caller:
    if identity is None:  # unknown, revoked, or its user deactivated: as if there were none
        return AnonymousUser(), settings.HUB_ANONYMOUS_ROLE
    return identity.user, identity.role


def _release_connection() -> None:
    """Give the pooled database connection back now, not when the response ends.

    Otherwise a streaming response (stdout followed for minutes) keeps the connection its
    authentication borrowed, and a few hundred readers exhaust the pool. Without a pool
    (SQLite) there is nothing to give back.
    """
    if connection.settings_dict.get("OPTIONS", {}).get("pool") and not connection.in_atomic_block:
        connection.close()


class HubRouter(Router):
    """A Router whose every route declares its Role: one without is an error at import, so no
    route can fall back to a default nobody chose."""

    def add_api_operation(
        self,
        path: str,
        methods: list[str],
        view_func: Callable,
        *,
        auth: Any = None,
        openapi_extra: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(auth, Role):
            raise ImproperlyConfigured(
                f"{'/'.join(methods)} {path}: declare who may call it, e.g. auth=Role('viewer')"
            )
        extra = {**(openapi_extra or {}), ROLE_KEY: auth.needed}
        super().add_api_operation(
            path, methods, view_func, auth=auth, openapi_extra=extra, **options
        )
