"""Security headers for every response: a CSP that allows only the hub's own files."""

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

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


class ResponseMiddleware:
    """Runs `process(request, response)` on every response, in sync and async chains alike,
    so streaming API views stay on the event loop."""

    sync_capable = True
    async_capable = True
    process: Callable[[HttpRequest, HttpResponse], HttpResponse]

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        return self.process(request, self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        return self.process(request, await self.get_response(request))


class SecurityHeadersMiddleware(ResponseMiddleware):
    process = staticmethod(_add_headers)


def _json_error(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """An API client always gets `{"error", "code"}`, even from Django's own 4xx/5xx pages."""
    if not request.path.startswith("/api/") or response.status_code < 400:
        return response
    if response.get("Content-Type", "").startswith("application/json"):
        return response
    status = response.status_code
    method, path = request.method, request.path
    if status == 405:
        allowed = response.get("Allow", "")
        message = f"{method} is not allowed on {path}; allowed: {allowed or 'none'}"
    elif status == 404:
        message = f"no API route {method} {path}: see /api/v1/docs"
    elif status == 413:
        message = "the request body is too large"
    elif status >= 500:
        message = "the hub failed to answer this request; its log says why"
    else:
        message = f"bad request: {response.reason_phrase}"
    replacement = JsonResponse(
        {"error": message, "code": ERROR_CODES.get(status, "BAD_REQUEST")}, status=status
    )
    for header in ("Allow", "Content-Security-Policy", "Cross-Origin-Opener-Policy"):
        if header in response:
            replacement[header] = response[header]
    return replacement


ERROR_CODES = {
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "TOO_LARGE",
    500: "INTERNAL_ERROR",
}


class ApiJsonErrorsMiddleware(ResponseMiddleware):
    """Unknown routes and wrong methods under /api/ answer JSON, as every API error does."""

    process = staticmethod(_json_error)


def _api_headers(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """What SecurityMiddleware and XFrameOptionsMiddleware add to a page, for the API handler
    that runs without them."""
    _add_headers(request, response)
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if settings.SECURE_REFERRER_POLICY:
        response.headers.setdefault("Referrer-Policy", settings.SECURE_REFERRER_POLICY)
    response.headers.setdefault("X-Frame-Options", settings.X_FRAME_OPTIONS)
    return response


class ApiHeadersMiddleware(ResponseMiddleware):
    process = staticmethod(_api_headers)
