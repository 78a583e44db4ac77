"""Observing mode routes (docs/api.md, "Observing modes"): thin, over sequences.modes.

Roles: viewer reads, operator configures, shuts down and restarts, admin sets the
configuration. Every mutating call is audited, refused ones included.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse

from accounts.access import audit
from dashboard.api.auth import ApiRequest, HubRouter, Role
from sequences import modes
from sequences.errors import HubError

router = HubRouter(tags=["modes"])
aaudit = sync_to_async(audit)

CONFIG_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"modes": {"type": "object"}},
                    "required": ["modes"],
                }
            },
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


def _format(request: HttpRequest) -> str | None:
    """The body's format from its Content-Type; None: guessed from the text."""
    kind = request.headers.get("Content-Type", "").lower()
    if "yaml" in kind:
        return "yaml"
    if "json" in kind:
        return "json"
    return None


@router.get("/modes/config", auth=Role("viewer"), summary="The observing modes configuration")
def get_config(request: HttpRequest) -> dict[str, Any]:
    return modes.get_config()


@router.put(
    "/modes/config",
    auth=Role("admin"),
    summary="Replace the observing modes configuration (JSON or YAML)",
    openapi_extra=CONFIG_BODY,
)
def set_config(request: ApiRequest) -> dict[str, Any]:
    user = request.auth
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    try:
        if text is None:
            raise HubError(422, "INVALID_CONFIG", "the configuration must be UTF-8 text")
        answer = modes.set_config(text, user, _format(request))
    except HubError as exc:
        audit(user, "modes.config", "config", outcome="refused", via="api", error=exc.message)
        raise
    audit(user, "modes.config", "config", via="api", modes=sorted(answer["modes"]))
    return answer


@router.get("/modes", auth=Role("viewer"), summary="Observing modes and their status")
def list_modes(request: HttpRequest) -> list[dict[str, Any]]:
    return modes.list_modes()


@router.get("/mode/{name}", auth=Role("viewer"), summary="One observing mode and its status")
def get_mode(request: HttpRequest, name: str) -> dict[str, Any]:
    return modes.get_mode(name)


@router.get("/resources", auth=Role("viewer"), summary="Resources: in use (by which mode) or not")
def list_resources(request: HttpRequest) -> list[dict[str, Any]]:
    return modes.resources()


async def _call(request: ApiRequest, action: str, target: str, call: Any) -> HttpResponse:
    user = request.auth
    try:
        answer = await call(target, user)
    except HubError as exc:
        await aaudit(
            user, f"mode.{action}", target, outcome="refused", via="api", error=exc.message
        )
        raise
    await aaudit(user, f"mode.{action}", target, via="api")
    return JsonResponse(answer)


@router.post(
    "/mode/{name}/configure",
    auth=Role("operator"),
    summary="Configure: bring the mode's sequencers up, or refuse changing nothing",
)
async def configure(request: ApiRequest, name: str) -> HttpResponse:
    return await _call(request, "configure", name, modes.configure)


@router.post(
    "/mode/{name}/shutdown",
    auth=Role("operator"),
    summary="Shut the mode's sequencers down and free its resources",
)
async def shutdown(request: ApiRequest, name: str) -> HttpResponse:
    return await _call(request, "shutdown", name, modes.shutdown)


@router.post(
    "/modes/sequencer/{prefix}/restart",
    auth=Role("operator"),
    summary="Restart one sequencer of a configured mode",
)
async def restart(request: ApiRequest, prefix: str) -> HttpResponse:
    return await _call(request, "restart", prefix, modes.restart)
