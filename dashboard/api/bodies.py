"""JSON request bodies as Ninja Schemas: what the OpenAPI document shows, and, for the instance
control bodies, what the route parses.

Ninja does not parse these bodies itself (no body parameter in the routes' signatures), for wire
compatibility: Scramjet clients send no body, an empty one, or `[code, {...}]`, with any content
type; an unknown id answers 404 before a bad body answers 400; and the domain keeps the one
validator of a start (`instances.parse_start`: 422 INVALID_CONFIG), of sequencer commands
(`statemachine.Request.parse`, shared with the worker) and of component names, whose refusals
the routes audit. The routes read the body where they did; `parse` then gives the answer Ninja
gives a body it parsed (400 INVALID_REQUEST naming each bad field).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import pydantic
from ninja import Field, Schema
from ninja.errors import ValidationError
from pydantic.json_schema import SkipJsonSchema

from core.protocol import Message
from sequences.instances import MIN_PIDS

S = TypeVar("S", bound=Schema)


def parse(model: type[S], data: Any) -> S:
    """`data` (a JSON value) as `model`; a bad one raises what Ninja raises for its own bodies."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ValidationError([dict(e) for e in exc.errors(include_url=False)]) from None


def json_body(model: type[Schema], *, required: bool = False) -> dict[str, Any]:
    """`openapi_extra` describing a JSON body of `model` (a control body also in its Scramjet
    0.26 form `[code, {...}]`)."""
    schema = _inline(model.model_json_schema())
    if issubclass(model, ControlBody):
        form = {"type": "array", "prefixItems": [{"const": model.code}, schema], "items": False}
        schema = {"oneOf": [schema, form]}
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": required, "content": content}}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its `$defs` put in place: the document's components do not hold them,
    so a `#/$defs/...` reference would point nowhere."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


# -- instances (Scramjet Transform Hub) ----------------------------------------------------
# Field names are the wire's, camelCase as Scramjet's clients send them.


# Described only, as are the sequencer bodies below (see the module's docstring). A docstring
# here would show in the document: comments only. `SkipJsonSchema[None]`: left out, not null.
class Limits(Schema):
    memory: int | SkipJsonSchema[None] = Field(None, description="MB, a whole number")
    cpu: float | SkipJsonSchema[None] = Field(None, description="CPUs")
    pids: int | SkipJsonSchema[None] = Field(
        None, description=f"processes and threads, at least {MIN_PIDS}"
    )
    gpu: bool = False


class Placement(Schema):
    labels: list[str] = Field([], description="labels every one of which the worker must have")
    worker: str | SkipJsonSchema[None] = Field(None, description="the worker's name")


class Restart(Schema):
    # sequences/restart_policy.py decides; docs/api.md and docs/operations.md say when.
    policy: Literal["never", "on-failure", "always"] = "never"
    max: int = Field(3, ge=0, le=100, description="restarts in a row, at most")
    backoff: float = Field(1, ge=0, le=300, description="seconds before the first, doubling")


class StartBody(Schema):
    appConfig: dict[str, Any] = {}
    args: list[Any] = []
    instanceId: str | SkipJsonSchema[None] = None
    limits: Limits | SkipJsonSchema[None] = None
    outputTopic: str | SkipJsonSchema[None] = Field(None, description="publish output there")
    inputTopic: str | SkipJsonSchema[None] = Field(None, description="read input from there")
    placement: Placement | SkipJsonSchema[None] = Field(
        None, description="which workers may run it (HUB_WORKER_LABELS, worker names)"
    )
    restart: Restart | SkipJsonSchema[None] = None


class ControlBody(Schema):
    """An instance control body: `{...}`, or `[code, {...}]` from Scramjet 0.26 clients."""

    code: ClassVar[int]


class StopBody(ControlBody):
    code = Message.STOP
    timeout: float = Field(7000, ge=0, strict=True, description="milliseconds before the kill")
    canCallKeepalive: bool = Field(False, strict=True)


class KillBody(ControlBody):
    code = Message.KILL
    # Any value, taken for its truth: the hub has never refused one here.
    removeImmediately: Annotated[bool, pydantic.BeforeValidator(bool)] = False


class EventBody(ControlBody):
    code = Message.EVENT
    eventName: str = Field(min_length=1, strict=True)
    message: Any = None


# -- topics (described only: the route answers as STH does, 400 naming a missing field) ------


class TopicBody(Schema):
    id: str = Field(description="the topic's name: letters, digits, '_', '+' or '-'")
    content_type: str = Field(
        alias="content-type",
        description="application/x-ndjson, text/x-ndjson, text/plain or application/octet-stream",
    )


# -- sequencers and components (described only: see the module's docstring) ----------------


class Step(Schema):
    type: Literal["Setup", "Observe"]
    command: str
    params: dict[str, Any] = {}


class CommandsBody(Schema):
    commands: list[Step]


class IdAndCommandsBody(Schema):
    id: str
    commands: list[Step]


class IdBody(Schema):
    id: str


class DiagnosticBody(Schema):
    startTime: datetime
    hint: str = ""


class ComponentBody(Schema):
    name: str


class LoadScriptBody(Schema):
    sequence: str
    prefix: str


# -- workers (described only: the domain parses it, after the worker's 404) ------------------


class DrainBody(Schema):
    deadline: float = Field(
        300, ge=0, description="seconds its instances may still run before they are stopped"
    )
