"""Sequencer and sequence component routes (docs/api.md): thin, over sequences.sequencers.

Roles: viewer reads, operator sends sequencer commands, admin manages components. Every
mutating call is audited, refused ones included.
"""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from ninja import Schema

from accounts.access import audit
from dashboard.api.auth import ApiRequest, HubRouter, Role
from dashboard.api.bodies import (
    CommandsBody,
    ComponentBody,
    DiagnosticBody,
    IdAndCommandsBody,
    IdBody,
    LoadScriptBody,
    json_body,
)
from sequences import sequencers
from sequences.errors import HubError
from sequences.statemachine import CommandName

router = HubRouter(tags=["sequencers"])
aaudit = sync_to_async(audit)

C = CommandName
# The bodies' descriptions: the domain parses them (see dashboard/api/bodies.py).
BODIES: dict[CommandName, type[Schema]] = {
    C.LOAD_SEQUENCE: CommandsBody,
    C.SUBMIT: CommandsBody,
    C.ADD: CommandsBody,
    C.PREPEND: CommandsBody,
    C.REPLACE: IdAndCommandsBody,
    C.INSERT_AFTER: IdAndCommandsBody,
    C.DELETE: IdBody,
    C.ADD_BREAKPOINT: IdBody,
    C.REMOVE_BREAKPOINT: IdBody,
    C.DIAGNOSTIC_MODE: DiagnosticBody,
}
SUMMARIES: dict[CommandName, str] = {
    C.LOAD_SEQUENCE: "Load a step list (Idle, Loaded)",
    C.START_SEQUENCE: "Start the loaded step list: Started(runId)",
    C.SUBMIT: "Load and start a step list: Started(runId)",
    C.ADD: "Append steps",
    C.PREPEND: "Insert steps before the first pending step",
    C.REPLACE: "Replace a pending step by new steps",
    C.INSERT_AFTER: "Insert steps after a step",
    C.DELETE: "Delete a pending step",
    C.ADD_BREAKPOINT: "Breakpoint before a pending step",
    C.REMOVE_BREAKPOINT: "Remove a step's breakpoint",
    C.RESET: "Drop the pending steps (Loaded: the whole list)",
    C.PAUSE: "Pause before the next pending step",
    C.RESUME: "Resume after a pause",
    C.ABORT_SEQUENCE: "Abort: hook, pending steps dropped, in-flight step finishes",
    C.STOP: "Stop: hook, pending steps dropped, in-flight step finishes",
    C.GO_ONLINE: "Go online (Offline → Idle)",
    C.GO_OFFLINE: "Go offline (Idle, Loaded → Offline)",
    C.SHUTDOWN: "Shut the sequencer down (→ Killed)",
    C.DIAGNOSTIC_MODE: "Diagnostic mode hook",
    C.OPERATIONS_MODE: "Operations mode hook",
}


def _read_body(request: HttpRequest) -> bytes:
    return request.body


def _json(raw: bytes) -> Any:
    """The body as JSON, whatever the content type says; None when empty."""
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise HubError(400, "INVALID_REQUEST", f"body is not valid JSON: {exc}") from None


async def _abody(request: HttpRequest) -> Any:
    return _json(await sync_to_async(_read_body)(request))


# -- sequencers ----------------------------------------------------------------------------


@router.get("/sequencers", auth=Role("viewer"), summary="List sequencers")
def list_sequencers(request: HttpRequest) -> list[dict[str, Any]]:
    return sequencers.list_json()


@router.get(
    "/sequencer/{sid}",
    auth=Role("viewer"),
    summary="A sequencer (by id or prefix) with its step list",
)
def get_sequencer(request: HttpRequest, sid: str) -> dict[str, Any]:
    return sequencers.describe(sequencers.get_sequencer(sid))


@router.get(
    "/sequencer/{sid}/links",
    auth=Role("viewer"),
    summary="Its upstream (the sequencer whose script last commanded it) and its downstreams",
)
def get_links(request: HttpRequest, sid: str) -> dict[str, Any]:
    return sequencers.links(sequencers.get_sequencer(sid))


@router.get(
    "/sequencer/{sid}/transitions",
    auth=Role("viewer"),
    summary="The sequencer's transition history",
)
def get_transitions(request: HttpRequest, sid: str, limit: int = 200) -> list[dict[str, Any]]:
    row = sequencers.get_sequencer(sid)
    return sequencers.transitions(row, max(1, min(limit, 10_000)))


def _command_view(command: CommandName) -> Any:
    async def send(request: ApiRequest, sid: str) -> HttpResponse:
        user = request.auth
        row = await sequencers.aget_sequencer(sid)
        try:
            body = await _abody(request)
            response, status = await sequencers.command(row, command, body, user)
        except HubError as exc:
            await aaudit(
                user,
                f"sequencer.{command}",
                row.id,
                outcome="refused",
                via="api",
                prefix=row.prefix,
                error=exc.message,
            )
            raise
        outcome = "ok" if status == 200 else "refused"
        await aaudit(
            user,
            f"sequencer.{command}",
            row.id,
            outcome=outcome,
            via="api",
            prefix=row.prefix,
            response=response.get("type"),
        )
        return JsonResponse(response, status=status)

    send.__name__ = f"sequencer_{command}"
    return send


