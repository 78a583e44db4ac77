"""The one exception the client raises, and how HTTP answers become it."""

from __future__ import annotations

import json
from typing import Any

# Scramjet's api-client maps statuses to these names; the hub's own codes take precedence.
STATUS_CODES: dict[int, str] = {
    400: "BAD_PARAMETERS",
    401: "NEED_AUTHENTICATION",
    403: "NOT_AUTHORIZED",
    404: "NOT_FOUND",
    409: "CONFLICT",
    410: "GONE",
    422: "UNPROCESSABLE_ENTITY",
    507: "INSUFFICIENT_RESOURCES",
}
CANNOT_CONNECT = "CANNOT_CONNECT"
CONNECTION_LOST = "CONNECTION_LOST"


def code_for_status(status: int) -> str:
    """The Scramjet-style code for an HTTP status with no code of the server's own."""
    if status in STATUS_CODES:
        return STATUS_CODES[status]
    return "SERVER_ERROR" if status >= 500 else "REQUEST_ERROR"


class HubClientError(Exception):
    """A failed call: the hub refused it, or could not be reached.

    Attributes:
        status: the HTTP status, or 0 when no answer came (connection failure).
        code: the server's machine-readable code (`INVALID_CONFIG`, `SEQUENCE_IN_USE`, ...),
            else one mapped from the status (`NOT_FOUND`, ...), or `CANNOT_CONNECT`.
        message: the server's sentence for people.
        body: the parsed JSON body of the answer, when it had one (sequencer commands answer
            typed bodies such as `{"type": "Unhandled", "state": ..., "msg": ...}`).
    """

    def __init__(self, status: int, code: str, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.body = body

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status else "no answer"
        return f"{self.message} ({self.code}, {where})"

    def as_json(self) -> dict[str, Any]:
        """The error as the CLI prints it with `--json`."""
        return {"error": self.message, "code": self.code, "status": self.status}


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return value
    # STH 0.18 answered {"error": {"code": "PRERUNNER_ERROR", "data": "..."}}.
    if isinstance(value, dict):
        for key in ("message", "data", "msg"):
            if isinstance(value.get(key), str):
                return value[key]
    return json.dumps(value)


def error_from_answer(status: int, raw: bytes, reason: str = "") -> HubClientError:
    """Build the error for a non-2xx answer from its status and raw body."""
    body: Any = None
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError:
        body = None
    code = code_for_status(status)
    message = ""
    if isinstance(body, dict):
        if isinstance(body.get("code"), str) and body["code"]:
            code = body["code"]
        if body.get("error") not in (None, ""):
            message = _describe(body["error"])
        elif isinstance(body.get("msg"), str):
            message = body["msg"]
        elif isinstance(body.get("type"), str):
            message = body["type"]
    elif body is None and raw.strip():
        message = raw.decode("utf-8", "replace").strip()[:500]
    if not message:
        message = reason or f"request failed with HTTP {status}"
    return HubClientError(status, code, message, body)
