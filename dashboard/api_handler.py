"""The API's own ASGI handler: the same URLs and views, without the pages' middleware.

Django adapts every classic middleware to async by hopping to a thread on the way in and on
the way out. The pages need sessions, CSRF and messages; a client calling the API with a token
(or anonymously) needs none of them, and those fourteen hops were most of the web's CPU on the
hot routes (start, stream reads, health). Requests that carry the session cookie keep the full
stack: the console's own calls to the API are checked for CSRF there.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

API_MIDDLEWARE = [
    "dashboard.middleware.ApiHeadersMiddleware",
    "dashboard.middleware.ApiJsonErrorsMiddleware",
]


class ApiHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        # Django builds the chain from settings.MIDDLEWARE only; this handler is built once,
        # at import, before any request is served.
        pages_middleware = settings.MIDDLEWARE
        settings.MIDDLEWARE = API_MIDDLEWARE
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = pages_middleware


def _has_session(scope: dict[str, Any]) -> bool:
    name = settings.SESSION_COOKIE_NAME.encode() + b"="
    return any(key == b"cookie" and name in value for key, value in scope.get("headers", ()))


def split_api(pages: Any, api: Any) -> Any:
    """An ASGI app sending cookie-less /api/ requests to `api`, everything else to `pages`."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        is_api = scope["type"] == "http" and scope["path"].startswith("/api/")
        if is_api and not _has_session(scope):
            await api(scope, receive, send)
        else:
            await pages(scope, receive, send)

    return app
