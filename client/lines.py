"""Turning a stream of byte chunks into lines or JSON values (chunks split lines anywhere)."""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any


class _Splitter:
    """Decodes utf-8 across chunk borders and cuts complete lines off the front."""

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.pending = ""

    def feed(self, chunk: bytes) -> list[str]:
        text = self.pending + self.decoder.decode(chunk)
        *lines, self.pending = text.split("\n")
        return [line.removesuffix("\r") for line in lines]

    def finish(self) -> list[str]:
        rest = self.pending + self.decoder.decode(b"", final=True)
        self.pending = ""
        return [rest.removesuffix("\r")] if rest else []


def iter_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Lines of text (without their newline) as soon as each is complete; a last line with no
    newline comes out when the stream ends."""
    splitter = _Splitter()
    for chunk in chunks:
        yield from splitter.feed(chunk)
    yield from splitter.finish()


async def aiter_lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """The async twin of `iter_lines`."""
    splitter = _Splitter()
    async for chunk in chunks:
        for line in splitter.feed(chunk):
            yield line
    for line in splitter.finish():
        yield line


def iter_json(chunks: Iterable[bytes]) -> Iterator[Any]:
    """Values of an ndjson stream; blank lines (keep-alives) are skipped."""
    for line in iter_lines(chunks):
        if line.strip():
            yield json.loads(line)


async def aiter_json(chunks: AsyncIterable[bytes]) -> AsyncIterator[Any]:
    """The async twin of `iter_json`."""
    async for line in aiter_lines(chunks):
        if line.strip():
            yield json.loads(line)
