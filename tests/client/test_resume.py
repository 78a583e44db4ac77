"""An instance's stream resumes after a broken connection, without a gap or a repeat; other
streams, refusals and a hub that never answered do not resume. (The drill with a real web
restart is tests/faults/test_restart_drills.py; these pin the rules on a mock hub.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from client import HubClientError
from client import transport as transport_module
from client.transport import AsyncTransport, Call, Transport

TEXT = b"".join(b"line %d\n" % n for n in range(1, 41))


class Broken(httpx.SyncByteStream, httpx.AsyncByteStream):
    """The stream's body in pieces of `size`, cut off after `upto` bytes (a web restarting)."""

    def __init__(self, upto: int | None, size: int = 7) -> None:
        self.upto, self.size = upto, size

    def _pieces(self) -> Iterator[bytes]:
        end = len(TEXT) if self.upto is None else self.upto
        for at in range(0, end, self.size):
            yield TEXT[at : min(at + self.size, end)]
        if self.upto is not None:
            raise httpx.RemoteProtocolError("peer closed connection (incomplete chunked read)")

    def __iter__(self) -> Iterator[bytes]:
        yield from self._pieces()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._pieces():
            yield piece


class Hub:
    """Answers in turn from `answers`: a status, or "cut:N" (200, cut off after N bytes)."""

    def __init__(self, *answers: int | str) -> None:
        self.answers = list(answers)
        self.asked = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.asked += 1
        answer = self.answers.pop(0) if self.answers else 200
        if answer == "refused":
            raise httpx.ConnectError("connection refused")
        if isinstance(answer, str):
            return httpx.Response(200, stream=Broken(int(answer.split(":")[1])))
        if answer != 200:
            return httpx.Response(answer, json={"error": "no", "code": "X"})
        return httpx.Response(200, stream=Broken(None))


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_module, "RESUME_FIRST", 0.001)
    monkeypatch.setattr(transport_module, "RESUME_CAP", 0.002)


def read(hub: Hub, call: Call) -> bytes:
    http = httpx.Client(transport=httpx.MockTransport(hub))
    return b"".join(Transport("http://hub", http=http).stream(call))


def aread(hub: Hub, call: Call) -> bytes:
    async def main() -> bytes:
        http = httpx.AsyncClient(transport=httpx.MockTransport(hub))
        return b"".join([c async for c in AsyncTransport("http://hub", http=http).stream(call)])

    return asyncio.run(main())


@pytest.mark.parametrize("reader", [read, aread])
def test_a_broken_stream_resumes_where_it_was(reader) -> None:
    # Cut twice, mid-line, then a restarting web's 503 and a refused connection in between.
    hub = Hub("cut:45", 503, "refused", "cut:100", 200)
    assert reader(hub, Call("GET", "/instance/i1/stdout", resume=True)) == TEXT
    assert hub.asked == 5


@pytest.mark.parametrize("reader", [read, aread])
def test_what_does_not_resume(reader) -> None:
    # A stream that is not an instance's (the host log, events, topics) breaks.
    with pytest.raises(HubClientError, match="connection"):
        reader(Hub("cut:45"), Call("GET", "/log"))
    # A refusal is an answer, not a restart.
    with pytest.raises(HubClientError) as refused:
        reader(Hub("cut:45", 404), Call("GET", "/instance/i1/stdout", resume=True))
    assert refused.value.status == 404
    # A hub that never answered is not there: said at once.
    hub = Hub("refused")
    with pytest.raises(HubClientError, match="cannot connect"):
        reader(hub, Call("GET", "/instance/i1/stdout", resume=True))
    assert hub.asked == 1


def test_a_hub_gone_too_long_ends_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_module, "RESUME_FOR", 0.05)
    hub = Hub("cut:45", *["refused"] * 10_000)
    with pytest.raises(HubClientError, match="connection"):
        read(hub, Call("GET", "/instance/i1/stdout", resume=True))


def test_the_instance_streams_resume() -> None:
    from client.sync import HostClient

    inst = HostClient("http://hub").get_instance_client("i1")
    for name in ("stdout", "stderr", "output", "log"):
        assert inst._stream(name).resume
    assert not inst._event_stream("tick").resume
