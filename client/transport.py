"""HTTP under the clients: one described request (`Call`), run sync or async over httpx.

Every client method builds a `Call`; the sync and async clients only differ in which transport
runs it, so the wire format is written once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx

from client.errors import CANNOT_CONNECT, CONNECTION_LOST, HubClientError, error_from_answer

DEFAULT_URL = "http://127.0.0.1:8000/api/v1"
DEFAULT_TIMEOUT = 120.0
CONNECT_TIMEOUT = 10.0
# A marker for "this call may wait as long as it takes" (streams, next event, queryFinal).
WAIT = -1.0
# A resumable stream whose connection broke is asked for again, backing off from RESUME_FIRST
# to RESUME_CAP seconds, until the hub has failed to answer for RESUME_FOR seconds.
RESUME_FIRST = 0.25
RESUME_CAP = 2.0
RESUME_FOR = 60.0
# Answers that a restarting hub (or the proxy before it) gives for a moment.
RESUME_STATUSES = (502, 503, 504)

Body = bytes | str | Iterable[bytes] | AsyncIterable[bytes]


@dataclass
class Call:
    """One request: method, path under the API base, body, headers and how to read the answer.

    `timeout` is the read timeout in seconds (`WAIT` for none, None for the client's default);
    `answer` says whether the answer is JSON or ignored.
    """

    method: str
    path: str
    json: Any = None
    content: Body | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    answer: Literal["json", "none"] = "json"
    # A stream the hub sends from its start every time it is asked (an instance's stdout,
    # stderr, output, log): after a broken connection it is asked again and what was already
    # given is skipped, so the reader sees no gap and no repeat.
    resume: bool = False

    def body_kwargs(self) -> dict[str, Any]:
        if self.content is not None:
            return {"content": self.content}
        if self.json is not None:
            # Sent as bytes with an explicit type: STH requires it on every JSON operation.
            self.headers.setdefault("Content-Type", "application/json")
            return {"content": json.dumps(self.json).encode()}
        return {}


def seg(value: str) -> str:
    """One path segment, escaped (ids are safe; prefixes and event names may not be)."""
    return quote(str(value), safe="")


def api_base(url: str) -> str:
    """The API base for a hub address: `http://host:8000` becomes `http://host:8000/api/v1`;
    an address with a path (as Scramjet's `apiUrl`) is used as given."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if urlsplit(url).path in ("", "/"):
        url += "/api/v1"
    return url


def _timeout(call: Call, default: float) -> httpx.Timeout:
    read: float | None = default if call.timeout is None else call.timeout
    if read is not None and read < 0:
        read = None
    return httpx.Timeout(read, connect=CONNECT_TIMEOUT)


def _request(call: Call, base: str, timeout: float) -> dict[str, Any]:
    """httpx's request arguments for a call, for the sync and async transports alike."""
    return {
        "method": call.method,
        "url": base + call.path,
        "params": call.params or None,
        "headers": call.headers,
        "timeout": _timeout(call, timeout),
        **call.body_kwargs(),
    }


def _no_answer(exc: httpx.HTTPError, base: str) -> HubClientError:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return HubClientError(0, CANNOT_CONNECT, f"cannot connect to {base}: {exc}")
    if isinstance(exc, httpx.TimeoutException):
        return HubClientError(0, CONNECTION_LOST, f"the hub did not answer in time: {exc!r}")
    return HubClientError(0, CONNECTION_LOST, f"the connection to {base} failed: {exc!r}")


def _decode(call: Call, response: httpx.Response) -> Any:
    """The answer of a call, read in full: decoded, or raised as HubClientError if refused."""
    if response.status_code >= 400:
        raise error_from_answer(response.status_code, response.content, response.reason_phrase)
    if call.answer == "none" or not response.content.strip():
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


class _Resume:
    """The state of a resumable stream: bytes given so far, and how long the hub has failed."""

    def __init__(self, call: Call, base: str) -> None:
        self.call, self.base = call, base
        self.given = 0
        self.skip = 0
        self.connected = False
        self.failing_since: float | None = None
        self.delay = RESUME_FIRST

    def opened(self, response: httpx.Response) -> bool:
        """Whether to read this answer (a refusal: the caller raises it), or else wait and ask
        again: a restarting hub, or the proxy before it, answers 502-504 for a moment."""
        if response.status_code >= 400:
            resuming = self.connected and self.call.resume
            return not (resuming and response.status_code in RESUME_STATUSES)
        self.connected = True
        self.skip = self.given
        return True

    def fresh(self, chunk: bytes) -> bytes:
        """What of `chunk` the reader has not had yet."""
        if self.skip:
            cut = min(self.skip, len(chunk))
            self.skip -= cut
            chunk = chunk[cut:]
        if chunk:
            self.given += len(chunk)
            self.failing_since = None
            self.delay = RESUME_FIRST
        return chunk

    def broken(self, exc: httpx.HTTPError | None) -> float:
        """The pause before asking again, or the error to raise: a stream that cannot resume,
        one never opened (the hub is not there: say so at once), or the hub gone too long."""
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        if exc is not None and (not self.call.resume or not self.connected):
            raise _no_answer(exc, self.base) from None
        if now - self.failing_since > RESUME_FOR:
            if exc is None:
                raise HubClientError(0, CONNECTION_LOST, f"{self.base} kept failing to answer")
            raise _no_answer(exc, self.base) from None
        delay = self.delay
        self.delay = min(self.delay * 2, RESUME_CAP)
        return delay


def _headers(token: str | None) -> dict[str, str]:
    headers = {"User-Agent": "sequence-hub-client/0.1", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


class Transport:
    """Runs calls against one hub with httpx, synchronously."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.Client | None = None,
    ) -> None:
        self.base = api_base(url)
        self.token = token
        self.timeout = timeout
        self.http = http or httpx.Client(headers=_headers(token))

    def call(self, call: Call) -> Any:
        """Run a call and return its decoded answer, or raise HubClientError."""
        try:
            response = self.http.request(**_request(call, self.base, self.timeout))
        except httpx.HTTPError as exc:
            raise _no_answer(exc, self.base) from None
        return _decode(call, response)

    def stream(self, call: Call) -> Iterator[bytes]:
        """Run a GET whose answer is a stream; yield its chunks as they arrive. A resumable
        one (`Call.resume`) survives the hub's web restarting: see `_Resume`."""
        state = _Resume(call, self.base)
        while True:
            try:
                with self.http.stream(**_request(call, self.base, self.timeout)) as response:
                    if state.opened(response):
                        if response.status_code >= 400:
                            raise error_from_answer(
                                response.status_code, response.read(), response.reason_phrase
                            )
                        for chunk in response.iter_bytes():
                            if chunk := state.fresh(chunk):
                                yield chunk
                        return
                pause = state.broken(None)
            except httpx.HTTPError as exc:
                pause = state.broken(exc)
            time.sleep(pause)

    def close(self) -> None:
        self.http.close()


class AsyncTransport:
    """Runs calls against one hub with httpx, asynchronously."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base = api_base(url)
        self.token = token
        self.timeout = timeout
        self.http = http or httpx.AsyncClient(headers=_headers(token))

    async def call(self, call: Call) -> Any:
        """Run a call and return its decoded answer, or raise HubClientError."""
        try:
            response = await self.http.request(**_request(call, self.base, self.timeout))
        except httpx.HTTPError as exc:
            raise _no_answer(exc, self.base) from None
        return _decode(call, response)

    async def stream(self, call: Call) -> AsyncIterator[bytes]:
        """Run a GET whose answer is a stream; yield its chunks as they arrive. A resumable
        one (`Call.resume`) survives the hub's web restarting: see `_Resume`."""
        state = _Resume(call, self.base)
        while True:
            try:
                async with self.http.stream(**_request(call, self.base, self.timeout)) as response:
                    if state.opened(response):
                        if response.status_code >= 400:
                            raise error_from_answer(
                                response.status_code,
                                await response.aread(),
                                response.reason_phrase,
                            )
                        async for chunk in response.aiter_bytes():
                            if chunk := state.fresh(chunk):
                                yield chunk
                        return
                pause = state.broken(None)
            except httpx.HTTPError as exc:
                pause = state.broken(exc)
            await asyncio.sleep(pause)

    async def aclose(self) -> None:
        await self.http.aclose()
