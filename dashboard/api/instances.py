"""Instance routes, wire-compatible with Scramjet Transform Hub."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.core.exceptions import RequestAborted
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse

from accounts.access import actor_name, audit, audit_soon
from core.protocol import STREAMS
from dashboard.api.auth import ApiRequest, HubRouter, Role
from dashboard.api.bodies import (
    ControlBody,
    EventBody,
    KillBody,
    StartBody,
    StopBody,
    json_body,
    parse,
)
from dashboard.streaming import body_chunks, check_declared_length
from sequences import instances, streams
from sequences.errors import HubError
from sequences.models import Instance

router = HubRouter(tags=["instances"])
log = logging.getLogger(__name__)
aaudit = sync_to_async(audit)
KILL_AUDIT_WAIT = 3.0  # s the kill routes wait for the end, to audit the outcome

# Raw bytes, not JSON: forwarded to the instance as they come, with their content type.
RAW_BODY = {
    "requestBody": {
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "text/plain": {"schema": {"type": "string"}},
        }
    },
    "parameters": [
        {
            "in": "header",
            "name": "x-end-stream",
            "schema": {"type": "string"},
            "description": "true (default) closes the stream after this body",
        }
    ],
}
TEXT_STREAM = "text/plain; charset=utf-8"


def _body(request: HttpRequest) -> bytes:
    return request.body


C = TypeVar("C", bound=ControlBody)


async def _control_body(request: HttpRequest, model: type[C]) -> C:
    """The body as `model`; Scramjet's clients send none, `{...}` or `[code, {...}]`."""
    raw = await sync_to_async(_body)(request)
    return parse(model, instances.parse_control_body(raw, model.code))


@router.post(
    "/sequence/{seq_id}/start",
    auth=Role("operator"),
    summary="Start an instance",
    openapi_extra=json_body(StartBody),
)
async def start(request: ApiRequest, seq_id: str) -> HttpResponse:
    user = request.auth
    # The ASGI handler has read the body already (into memory for a body this small).
    req = instances.parse_start(request.body)
    try:
        instance = await instances.start(seq_id, req, user)
    except HubError as exc:
        if exc.code != "NOT_FOUND":
            error = exc.message
            audit_soon(user, "instance.start", seq_id, outcome="refused", via="api", error=error)
        raise
    # Batched with the other starts' entries, after the answer: one insert per start would
    # wait for the database lock just when the worker records the start.
    audit_soon(
        user, "instance.start", instance.id, via="api", sequence=instance.sequence_id, args=req.args
    )
    return JsonResponse({"id": instance.id, "message": f"Sequence {instance.id} starting"})


@router.get("/instances", auth=Role("viewer"), summary="List instances")
def list_instances(request: HttpRequest) -> list[dict[str, Any]]:
    return [instances.info(i) for i in instances.list_instances()]


@router.get("/instance/{iid}", auth=Role("viewer"), summary="Instance info")
def get_instance(request: HttpRequest, iid: str) -> dict[str, Any]:
    return instances.info(instances.get_reported(iid))