for _command in CommandName:
    router.post(
        f"/sequencer/{{sid}}/{_command}",
        auth=Role("operator"),
        summary=SUMMARIES[_command],
        operation_id=f"sequencer_{_command}",
        openapi_extra=json_body(BODIES[_command], required=True) if _command in BODIES else None,
    )(_command_view(_command))


@router.get("/sequencer/{sid}/query/{run_id}", auth=Role("viewer"), summary="A run's answer now")
def query(request: HttpRequest, sid: str, run_id: str) -> dict[str, Any]:
    return sequencers.query(sequencers.get_sequencer(sid), run_id)


@router.get(
    "/sequencer/{sid}/queryFinal/{run_id}",
    auth=Role("viewer"),
    summary="A run's final answer, waiting up to `timeout` seconds",
)
async def query_final(
    request: HttpRequest, sid: str, run_id: str, timeout: float = 60.0
) -> dict[str, Any]:
    row = await sequencers.aget_sequencer(sid)
    return await sequencers.query_final(row, run_id, timeout)


@router.get(
    "/sequencer/{sid}/events",
    auth=Role("viewer"),
    summary="ndjson: {state, stepList} now, then one line per change",
)
async def events(request: HttpRequest, sid: str) -> StreamingHttpResponse:
    row = await sequencers.aget_sequencer(sid)

    async def lines() -> Any:
        async for event in sequencers.events(row):
            yield json.dumps(event) + "\n"

    response = StreamingHttpResponse(lines(), content_type="application/x-ndjson")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


# -- sequence components -------------------------------------------------------------------


@router.get(
    "/components", auth=Role("viewer"), summary="List sequence components", tags=["components"]
)
def list_components(request: HttpRequest) -> list[dict[str, Any]]:
    return [sequencers.component_json(c) for c in sequencers.list_components()]


@router.post(
    "/components",
    auth=Role("admin"),
    summary="Create a sequence component",
    tags=["components"],
    openapi_extra=json_body(ComponentBody, required=True),
)
def create_component(request: ApiRequest) -> HttpResponse:
    user = request.auth
    body = _json(request.body)
    name = body.get("name") if isinstance(body, dict) else None
    try:
        comp = sequencers.create_component(name)  # type: ignore[arg-type]
    except HubError as exc:
        audit(user, "component.create", str(name), outcome="refused", via="api", error=exc.message)
        raise
    audit(user, "component.create", comp.name, via="api")
    return JsonResponse(sequencers.component_json(comp), status=201)


async def _component_call(request: ApiRequest, name: str, action: str, call: Any) -> HttpResponse:
    user = request.auth
    comp = await sequencers.aget_component(name)
    try:
        response, status = await call(comp, user)
    except HubError as exc:
        await aaudit(
            user, f"component.{action}", name, outcome="refused", via="api", error=exc.message
        )
        raise
    outcome = "ok" if status == 200 else "refused"
    await aaudit(
        user,
        f"component.{action}",
        name,
        outcome=outcome,
        via="api",
        response=response.get("type"),
        msg=response.get("msg"),
    )
    return JsonResponse(response, status=status)


@router.post(
    "/component/{name}/load-script",
    auth=Role("admin"),
    summary="LoadScript: start a sequencer",
    tags=["components"],
    openapi_extra=json_body(LoadScriptBody, required=True),
)
async def load_script(request: ApiRequest, name: str) -> HttpResponse:
    body = await _abody(request)
    if not isinstance(body, dict):
        raise HubError(400, "INVALID_REQUEST", 'body must be {"sequence": id, "prefix": "..."}')

    # Whatever they are: the domain checks them, and the route audits its refusals.
    sequence: Any = body.get("sequence")
    prefix: Any = body.get("prefix")

    async def call(comp: Any, user: Any) -> tuple[dict[str, Any], int]:
        return await sequencers.load_script(comp, sequence, prefix, user)

    return await _component_call(request, name, "load-script", call)


@router.post(
    "/component/{name}/unload-script",
    auth=Role("admin"),
    summary="UnloadScript: shut the sequencer down",
    tags=["components"],
)
async def unload_script(request: ApiRequest, name: str) -> HttpResponse:
    return await _component_call(request, name, "unload-script", sequencers.unload_script)


@router.post(
    "/component/{name}/restart",
    auth=Role("admin"),
    summary="RestartScript: a fresh sequencer",
    tags=["components"],
)
async def restart(request: ApiRequest, name: str) -> HttpResponse:
    return await _component_call(request, name, "restart", sequencers.restart)


@router.get(
    "/component/{name}/status",
    auth=Role("viewer"),
    summary="GetStatus: state and sequencer",
    tags=["components"],
)
def component_status(request: HttpRequest, name: str) -> dict[str, Any]:
    return sequencers.component_json(sequencers.get_component(name))
