"""A served request leaves no reference cycle behind: what it made is freed when it ends.

Per-request cycles are not a leak (the collector frees them) but they are what the web's
collections spend their time on: at a thousand requests a second they held the event loop, and
every followed line, for a tenth of a second each (bench/README.md, session 10). The requests
here go through the web's own ASGI handlers, as daphne drives them: the body, then, once the
response has been written, the client's disconnect.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from django.core.handlers.asgi import ASGIRequest

from dashboard.api_handler import ApiHandler, PagesHandler

pytestmark = pytest.mark.django_db(transaction=True)


async def serve(handler: Any, path: str) -> int:
    answered = asyncio.Event()
    messages = [{"type": "http.request", "body": b"", "more_body": False}]
    status = 0

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await answered.wait()  # daphne: the disconnect comes once the response is written
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif not message.get("more_body"):
            answered.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    await handler(scope, receive, send)
    return status


def garbage_of(handler: Any, path: str, times: int = 5) -> list[Any]:
    """What the collector finds unreachable after `times` requests to `path`."""

    async def run() -> list[int]:
        return [await serve(handler, path) for _ in range(times)]

    gc.collect()
    gc.disable()
    try:
        statuses = asyncio.run(run())
        assert all(200 <= s < 500 for s in statuses), statuses  # served, not crashed
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    return found


def test_an_api_request_leaves_no_cycle_holding_it():
    """The API is the hot path (starts, stream reads, health checks). Until the handler's
    disconnect listener stopped raising (dashboard/streaming.py), each request was held in a
    cycle through the exception's traceback, with ~90 objects hanging off it."""
    app = ApiHandler()
    garbage_of(app, "/api/v1/version", times=1)  # first use: caches, lazy imports
    garbage = garbage_of(app, "/api/v1/version")
    requests = [o for o in garbage if isinstance(o, ASGIRequest)]
    assert requests == [], f"{len(requests)} of 5 requests were freed only by the collector"
    assert len(garbage) < 100, f"5 requests left {len(garbage)} objects to the collector"


def test_a_page_request_is_served_as_before():
    """Pages keep Django's own cycles (the messages storage, htmx's details and the forms each
    hold the request): fewer requests, left as they are. What this checks is that ending the
    disconnect listener without raising changed nothing in how a page is served."""
    assert asyncio.run(serve(PagesHandler(), "/login/")) == 200
