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
from django.core.handlers.exception import convert_exception_to_response

from dashboard.middleware import ApiHeadersMiddleware, ApiJsonErrorsMiddleware, ResponseMiddleware
from dashboard.streaming import StreamingBodyMixin

# Outermost first, as in settings.MIDDLEWARE.
API_MIDDLEWARE: list[type[ResponseMiddleware]] = [ApiHeadersMiddleware, ApiJsonErrorsMiddleware]


class PagesHandler(StreamingBodyMixin, ASGIHandler):
    """Django's handler with every middleware; the streamed routes' bodies read as they come
    (a browser session calling them keeps its session and CSRF checks)."""


class ApiHandler(StreamingBodyMixin, ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        """API_MIDDLEWARE around the views, chained as Django chains settings.MIDDLEWARE (the
        only list it reads): each layer's errors turned into responses for the next.

        Shorter than Django's: these are ResponseMiddleware, async-capable and without view,
        template-response or exception hooks, so there is nothing to adapt or to register.
        """
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        # Django's own, not in its type stubs.
        views = self._get_response_async if is_async else self._get_response  # type: ignore[attr-defined]
        handler = convert_exception_to_response(views)
        for middleware in reversed(API_MIDDLEWARE):
            handler = convert_exception_to_response(middleware(handler))
        self._middleware_chain = handler


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
