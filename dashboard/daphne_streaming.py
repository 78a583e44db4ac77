"""daphne, taught to stream the request bodies of the routes in `dashboard.streaming.STREAMED`.

daphne's WebRequest starts the application when twisted has received the whole body (twisted
calls `requestReceived`, then `process`). For a streamed route this request starts it when the
headers are in (`gotLength`), sends it each piece of body as twisted decodes it
(`handleContentChunk`), and the end when the body ends (`requestReceived`). daphne's own
`process` still does every check it does (header names and values, path, query string) and
builds the scope; the one message it would send (an empty, complete body) is taken back.

Back-pressure: while more than HIGH_WATER pieces wait for the application, the socket is not
read; twisted reads 64 KiB at a time, so a request holds a few hundred KiB at most here.

If the response ends before the body does (a refusal, or a duplex answer), the connection is
closed after the response rather than kept for another request: the rest of the body would
otherwise be parsed as one.

`install()` puts this class where daphne's HTTPFactory looks for its request class; it runs
from `dashboard.asgi`, which daphne imports before it listens. A daphne release that changes
these hooks breaks the streaming tests (tests/sequences/test_topics_api.py, the live producer;
tests/runner/test_sth_newer_api.py, the duplex /inout), not the buffered routes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from daphne import http_protocol

from dashboard.streaming import HIGH_WATER, LOW_WATER, is_streamed

RESUME_POLL = 0.005  # seconds between looks at a paused request's queue


class StreamingWebRequest(http_protocol.WebRequest):
    streaming = False

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        channel = self.channel
        command, uri = getattr(channel, "_command", b""), getattr(channel, "_path", b"")
        if not is_streamed(command, uri.split(b"?", 1)[0]) or self._refused_by_daphne(uri):
            return
        self.streaming = True
        self.body_ended = False
        self.paused = False
        # What twisted's requestReceived sets, which daphne's process reads.
        self.method, self.uri, self.clientproto = command, uri, channel._version
        self.path = uri.split(b"?", 1)[0]
        self.args: dict[bytes, list[bytes]] = {}
        # Runs to its end now: daphne makes the application without waiting for anything.
        super().process()
        queue = self.application_queue
        if queue is None:
            return  # refused by daphne (bad header, path...): the body will be dropped
        premature = queue.get_nowait()  # process() sent the (empty) body as complete
        if premature != {"type": "http.request", "body": b"", "more_body": False}:
            raise RuntimeError(f"daphne changed: its first message was {premature!r}")

    def _refused_by_daphne(self, uri: bytes) -> bool:
        """Whether daphne's `process` would answer 400 (or hand over to WebSocket): such a
        request is not streamed, so daphne refuses it after the body, as it does any other.
        (Refused here, before twisted has the whole request, the answer would be lost and the
        client would see the connection close without one.)"""
        for name, values in self.requestHeaders.getAllRawHeaders():
            if not http_protocol.HEADER_NAME_RE.fullmatch(name):
                return True
            if any(http_protocol.INVALID_HEADER_VALUE_BYTES.intersection(v) for v in values):
                return True
        if self.requestHeaders.hasHeader(b"Upgrade"):
            return True
        try:
            uri.decode("ascii")
        except UnicodeDecodeError:
            return True
        return False

    def handleContentChunk(self, data: bytes) -> None:
        if self.streaming:
            self._put(data, more=True)
        else:
            super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self.streaming:
            super().requestReceived(command, path, version)
            return
        self.body_ended = True
        self._put(b"", more=False)
        self._resume()

    def _put(self, data: bytes, *, more: bool) -> None:
        queue = self.application_queue
        if queue is None or self.finished or self.channel is None:
            return  # answered already, or gone: the rest of the body is dropped
        queue.put_nowait({"type": "http.request", "body": data, "more_body": more})
        if more and queue.qsize() > HIGH_WATER and not self.paused:
            self.paused = True
            self.channel._networkProducer.pauseProducing()
            self._later(self._maybe_resume)

    def _maybe_resume(self) -> None:
        queue = self.application_queue
        if not self.paused:
            return
        if queue is None or self.finished or self.channel is None or queue.qsize() <= LOW_WATER:
            self._resume()
        else:
            self._later(self._maybe_resume)

    def _resume(self) -> None:
        if self.paused:
            self.paused = False
            if self.channel is not None:
                self.channel._networkProducer.resumeProducing()

    def _later(self, call: Any) -> None:
        # daphne runs twisted on asyncio's loop (its asyncioreactor).
        asyncio.get_event_loop().call_later(RESUME_POLL, call)

    def handle_reply(self, message: dict[str, Any]) -> None:
        if (
            self.streaming
            and not self.body_ended
            and message.get("type") == "http.response.start"
            and self.channel is not None
        ):
            # The answer starts before the body ended: no second request on this connection.
            self.channel.persistent = False
            message = {
                **message,
                "headers": [*message.get("headers", ()), (b"connection", b"close")],
            }
        super().handle_reply(message)

    def finish(self) -> None:
        if self.streaming and not self.body_ended:
            self._resume()  # let twisted see the close rather than a paused socket
        super().finish()


def install() -> None:
    http_protocol.WebRequest = StreamingWebRequest
