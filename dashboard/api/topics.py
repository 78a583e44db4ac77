"""Topic routes, wire-compatible with Scramjet Transform Hub (docs/topics.md)."""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse

from accounts.access import audit
from dashboard.api.auth import ApiRequest, HubRouter, Role
from dashboard.api.bodies import TopicBody, json_body
from dashboard.api.instances import _headers_first, _truthy
from dashboard.streaming import body_chunks
from sequences import topics
from sequences.errors import HubError

router = HubRouter(tags=["topics"])
aaudit = sync_to_async(audit)

TOPIC_TYPES = {
    kind: {"schema": {"type": "string", "format": "binary"}} for kind in topics.CONTENT_TYPES
}
DATA_BODY = {
    "requestBody": {"content": TOPIC_TYPES},
    "parameters": [
        {
            "in": "header",
            "name": "x-end-stream",
            "schema": {"type": "string"},
            "description": "true ends the topic's stream: its readers finish (default false)",
        }
    ],
}
READ_PARAMS = {
    "parameters": [
        {
            "in": "query",
            "name": "from",
            "schema": {"type": "string", "enum": ["start", "now"]},
            "description": "start (default): everything the topic keeps; now: only what comes",
        },
        {
            "in": "query",
            "name": "group",
            "schema": {"type": "string"},
            "description": "readers naming the same group share the chunks (beyond STH)",
        },
    ]
}


@router.get("/topics", auth=Role("viewer"), summary="List topics")
async def list_topics(request: HttpRequest) -> list[dict[str, Any]]:
    return await topics.list_topics()


@router.post(
    "/topics",
    auth=Role("operator"),
    summary="Create a topic: {id, content-type}",
    openapi_extra=json_body(TopicBody, required=True),
)
async def create(request: ApiRequest) -> HttpResponse:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        raise HubError(400, "INVALID_REQUEST", "Could not parse content") from None
    if not isinstance(body, dict) or not body.get("id"):
        raise HubError(400, "INVALID_REQUEST", "Missing body param: id")
    kind = body.get("content-type")
    if not kind or not isinstance(kind, str):
        raise HubError(400, "INVALID_REQUEST", "Missing body param: content-type")
    if kind not in topics.CONTENT_TYPES:  # STH answers a bad type in the body with 400
        raise HubError(400, "UNSUPPORTED_CONTENT_TYPE", "Unsupported content-type")
    topic = await topics.create(topics.check_name(body["id"]), kind)
    await aaudit(request.auth, "topic.create", topic.name, via="api", contentType=kind)
    return JsonResponse(topics.describe(topic))


@router.delete("/topics/{name}", auth=Role("operator"), summary="Delete a topic")
async def delete(request: ApiRequest, name: str) -> dict[str, Any]:
    await topics.delete(name)
    await aaudit(request.auth, "topic.delete", name, via="api")
    return {"message": f"Topic {name} removed"}


@router.post(
    "/topic/{name}",
    auth=Role("operator"),
    summary="Send data to a topic (made if missing; 415 if it holds another type)",
    openapi_extra=DATA_BODY,
)
async def send(request: ApiRequest, name: str) -> HttpResponse:
    topics.check_name(name)
    header = request.headers.get("Content-Type")
    existing = await topics.get(name)
    # STH needs the type; a client that sends none means the topic's own.
    kind = topics.content_type(header, existing.content_type if existing else topics.NDJSON)
    topic = await topics.open_for_writing(name, kind)
    end = _truthy(request.headers.get("x-end-stream"), default=False)
    member = await topics.attach(name, topics.PRODUCER)
    try:
        sent = await topics.publish_body(name, topic.content_type, body_chunks(request), member)
        if end:
            await topics.end(name)
    finally:
        await topics.detach(name, topics.PRODUCER, member)
    await aaudit(request.auth, "topic.send", name, via="api", bytes=sent, end=end)
    return JsonResponse({"accepted": True, "bytes": sent, "end": end})


@router.get(
    "/topic/{name}",
    auth=Role("viewer"),
    summary="Follow a topic (made if missing)",
    openapi_extra=READ_PARAMS,
)
async def follow(request: HttpRequest, name: str) -> StreamingHttpResponse:
    topics.check_name(name)
    since = request.GET.get("from", "start")
    if since not in ("start", "now"):
        raise HubError(400, "INVALID_REQUEST", "from must be start or now")
    # STH reads the type from Content-Type (415 if it is not a topic's); an Accept header
    # that names one counts too, any other (*/*, application/json) means the default.
    accept = (request.headers.get("Accept") or "").split(";")[0].strip().lower()
    default = accept if accept in topics.CONTENT_TYPES else topics.NDJSON
    kind = topics.content_type(request.headers.get("Content-Type"), default)
    group = request.GET.get("group")
    if group is not None and not topics.is_name(group):
        raise HubError(400, "INVALID_REQUEST", f"group must be {topics.NAME_RULE}")
    topic, _ = await topics.ensure(name, kind)
    chunks = topics.read(name, since) if group is None else topics.read_shared(name, group, since)
    response = StreamingHttpResponse(_headers_first(chunks), content_type=topic.content_type)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
