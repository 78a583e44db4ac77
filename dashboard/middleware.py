"""Security headers for every response: a CSP that allows only the hub's own files."""

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; font-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# The interactive API docs page bootstraps Swagger UI inline; it stays within the hub's origin.
DOCS_CSP = CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'").replace(
    "style-src 'self'", "style-src 'self' 'unsafe-inline'"
)


def _add_headers(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    policy = DOCS_CSP if request.path.startswith("/api/v1/docs") else CSP
    response.headers.setdefault("Content-Security-Policy", policy)
    response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    return response


class SecurityHeadersMiddleware:
    """Works in sync and async chains, so streaming API views stay on the event loop."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        return _add_headers(request, self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        return _add_headers(request, await self.get_response(request))