async def _headers_first(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    # An empty first chunk makes the server send the status and headers now: a client of a
    # quiet instance learns at once that the stream is open instead of waiting for output.
    yield b""
    async for chunk in chunks:
        yield chunk


def _stream_response(
    iid: str, stream: str, is_live: bool | None = None, cursor: int = 0
) -> StreamingHttpResponse:
    chunks = streams.follow(iid, stream, cursor, live_hint=is_live)
    return _live_response(_headers_first(chunks))


def _live_response(chunks: AsyncIterator[bytes]) -> StreamingHttpResponse:
    """A text stream sent as it comes: no caching, no buffering by a proxy in between."""
    response = StreamingHttpResponse(chunks, content_type=TEXT_STREAM)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


for _name in STREAMS:

    def _make(stream: str) -> Any:
        async def read_stream(request: HttpRequest, iid: str) -> StreamingHttpResponse:
            instance = await instances.aget_instance(iid)
            return _stream_response(iid, stream, instance.is_live)

        read_stream.__name__ = f"read_{stream}"
        return read_stream

    router.get(
        f"/instance/{{iid}}/{_name}",
        auth=Role("viewer"),
        summary=f"Follow the {_name} stream (everything from the start, then live)",
        operation_id=f"instance_{_name}",
    )(_make(_name))


@router.get(
    "/instance/{iid}/health", auth=Role("viewer"), summary="Health: healthy, pid, memory, cpu"
)
async def health(request: HttpRequest, iid: str) -> dict[str, Any]:
    return await instances.health(await instances.aget_instance(iid))


def _truthy(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


async def _send_body(
    request: ApiRequest, instance: Instance, stream: str, action: str
) -> tuple[int, bool]:
    """Sends the request body to the instance's `stream` (input or stdin) as it arrives and
    audits it as `action`: (bytes sent, whether the stream was ended). Call check_input
    first."""
    end = _truthy(request.headers.get("x-end-stream"), default=True)
    ctype = (request.headers.get("Content-Type") or "text/plain").split(";")[0].strip()
    size = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal size
        async for piece in body_chunks(request, declared_limit=True):
            size += len(piece)
            yield piece

    try:
        await instances.send_input_stream(instance, stream, counted(), ctype, end)
    except BaseException:
        # A body cut short (the client went away, the answer ended): what got through.
        audit_soon(request.auth, action, instance.id, via="api", bytes=size, end=False)
        raise
    await aaudit(request.auth, action, instance.id, via="api", bytes=size, end=end)
    return size, end


async def _downstream(request: ApiRequest, iid: str, stream: str) -> HttpResponse:
    instance = await instances.aget_reported(iid)
    check_declared_length(request)
    instances.check_input(instance, stream)
    size, end = await _send_body(request, instance, stream, f"instance.{stream}")
    return JsonResponse({"accepted": True, "bytes": size, "end": end}, status=200 if end else 202)


@router.post(
    "/instance/{iid}/input",
    auth=Role("operator"),
    summary="Send to the sequence's input",
    openapi_extra=RAW_BODY,
)
async def send_input(request: ApiRequest, iid: str) -> HttpResponse:
    return await _downstream(request, iid, "input")


@router.post(
    "/instance/{iid}/inout",
    auth=Role("operator"),
    summary="Send the body to the input; answer with the output produced from now on",
    openapi_extra=RAW_BODY,
)
async def inout(request: ApiRequest, iid: str) -> StreamingHttpResponse:
    instance = await instances.aget_reported(iid)
    check_declared_length(request)
    instances.check_input(instance, "input")
    # Where the output is before the input goes in: what the sequence answers to this body
    # comes after it, however fast it answers.
    cursor = await streams.next_chunk(iid, "output")
    output = streams.follow(iid, "output", cursor, live_hint=True)
    return _live_response(_duplex(_send_body(request, instance, "input", "instance.inout"), output))


async def _duplex(sending: Awaitable[Any], output: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The output while the body goes to the input (STH's duplex /inout): the body is sent
    by a task of its own, so a client that has not ended its body still gets its answers."""
    sender = asyncio.ensure_future(sending)
    sender.add_done_callback(_log_failure)
    try:
        yield b""  # the status and headers now
        async for chunk in output:
            yield chunk
    finally:
        sender.cancel()  # the answer ended (the instance did) or the client went away


def _log_failure(task: asyncio.Future[Any]) -> None:
    exc = None if task.cancelled() else task.exception()
    if exc is not None and not isinstance(exc, RequestAborted):
        log.warning("/inout: sending the body failed: %r", exc)


@router.post(
    "/instance/{iid}/restart",
    auth=Role("operator"),
    summary="Start the same sequence with the same args and appConfig, as a new instance",
)
async def restart(request: ApiRequest, iid: str) -> HttpResponse:
    user = request.auth
    try:
        instance = await instances.restart(iid, user, by=actor_name(user))
    except HubError as exc:
        if exc.code != "NOT_FOUND":
            await aaudit(
                user, "instance.restart", iid, outcome="refused", via="api", error=exc.message
            )
        raise
    await aaudit(user, "instance.restart", iid, via="api", instance=instance.id)
    return JsonResponse(
        {"id": instance.id, "message": f"Sequence {instance.id} starting", "restartedFrom": iid}
    )


@router.post(
    "/instance/{iid}/stdin",
    auth=Role("operator"),
    summary="Send to the process stdin",
    openapi_extra=RAW_BODY,
)
async def send_stdin(request: ApiRequest, iid: str) -> HttpResponse:
    return await _downstream(request, iid, "stdin")


@router.post(
    "/instance/{iid}/_event",
    auth=Role("operator"),
    summary="Send an event into the sequence",
    openapi_extra=json_body(EventBody),
)
async def send_event(request: ApiRequest, iid: str) -> HttpResponse:
    instance = await instances.aget_reported(iid)
    body = await _control_body(request, EventBody)
    await instances.send_event(instance, body.eventName, body.message)
    await aaudit(request.auth, "instance.event", iid, via="api", event=body.eventName)
    return JsonResponse({"accepted": True}, status=202)


@router.post(
    "/instance/{iid}/_stop",
    auth=Role("operator"),
    summary="Stop: stop handlers, wait, then kill",
    openapi_extra=json_body(StopBody),
)
async def stop(request: ApiRequest, iid: str) -> HttpResponse:
    instance = await instances.aget_reported(iid)
    body = await _control_body(request, StopBody)
    timeout_ms = int(min(body.timeout, 3_600_000))
    instance = await instances.stop(
        instance, timeout_ms, body.canCallKeepalive, by=actor_name(request.auth)
    )
    # The audit entry says how it ended (or its status, when it outlived the timeout).
    ended = instance.outcome or instance.status
    await aaudit(request.auth, "instance.stop", iid, via="api", timeout=body.timeout, ended=ended)
    return JsonResponse(instances.info(instance), status=202)


@router.post(
    "/instance/{iid}/_kill",
    auth=Role("operator"),
    summary="Kill the whole process tree at once",
    openapi_extra=json_body(KillBody),
)
async def kill(request: ApiRequest, iid: str) -> HttpResponse:
    instance = await instances.aget_reported(iid)
    body = await _control_body(request, KillBody)
    await instances.kill(instance, body.removeImmediately, by=actor_name(request.auth))
    # A kill ends it in milliseconds: wait that long, so the audit entry says the outcome.
    ended = await instances.outcome_after(iid, KILL_AUDIT_WAIT)
    await aaudit(
        request.auth,
        "instance.kill",
        iid,
        via="api",
        removeImmediately=body.removeImmediately,
        ended=ended,
    )
    return JsonResponse(instances.info(instance), status=202)


@router.get(
    "/instance/{iid}/event/{name}",
    auth=Role("viewer"),
    summary="Last event of that name, or the next one",
)
async def get_event(request: HttpRequest, iid: str, name: str) -> HttpResponse:
    await instances.aget_instance(iid)
    found, message = await streams.last_event(iid, name)
    if not found:
        found, message = await _first_in_live_stream(iid, name)
    if not found:
        raise HubError(404, "NOT_FOUND", f"no event '{name}': the instance ended")
    return JsonResponse(message, safe=False)


async def _first_in_live_stream(iid: str, name: str) -> tuple[bool, Any]:
    """After a miss on the last-event lookup, the first such event in the live stream. Read
    from the stream's start, not from "now": an event emitted while the lookup ran (the
    answer to an event just sent, say) is in the stream but was not in the lookup, and a
    reader starting from "now" would wait for another one forever."""
    async for message in streams.events(iid, name, since="0-0"):
        return True, message
    return False, None


@router.get(
    "/instance/{iid}/once/{name}",
    auth=Role("viewer"),
    summary="Wait for the next event of that name",
)
async def once(request: HttpRequest, iid: str, name: str) -> HttpResponse:
    await instances.aget_instance(iid)
    found, message = await streams.next_event(iid, name)
    if not found:
        raise HubError(404, "NOT_FOUND", f"no event '{name}': the instance ended")
    return JsonResponse(message, safe=False)


@router.get(
    "/instance/{iid}/events/{name}", auth=Role("viewer"), summary="Events of that name as ndjson"
)
async def event_stream(request: HttpRequest, iid: str, name: str) -> StreamingHttpResponse:
    await instances.aget_instance(iid)

    async def lines() -> Any:
        async for message in streams.events(iid, name):
            yield json.dumps(message) + "\n"

    return StreamingHttpResponse(lines(), content_type="application/x-ndjson")


@router.get("/log", auth=Role("viewer"), summary="The hub's own log (endless)")
async def host_log(request: HttpRequest) -> StreamingHttpResponse:
    return _live_response(_headers_first(streams.host_log()))
