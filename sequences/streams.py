"""Reading instance streams: everything from the start (database), then live (Redis).

A reader attaching at any time gets every chunk in order exactly once, then follows until the
instance ends. Chunks are numbered per stream; the database holds all of them (written in
batches), Redis holds the newest few hundred. Where Redis has moved on past what the database
has written yet, the reader waits for the database to catch up.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import redis
from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError

from core.db_threads import db_call
from sequences import fanout, live
from sequences.models import LIVE_STATUSES, Instance, InstanceEvent, StreamChunk

DB_BATCH = 256
BLOCK_MS = 2000
# A live stream's reader asks the database whether the instance still runs only after this
# much silence: the end normally arrives as an eof entry in the stream itself.
FOLLOW_BLOCK_MS = 10_000
REDIS_BATCH = 200
# A reader that lost Redis retries after this long, doubling up to the cap, while the
# instance runs; meanwhile it reads what the database has.
REDIS_RETRY_FIRST = 0.25
REDIS_RETRY_CAP = 2.0
# A reader whose database read fails because the database is away (restarting) waits for it,
# backing off to the cap, this long at most before its stream breaks.
DB_WAIT = 120.0
# A blocking read (XREAD BLOCK) that has not answered this long after its block ended finds
# Redis frozen or cut off: the reader treats it as gone (retries, reads the database).
READ_GRACE = 3.0
# What a reader counts as "Redis is away": refused, reset, or silent past its deadline.
REDIS_AWAY = (redis.ConnectionError, redis.TimeoutError)
T = TypeVar("T")


async def blocking_read(call: Awaitable[T], block_ms: int) -> T:
    """`call`, a blocking read of `block_ms`, given up READ_GRACE seconds after the block
    would have ended (redis.TimeoutError): a frozen or partitioned Redis accepts the command
    and never answers. (Cancelling it drops its connection, which no other command shares.)"""
    try:
        return await asyncio.wait_for(call, block_ms / 1000 + READ_GRACE)
    except TimeoutError:
        raise redis.TimeoutError("Redis did not answer a blocking read in time") from None


class Backoff:
    """Waits between tries while Redis is away: REDIS_RETRY_FIRST, doubling to the cap."""

    def __init__(self) -> None:
        self.delay = REDIS_RETRY_FIRST

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, REDIS_RETRY_CAP)

    def reset(self) -> None:
        self.delay = REDIS_RETRY_FIRST


def _db_chunks(iid: str, stream: str, start: int, stop: int | None) -> list[tuple[int, bytes]]:
    rows = StreamChunk.objects.filter(instance_id=iid, stream=stream, seq__gte=start)
    if stop is not None:
        rows = rows.filter(seq__lt=stop)
    return [(s, bytes(d)) for s, d in rows.order_by("seq").values_list("seq", "data")[:DB_BATCH]]


def _is_live(iid: str) -> bool:
    return Instance.objects.filter(pk=iid, status__in=LIVE_STATUSES).exists()


async def _db_read(fn: Callable[..., T], *args: Any) -> T:
    """A database read of a reader that follows a stream: while the database is away it waits
    (up to DB_WAIT) rather than break a stream whose chunks will all be there once it is back."""
    delay = REDIS_RETRY_FIRST
    deadline = time.monotonic() + DB_WAIT
    while True:
        try:
            return await db_call(fn, *args)
        except (InterfaceError, OperationalError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, REDIS_RETRY_CAP)


async def adb_chunks(
    iid: str, stream: str, start: int, stop: int | None
) -> list[tuple[int, bytes]]:
    return await _db_read(_db_chunks, iid, stream, start, stop)


async def ais_live(iid: str) -> bool:
    return await _db_read(_is_live, iid)


async def follow(
    iid: str,
    stream: str,
    cursor: int = 0,
    follow_live: bool = True,
    live_hint: bool | None = None,
) -> AsyncIterator[bytes]:
    """Chunks of one stream from chunk number `cursor` on, following until the end.

    `live_hint`: whether the caller just saw the instance live (saves a query). A live
    instance is read from Redis first: its stream holds the newest chunks in order, and any
    older ones it no longer holds come from the database as a gap (`_fill_gap`), so a reader
    of a fresh instance never waits for the database writer.
    """
    still_live = live_hint if live_hint is not None else await ais_live(iid)
    if still_live and follow_live:
        async for data in _follow_redis(iid, stream, cursor):
            yield data
        return
    # Ended: the database has everything.
    async for _seq, data in _db_from(iid, stream, cursor):
        yield data


async def next_chunk(iid: str, stream: str) -> int:
    """The number the next chunk of the stream will get: where a reader "from now" starts
    (`follow(iid, stream, cursor=next_chunk(...))`)."""
    key = live.stream_key(iid, stream)
    try:
        newest = live.range_entries(await live.async_client().xrevrange(key, count=1))
    except REDIS_AWAY:
        # Redis is away: the database's count. It may lag the live stream by a batch, so a
        # reader "from now" may also get the last chunks written before: none is skipped.
        newest = []
    for _entry_id, fields in newest:
        if b"s" in fields:
            return int(fields[b"s"]) + 1
        if b"n" in fields and live.is_end(key, fields):  # the end, with the count of chunks
            return int(fields[b"n"])
    return await _db_read(_db_chunk_count, iid, stream)


def _db_chunk_count(iid: str, stream: str) -> int:
    last = (
        StreamChunk.objects.filter(instance_id=iid, stream=stream)
        .order_by("-seq")
        .values_list("seq", flat=True)
        .first()
    )
    return 0 if last is None else last + 1


async def _follow_redis(iid: str, stream: str, cursor: int) -> AsyncIterator[bytes]:
    # One reader per process reads every followed stream (sequences/fanout.py): a follower
    # costs no connection and no round trip of its own.
    key = live.stream_key(iid, stream)
    last_id: str | bytes = "0-0"
    delay = REDIS_RETRY_FIRST
    sub: fanout.Subscription | None = None
    try:
        while True:
            try:
                if sub is None:
                    sub = fanout.subscribe(key, last_id)
                entries = await sub.get(FOLLOW_BLOCK_MS / 1000)
            except REDIS_AWAY:
                sub = None  # the reader closed it
                # Redis is away. The database has every chunk, written in order: give what it
                # has from the cursor on, and end if the row said "ended" before we read (then
                # the database had everything). Otherwise wait, longer each time, and try Redis
                # again.
                ended = not await ais_live(iid)
                async for seq, data in _db_from(iid, stream, cursor):
                    yield data
                    cursor = seq + 1
                if ended:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, REDIS_RETRY_CAP)
                # A restarted Redis holds a new stream whose entry ids may be below the last
                # one read: read it from the start; entries before the cursor are skipped by
                # number.
                last_id = "0-0"
                continue
            delay = REDIS_RETRY_FIRST
            if not entries:
                # Silence: the end always comes as an eof entry (the worker's, or
                # detect_lost's for a dead worker), so the database is asked only now and
                # then. (An eof entry written while Redis was away is lost: this is how such a
                # reader ends.)
                if not await ais_live(iid):
                    async for data in _rest_from_database(iid, stream, cursor, None):
                        yield data
                    return
                continue
            for entry_id, fields in entries:
                last_id = entry_id
                if b"eof" in fields:
                    if not live.is_end(key, fields):
                        continue  # not the hub's: a forged end must not cut a reader off
                    total = int(fields[b"n"]) if b"n" in fields else None
                    async for data in _rest_from_database(iid, stream, cursor, total):
                        yield data
                    return
                seq = int(fields[b"s"])
                if seq < cursor:
                    continue
                if seq > cursor:
                    async for data in _fill_gap(iid, stream, cursor, seq):
                        yield data
                    cursor = seq
                yield fields[b"d"]
                cursor = seq + 1
    finally:
        if sub is not None:
            sub.close()


async def _db_from(iid: str, stream: str, cursor: int) -> AsyncIterator[tuple[int, bytes]]:
    """(number, chunk) pairs the database holds from `cursor` on, up to the first missing one."""
    while True:
        rows = await adb_chunks(iid, stream, cursor, None)
        before = cursor
        for seq, data in rows:
            if seq != cursor:
                return
            yield seq, data
            cursor += 1
        if len(rows) < DB_BATCH or cursor == before:
            return


async def _rest_from_database(
    iid: str, stream: str, cursor: int, total: int | None
) -> AsyncIterator[bytes]:
    """After the end: the chunks from `cursor` on. With the count the worker wrote in its eof
    entry, wait for the database writer to store them all; without it, read what is there."""
    if total is not None:
        async for data in _fill_gap(iid, stream, cursor, total):
            yield data
        return
    async for data in follow(iid, stream, cursor, follow_live=False, live_hint=False):
        yield data


async def _fill_gap(iid: str, stream: str, start: int, stop: int) -> AsyncIterator[bytes]:
    """Chunks Redis no longer holds: the database writer has them or will shortly."""
    cursor = start
    waited = 0.0
    while cursor < stop:
        rows = await adb_chunks(iid, stream, cursor, stop)
        progressed = False
        for seq, data in rows:
            if seq != cursor:
                break
            yield data
            cursor += 1
            progressed = True
        if not progressed:
            if waited > 30:
                raise RuntimeError(f"chunks {cursor}..{stop} of {iid}/{stream} never arrived")
            await asyncio.sleep(0.02)
            waited += 0.02


# -- events -------------------------------------------------------------------------------


def _last_event(iid: str, name: str) -> tuple[bool, Any]:
    # One query: with two (the row, then "exists"), a row written in between read as
    # found with a None message.
    rows = list(
        InstanceEvent.objects.filter(instance_id=iid, direction="out", name=name)
        .order_by("-id")
        .values_list("message", flat=True)[:1]
    )
    return (True, rows[0]) if rows else (False, None)


alast_event = sync_to_async(_last_event)


async def last_event(iid: str, name: str) -> tuple[bool, Any]:
    try:
        raw = live.as_bytes(await live.async_client().hget(live.last_events_key(iid), name))
    except REDIS_AWAY:
        raw = None  # the database keeps every event
    if raw is not None:
        return True, json.loads(raw)
    return await alast_event(iid, name)


def _events_out(iid: str) -> int:
    return InstanceEvent.objects.filter(instance_id=iid, direction="out").count()


async def events(iid: str, name: str, since: str = "$") -> AsyncIterator[Any]:
    """Messages of the named event emitted from now on, until the instance ends.

    While Redis is away the reader retries, backing off, and ends if the instance ends. It
    keeps its place: each entry carries its number among the instance's events (the worker's),
    so entries written again (what a pipeline cut off midway had sent) are skipped, and a reader
    that asked "from now" while Redis was away takes the database's count as its "now": what
    the worker's outbox held through the outage and writes to the restarted Redis comes in one
    batch, older events first, and those emitted before the reader asked are skipped by number.
    (The database's count may lag the worker's by its last batch: such a reader may get an
    event emitted just before it asked, never miss one after.) Events a restart took before
    this reader read them are not seen; `last_event` finds them in the database."""
    client = live.async_client()
    key = live.events_key(iid)
    last_id: str | bytes | None = None if since == "$" else since
    next_number = 0  # entries numbered below it are before the reader's "now" or already read
    backoff = Backoff()
    while True:
        try:
            if last_id is None:
                info = await client.xinfo_stream(key) if await client.exists(key) else None
                last_id = info["last-generated-id"].decode() if info else "0-0"
            reply = await blocking_read(
                client.xread({key: last_id}, count=100, block=BLOCK_MS), BLOCK_MS
            )
        except REDIS_AWAY:
            if last_id is None:
                # "Now" cannot be read from Redis: the number of events emitted so far can,
                # from the database; the restarted stream is then read from its start.
                next_number = await _db_read(_events_out, iid)
                last_id = "0-0"
            elif next_number:
                # A restarted Redis's stream may hold ids below the last one read (another
                # clock): read it from its start, skipping by number what was read.
                last_id = "0-0"
            if not await ais_live(iid):
                return
            await backoff.wait()
            continue
        backoff.reset()
        if not reply:
            if not await ais_live(iid):
                return
            continue
        for entry_id, fields in live.read_entries(reply):
            last_id = entry_id
            if b"i" in fields:  # (entries of a worker from before the numbers have none)
                number = int(fields[b"i"])
                if number < next_number:
                    continue
                next_number = number + 1
            if fields.get(b"n", b"").decode() == name:
                yield json.loads(fields[b"m"])


async def next_event(iid: str, name: str) -> tuple[bool, Any]:
    async for message in events(iid, name):
        return True, message
    return False, None


HOST_LOG_BLOCK_MS = 15_000


async def host_log(backlog: int = 100) -> AsyncIterator[bytes]:
    """The hub's own log: the last lines, then new ones as they come (endless). While Redis is
    away it yields nothing (b"", which keeps the response open) and retries, backing off; the
    lines logged meanwhile are lost with it, the ones after come."""
    client = live.async_client()
    key = live.host_log_key()
    last_id: str | bytes | None = None
    backoff = Backoff()
    while True:
        try:
            if last_id is None:
                recent = live.range_entries(await client.xrevrange(key, count=backlog))
                for _entry_id, fields in reversed(recent):
                    yield fields[b"d"]
                last_id = recent[0][0] if recent else await _host_log_end(client)
            reply = await blocking_read(
                client.xread({key: last_id}, count=200, block=HOST_LOG_BLOCK_MS),
                HOST_LOG_BLOCK_MS,
            )
        except REDIS_AWAY:
            yield b""
            await backoff.wait()
            continue
        backoff.reset()
        if not reply:
            yield b""
            continue
        for entry_id, fields in live.read_entries(reply):
            last_id = entry_id
            yield fields[b"d"]


async def _host_log_end(client: Any) -> str | bytes:
    key = live.host_log_key()
    if not await client.exists(key):
        return "0-0"
    info = await client.xinfo_stream(key)
    return info["last-generated-id"] if info else "0-0"
