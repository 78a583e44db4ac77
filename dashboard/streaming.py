"""Request bodies that stream: a few API routes read their body while it arrives.

Three layers read a whole body before a view runs, and each is changed here for the routes in
`STREAMED`, and for them alone:

- daphne (twisted.web) calls the application only once the body is complete.
  `StreamingWebRequest` starts the application as soon as the headers are in and hands it each
  piece of the body as it comes, pausing the socket while the application has more than a few
  pieces unread (back-pressure: what the hub holds per request stays bounded).
- Django's ASGIHandler reads the body into a file before it builds the request.
  `StreamingBodyMixin.handle` builds the request with an empty body and attaches a `LiveBody`
  reading the ASGI receive channel, then runs the same middleware, URL resolution, Ninja
  route, `Role` check (token, session with CSRF, anonymous role) and audit as any request.
- The view reads `body_chunks(request)`: the live body when there is one, else `request.body`.

Everything about access stays in the route: only where the body's bytes come from changes.
A path that matches here but not a route, or a route that these patterns miss, only loses the
streaming: the body is then read whole, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted, RequestDataTooBig
from django.core.handlers.asgi import get_script_prefix
from django.http import HttpRequest
from django.urls import set_script_prefix

STREAMED = re.compile(r"/api/v1/(topic/[^/]+|instance/[^/]+/(input|stdin|inout))/?")
PIECE = 64 * 1024  # what body_chunks yields at most at once, from a buffered body
# Body messages a streaming request may have waiting for the application before daphne stops
# reading the socket, and the count at which it reads again. Twisted reads 64 KiB at a time.
HIGH_WATER = 4
LOW_WATER = 1


def is_streamed(method: str | bytes, path: str | bytes) -> bool:
    if isinstance(method, bytes):
        method = method.decode("latin-1")
    if isinstance(path, bytes):
        path = path.decode("latin-1")
    return method.upper() == "POST" and STREAMED.fullmatch(path) is not None


class LiveBody:
    """A request body read from the ASGI receive channel piece by piece."""

    def __init__(self, receive: Any) -> None:
        self._receive = receive
        self.done = asyncio.Event()  # the body ended, or the view stopped reading it
        self.aborted = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while not self.done.is_set():
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    self.aborted = True
                    raise RequestAborted
                if not message.get("more_body", False):
                    self.done.set()
                if message.get("body"):
                    yield message["body"]
        finally:
            # A view that stops early (a refusal, an error) hands the channel to the watcher.
            self.done.set()

    async def wait_disconnect(self) -> None:
        """Once the body is read (or the view gave up on it), wait for the client to go."""
        await self.done.wait()
        if self.aborted:
            return  # returns rather than raises: see listen_for_disconnect below
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return
            # The rest of a body the view did not read: dropped, as daphne closes the
            # connection after such a response (StreamingWebRequest).


async def body_chunks(request: HttpRequest, declared_limit: bool = False) -> AsyncIterator[bytes]:
    """The request body in pieces as it arrives (streamed routes under daphne), else the
    body Django read, in pieces of at most 64 KiB.

    `declared_limit`: refuse a body whose Content-Length is over DATA_UPLOAD_MAX_MEMORY_SIZE
    as `request.body` does (RequestDataTooBig), whether it streams or not: the routes that
    read `request.body` before streaming keep their limit. Without it, as a route that read
    the body's stream, there is none."""
    live: LiveBody | None = getattr(request, "live_body", None)
    if live is None:
        if declared_limit:
            raw = await sync_to_async(lambda: request.body)()
        else:
            raw = await sync_to_async(request.read)()
        for start in range(0, len(raw), PIECE):
            yield raw[start : start + PIECE]
        return
    if declared_limit:
        check_declared_length(request)
    async for piece in live:
        yield piece


def check_declared_length(request: HttpRequest) -> None:
    """What `request.body` refuses before reading: a Content-Length over
    DATA_UPLOAD_MAX_MEMORY_SIZE (RequestDataTooBig, answered as Django answers it)."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is not None and int(request.META.get("CONTENT_LENGTH") or 0) > limit:
        raise RequestDataTooBig("Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE.")


class StreamingBodyMixin:
    """For an ASGIHandler: requests in `STREAMED` run with a live body; the rest as Django
    runs them. `handle` below is Django 5.2's ASGIHandler.handle with the body read lazily."""

    async def listen_for_disconnect(self, receive: Any) -> None:
        """Django's, ending on the client's disconnect rather than raising RequestAborted.

        daphne sends the disconnect as soon as a response has been written, so nearly every
        request ended with this task holding that exception; `handle` took it with
        `task.result()`, which adds handle's own frame to its traceback, and that frame holds
        the task: a reference cycle per request, keeping the request, its response, its
        database connection wrapper and all they reach (~170 objects) alive until the next
        collection. At a thousand requests a second those collections held the event loop, and
        every followed line, for a tenth of a second (bench/README.md, session 10). Returning
        ends the task all the same, which is all `handle` waits for.
        """
        message = await receive()
        if message["type"] != "http.disconnect":
            raise AssertionError(f"Invalid ASGI message after request body: {message['type']}")

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not (scope["type"] == "http" and is_streamed(scope["method"], scope["path"])):
            await super().handle(scope, receive, send)  # type: ignore[misc]
            return
        handler: Any = self
        body = LiveBody(receive)
        set_script_prefix(get_script_prefix(scope))
        await signals.request_started.asend(sender=self.__class__, scope=scope)
        request, error_response = handler.create_request(scope, io.BytesIO())
        if request is None:
            await handler.send_response(error_response, send)
            await sync_to_async(error_response.close)()
            return
        request.live_body = body

        async def process_request() -> Any:
            response = await handler.run_get_response(request)
            # The client may go away while the response is sent.
            with contextlib.suppress(asyncio.CancelledError):
                await handler.send_response(response, send)
            return response

        tasks = [
            asyncio.create_task(body.wait_disconnect()),
            asyncio.create_task(process_request()),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                with contextlib.suppress(RequestAborted):
                    task.result()
            else:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, RequestAborted):
                    await task
        try:
            response = tasks[1].result()
        except (asyncio.CancelledError, RequestAborted):
            await signals.request_finished.asend(sender=self.__class__)
        else:
            await sync_to_async(response.close)()
