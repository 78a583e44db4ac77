"""Searching a whole stream from the console: linear time, bounded, a few at a time.

A stream is stored as numbered chunks of at most 64 KiB, and a line may span thousands of them
(a sequence that printed one 100 MB line). The search reads the chunks once, in order, and looks
at each chunk once: it never joins a line back together, keeps only a bounded window of the
line it is in (the context shown around a match), and carries the last `len(needle) - 1`
characters into the next chunk so that a match across a chunk boundary is found. The needle is
a literal, matched without regard to case as before (`needle.lower() in line.lower()`).

Bounds, so that a viewer cannot slow the other pages down:

- at most `HUB_SEARCH_CONCURRENCY` searches run at once per web process, each on a thread of
  a pool of that size (never the event loop, nor the database threads other requests use); a
  search that finds no free slot within `QUEUE_SECONDS` is refused with 429;
- a search stops after `HUB_SEARCH_SECONDS` (the answer says how far it got) or at
  `MAX_RESULTS` matching lines;
- a matching line is shown as an excerpt of at most `CONTEXT` characters either side of its
  first match, so the answer stays small whatever the line's length;
- each step works on one chunk, so the search thread lets go of the interpreter's lock often
  and the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import threading
import time
import uuid
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection

from sequences.models import StreamChunk

MAX_RESULTS = 500
MAX_NEEDLE = 200  # characters
CONTEXT = 1800  # characters shown before a match, and after it
QUEUE_SECONDS = 1.0  # how long a search waits for a free slot before it is refused
ROWS_PER_FETCH = 32  # chunks of at most 64 KiB each: ~2 MiB in memory at a time


class SearchBusy(Exception):
    """Every search slot of this process stayed taken for QUEUE_SECONDS."""


class BadNeedle(ValueError):
    """The search text cannot be searched for (empty, too long, several lines)."""


def check_needle(needle: str) -> str:
    if not needle:
        raise BadNeedle("say what to search for")
    if len(needle) > MAX_NEEDLE:
        raise BadNeedle(f"the search text is {len(needle)} characters long; at most {MAX_NEEDLE}")
    if "\n" in needle or "\r" in needle:
        raise BadNeedle("the search text must be on one line: lines are searched one by one")
    return needle


@dataclass
class Found:
    number: int  # the line's number, from 1
    text: str  # the line, or an excerpt of it around its first match
    cut_before: bool = False  # the line goes on before the excerpt
    cut_after: bool = False  # and after it


@dataclass
class SearchResult:
    found: list[Found] = field(default_factory=list)
    complete: bool = True  # False: stopped at the time limit before the stream's end
    scanned: int = 0  # bytes read
    seconds: float = 0.0

    @property
    def capped(self) -> bool:
        return len(self.found) >= MAX_RESULTS


def _take_line(found: Found, text: str, at: int, room: int) -> int | None:
    """Add to `found` what of `text` from `at` is still on its line, up to `room` characters:
    None once the line is done (its end seen, or cut at `room`), else the room left, for
    the next piece (a line may go on across pieces)."""
    piece = text[at : at + room + 1]
    end = piece.find("\n")
    if end >= 0:
        found.text += piece[:end]
        return None
    if len(piece) > room:
        found.text += piece[:room]
        found.cut_after = True
        return None
    found.text += piece
    return room - len(piece)


class Scanner:
    """Feeds of a stream's bytes in order; the lines that contain `needle`, found in one pass.

    Work per chunk is linear in the chunk (decode, lower, find, count) plus O(CONTEXT) per
    match, however long the lines are.
    """

    def __init__(self, needle: str, limit: int = MAX_RESULTS, context: int = CONTEXT) -> None:
        self.needle = check_needle(needle).lower()
        self.limit = limit
        self.context = context
        self.found: list[Found] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._number = 1  # the line the stream is in
        self._matched = False  # the current line was reported already
        self._carry = ""  # the last len(needle) - 1 characters, lowered
        self._before = ""  # the current line's last characters before this piece
        self._line_length = 0  # characters of the current line before this piece
        self._open: Found | None = None  # the current line's excerpt, still taking its tail
        self._open_room = 0

    @property
    def full(self) -> bool:
        return len(self.found) >= self.limit

    def feed(self, data: bytes) -> None:
        self._piece(self._decoder.decode(data))

    def finish(self) -> list[Found]:
        self._piece(self._decoder.decode(b"", final=True))
        self._open = None  # the stream's end ends the line
        return self.found

    def _piece(self, text: str) -> None:
        if not text or self.full:
            return
        low = text.lower()
        if len(low) != len(text):
            # A few characters lower to two ("İ"): show the lowered text, so that places in
            # `low` are places in what is shown.
            text = low
        if self._open is not None:
            self._extend_open(text)
        needle, carry = self.needle, self._carry
        buffer = carry + low if carry else low
        shift = len(carry)
        pos = 0
        counted = 0  # newlines of `low` before this index are counted in _number
        line_start: int | None = None  # where the current line starts in `text`, if in it
        while not self.full:
            hit = buffer.find(needle, pos)
            if hit < 0:
                break
            start = hit - shift  # negative: the match began in the carried characters
            at = max(start, 0)
            newlines = low.count("\n", counted, at)
            if newlines:
                self._number += newlines
                self._matched = False
                line_start = low.rfind("\n", counted, at) + 1
            counted = at
            if not self._matched:
                self._matched = True
                self._record(text, start, line_start)
            end = low.find("\n", at)
            if end < 0:
                break  # the rest of this piece is the matched line
            pos = end + 1 + shift
        self._advance(text, low, counted)

    def _record(self, text: str, start: int, line_start: int | None) -> None:
        """A match at `start` of this piece (negative: it began in the carried characters,
        the end of `_before`); `line_start`: where its line begins in this piece, if it does."""
        context = self.context
        match_head = ""
        if line_start is not None:
            head = text[max(line_start, start - context) : start]
            before_match = start - line_start
        elif start >= 0:
            head = text[max(0, start - context) : start]
            if len(head) < context:
                head = (self._before + head)[-context:]
            before_match = self._line_length + start
        else:
            head, match_head = self._before[:start][-context:], self._before[start:]
            before_match = self._line_length + start
        found = Found(self._number, head, cut_before=before_match > len(head))
        self.found.append(found)
        self._tail(found, match_head, text, max(start, 0))

    def _tail(self, found: Found, match_head: str, text: str, at: int) -> None:
        """The match and what follows it on its line, up to `context` characters."""
        room = len(self.needle) + self.context - len(match_head)
        found.text += match_head
        left = _take_line(found, text, at, room)
        if left is not None:
            self._open, self._open_room = found, left

    def _extend_open(self, text: str) -> None:
        found = self._open
        assert found is not None
        left = _take_line(found, text, 0, self._open_room)
        if left is None:
            self._open = None
        else:
            self._open_room = left

    def _advance(self, text: str, low: str, counted: int) -> None:
        """Past this piece: count its remaining lines, keep what the next piece needs."""
        # A match that began in the carried characters shows `context` characters before them.
        keep_before = self.context + len(self.needle)
        newlines = low.count("\n", counted)
        if newlines:
            self._number += newlines
            self._matched = False
            self._open = None
            last = low.rfind("\n") + 1
            self._before = text[max(last, len(text) - keep_before) :]
            self._line_length = len(text) - last
        else:
            self._before = (self._before + text[-keep_before:])[-keep_before:]
            self._line_length += len(text)
        keep = len(self.needle) - 1
        self._carry = (self._carry + low[-keep:])[-keep:] if keep else ""


def stored_chunks(iid: str, stream: str) -> Generator[bytes, None, None]:
    """Every stored chunk of a stream in order, a few at a time.

    On PostgreSQL through a server-side cursor in binary: the ORM's text transfer of bytea
    (hex, twice the bytes, decoded on this side) took four times as long for 100 MB."""
    rows = StreamChunk.objects.filter(instance_id=iid, stream=stream).order_by("seq")
    data_only = rows.values_list("data", flat=True)
    if connection.vendor != "postgresql":
        for data in data_only.iterator(chunk_size=ROWS_PER_FETCH):
            yield bytes(data)
        return
    sql, params = data_only.query.sql_with_params()
    connection.ensure_connection()
    pg = connection.connection
    name = f"hub_search_{uuid.uuid4().hex}"
    with pg.transaction(), pg.cursor(name=name, binary=True) as cursor:
        cursor.itersize = ROWS_PER_FETCH
        cursor.execute(sql, params)
        for (data,) in cursor:
            yield data


def search_stream(
    iid: str, stream: str, needle: str, seconds: float | None = None, limit: int = MAX_RESULTS
) -> SearchResult:
    """The lines of a stored stream that contain `needle`, read chunk by chunk (blocking: call
    it through `search`, which bounds how many run)."""
    budget = settings.HUB_SEARCH_SECONDS if seconds is None else seconds
    began = time.monotonic()
    deadline = began + budget
    scanner = Scanner(needle, limit)
    result = SearchResult()
    with contextlib.closing(stored_chunks(iid, stream)) as chunks:
        for data in chunks:
            scanner.feed(data)
            result.scanned += len(data)
            if scanner.full:
                break
            if time.monotonic() > deadline:
                result.complete = False
                break
    result.found = scanner.finish()
    result.seconds = time.monotonic() - began
    return result


_slots_lock = threading.Lock()
_slots: threading.Semaphore | None = None
_pool: ThreadPoolExecutor | None = None


def _gate() -> tuple[threading.Semaphore, ThreadPoolExecutor]:
    # Made at first use, after the settings are final (tests change them).
    global _slots, _pool
    with _slots_lock:
        if _slots is None or _pool is None:
            size = max(1, int(settings.HUB_SEARCH_CONCURRENCY))
            _slots = threading.Semaphore(size)
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="hub-search")
        return _slots, _pool


def _search_on_thread(iid: str, stream: str, needle: str) -> SearchResult:
    try:
        return search_stream(iid, stream, needle)
    finally:
        connection.close()  # back to the pool: these threads search seldom


async def search(iid: str, stream: str, needle: str) -> SearchResult:
    """`search_stream` on one of this process's search threads, once a slot is free.

    A threading semaphore rather than an asyncio one: it does not belong to an event loop, so
    it holds across the loops a test client makes, and a slot is released by the thread that
    searched even if the request was given up meanwhile. Raises SearchBusy after
    QUEUE_SECONDS without a slot."""
    check_needle(needle)
    slots, pool = _gate()
    waited_until = time.monotonic() + QUEUE_SECONDS
    while not slots.acquire(blocking=False):
        if time.monotonic() >= waited_until:
            raise SearchBusy(
                f"{settings.HUB_SEARCH_CONCURRENCY} searches are running in this web process "
                "(HUB_SEARCH_CONCURRENCY): try again in a moment"
            )
        await asyncio.sleep(0.05)

    def run() -> SearchResult:
        try:
            return _search_on_thread(iid, stream, needle)
        finally:
            slots.release()

    return await asyncio.get_running_loop().run_in_executor(pool, run)
