"""REST API v1: wire-compatible with Scramjet Transform Hub, plus sequencers and components."""

from django.db import DataError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from dashboard.api.auth import HubRouter, Role
from sequences.errors import HubError

api = NinjaAPI(
    title="Sequence Hub API",
    version="1",
    description=(
        "Upload sequences, run instances and steer sequencers. The sequence and instance routes "
        "are wire-compatible with Scramjet Transform Hub. Authenticate with "
        "`Authorization: Bearer <token>` (tokens are made on the Tokens page or with "
        '`python manage.py hub_token USER`). Errors are `{"error": ..., "code": ...}`.'
    ),
    # Every route declares its Role (HubRouter refuses one without); should a route of some
    # other Router get in all the same, admins alone may call it.
    auth=Role("admin"),
    default_router=HubRouter(),
    urls_namespace="api",
    docs_url="docs",
    openapi_url="openapi.json",
)


@api.exception_handler(HubError)
def on_hub_error(request: HttpRequest, exc: HubError) -> HttpResponse:
    return JsonResponse(exc.as_json(), status=exc.status)


@api.exception_handler(AuthenticationError)
def on_auth_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return JsonResponse(
        {
            "error": "Authentication required: send 'Authorization: Bearer <token>'",
            "code": "NEED_AUTHENTICATION",
        },
        status=401,
    )


@api.exception_handler(ValidationError)
def on_validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    parts = []
    for err in exc.errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "payload"))
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return JsonResponse(
        {"error": "; ".join(parts) or "invalid request", "code": "INVALID_REQUEST"}, status=400
    )


@api.exception_handler(RecursionError)
def on_recursion_error(request: HttpRequest, exc: RecursionError) -> HttpResponse:
    # json.loads raises RecursionError, not ValueError, on a body nested thousands deep.
    return JsonResponse(
        {"error": "the request body is nested too deeply", "code": "INVALID_REQUEST"}, status=400
    )


@api.exception_handler(DataError)
def on_data_error(request: HttpRequest, exc: DataError) -> HttpResponse:
    # PostgreSQL refuses NUL in text (`/sequencer/%00`, `{"name": "\u0000"}`): a bad request.
    if "NUL" not in str(exc):
        raise exc
    return JsonResponse(
        {"error": "text may not contain NUL (0x00) characters", "code": "INVALID_REQUEST"},
        status=400,
    )


@api.exception_handler(OperationalError)
@api.exception_handler(InterfaceError)
def on_database_unavailable(request: HttpRequest, exc: Exception) -> HttpResponse:
    # The database restarting or unreachable (or, on SQLite, locked too long): the request may
    # be tried again, unlike a 500. What the hub keeps in Redis is still served meanwhile.
    response = JsonResponse(
        {"error": "the database is unavailable; try again shortly", "code": "DATABASE_UNAVAILABLE"},
        status=503,
    )
    response["Retry-After"] = "2"
    return response


@api.exception_handler(HttpError)
def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return JsonResponse({"error": str(exc), "code": "REQUEST_ERROR"}, status=exc.status_code)


from dashboard.api import (  # noqa: E402
    hub,
    instances,
    modes,
    sequencers,
    sequences,
    topics,
    workers,
)

api.add_router("", hub.router)
api.add_router("", sequences.router)
api.add_router("", instances.router)
api.add_router("", sequencers.router)
api.add_router("", modes.router)
api.add_router("", topics.router)
api.add_router("", workers.router)
