"""The supervisor's Redis outbox, and the back-pressure that holds children back behind it.

Live writes (stream chunks, events, host log lines, end entries and their expiry) are queued
here and sent in one pipeline per flush, so hundreds of children cost a few round trips, not one
each. Output read from children and not yet in both Redis and the database is counted: above
PAUSE_BYTES the supervisor stops reading children until it is down to half, so a slow Redis
holds them back as a slow database does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

import redis
import redis.asyncio as aredis

from runner.dbwriter import DbWriter
from sequences import live, topics

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

log = logging.getLogger(__name__)

REDIS_MAXLEN = 512  # chunks kept live per stream; older ones are read from the database
ENDED_STREAM_TTL = 600  # seconds an ended instance's live streams stay for late readers
# Stop reading children while this much output waits for Redis or the database. The worker's
# memory follows it: 200 MB streamed through grew the worker by ~200 MiB at 32 MiB, ~72 MiB at
# 8 MiB and ~26 MiB at 4 MiB (copies in the batches, and heap pages that stay mapped), while
# 1M short lines still went through at 1.6M lines/s (bench/README.md).
PAUSE_BYTES = 4 << 20
RESUME_CHECK_SECONDS = 0.05
# While Redis is away (restarting, cut off) what could not be written is held and tried again,
# backing off from RETRY_FIRST to RETRY_CAP seconds, for HOLD_SECONDS; then it is dropped:
# stream chunks and events are in the database (readers read them there), but a topic's chunks,
# end entries (readers end on the database's status instead) and expiries are not.
RETRY_FIRST = 0.1
RETRY_CAP = 2.0
HOLD_SECONDS = 30.0
# At most one pipeline per FLUSH_GAP_S: a line after a quiet spell goes at once, but lines of
# hundreds of children arriving one by one share a round trip instead of paying one each
# (300 instances printing a line a second cost the supervisor ~0.7 ms of CPU a line, most of
# it one pipeline per line: bench/README.md, session 8).
FLUSH_GAP_S = 0.005


class TopicChunk(NamedTuple):
    data: bytes
    kind: str  # the topic's content type, as the producer was granted it


class TopicChunks(NamedTuple):
    kind: str
    data: list[bytes]


Entry: TypeAlias = "dict[FieldT, EncodableT] | TopicChunk | None"


class Outbox:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        redis: aredis.Redis,
        writer: DbWriter,
        set_reading: Callable[[bool], None],
    ) -> None:
        """`set_reading(paused)` pauses (True) or resumes (False) reading every child."""
        self.loop, self.redis, self.writer = loop, redis, writer
        self._set_reading = set_reading
        self.paused = False
        # XADD (key, fields), EXPIRE (key, None) or a topic's chunk (name, TopicChunk), in the
        # order they were queued.
        self._entries: list[tuple[str, Entry]] = []
        self._bytes = 0
        self._flushing = False
        self._away_since: float | None = None
        self._retry_delay = RETRY_FIRST
        self._last_flush = 0.0

    def add(self, key: str, fields: dict[FieldT, EncodableT], size: int = 0) -> None:
        """Queue an XADD of `fields` to the stream `key`; `size`: bytes of a child's output,
        counted until Redis has them (reading children pauses above PAUSE_BYTES)."""
        self._entries.append((key, fields))
        self._bytes += size
        self._schedule_flush()
        if size and not self.paused and self.waiting_bytes() > PAUSE_BYTES:
            self._pause(True)

    def publish(self, topic: str, chunk: bytes, kind: str) -> None:
        """Queue a chunk of a child's output for the topic it publishes to, whose content type
        is `kind` (it is made again with it if deleted meanwhile); counted, as above."""
        self._entries.append((topic, TopicChunk(chunk, kind)))
        self._bytes += len(chunk)
        self._schedule_flush()
        if not self.paused and self.waiting_bytes() > PAUSE_BYTES:
            self._pause(True)

    def expire(self, key: str) -> None:
        """Queue an expiry of `key` after ENDED_STREAM_TTL, behind what was queued before."""
        self._entries.append((key, None))
        self._schedule_flush()

    def waiting_bytes(self) -> int:
        """Output read from children and not yet in both Redis and the database: a slow
        Redis must hold the children back as a slow database does."""
        return self.writer.pending_bytes + self._bytes

    def _schedule_flush(self) -> None:
        if not self._flushing:
            self._flushing = True
            self.loop.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._entries:
                wait = self._last_flush + FLUSH_GAP_S - self.loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._last_flush = self.loop.time()
                batch, self._entries = self._entries, []
                batch_bytes = self._bytes  # counted until Redis has them
                pipe = self.redis.pipeline(transaction=False)
                streamed: dict[str, int] = {}  # bytes per stream name, for /metrics
                moved: list[str] = []  # the streams written, for the webs' fan-out readers
                # A topic's chunks of one flush in one append (their order kept; a topic's
                # end is not written here, so nothing else orders against them).
                published: dict[str, TopicChunks] = {}
                for key, fields in batch:
                    if fields is None:
                        pipe.expire(key, ENDED_STREAM_TTL)
                    elif isinstance(fields, TopicChunk):
                        chunks = published.setdefault(key, TopicChunks(fields.kind, []))
                        chunks.data.append(fields.data)
                    else:
                        pipe.xadd(key, fields, maxlen=REDIS_MAXLEN, approximate=True)
                        moved.append(key)
                        if "s" in fields and isinstance(data := fields.get("d"), bytes):
                            stream = key.rsplit(":", 1)[1]  # stream_key ends with it
                            streamed[stream] = streamed.get(stream, 0) + len(data)
                for name, chunks in published.items():
                    topics.queue_publish(pipe, name, chunks.data, chunks.kind)
                for stream, size in streamed.items():
                    pipe.hincrby(live.stream_bytes_key(), stream, size)
                live.note_moved(pipe, moved)
                try:
                    await pipe.execute()
                except (redis.ConnectionError, redis.TimeoutError):
                    # Redis is away. (A pipeline cut off midway may have written some: sent
                    # again, a reader skips a stream chunk it has by its number.)
                    if self._hold(batch):
                        del batch, pipe
                        await asyncio.sleep(self._retry_delay)
                        self._retry_delay = min(self._retry_delay * 2, RETRY_CAP)
                        continue
                    log.exception("dropped %d live entries: Redis stayed away", len(batch))
                except Exception:
                    log.exception("could not write %d live entries to Redis", len(batch))
                else:
                    if self._away_since is not None:
                        log.warning("Redis back; the live entries held meanwhile are written")
                    self._away_since = None
                    self._retry_delay = RETRY_FIRST
                del batch, pipe
                self._bytes -= batch_bytes
                if self.paused and self.waiting_bytes() < PAUSE_BYTES // 2:
                    self._pause(False)
        finally:
            self._flushing = False
        if self.paused:
            self.loop.call_later(RESUME_CHECK_SECONDS, self._check_resume)

    def _hold(self, batch: list[tuple[str, Entry]]) -> bool:
        """After a failed write: put `batch` back in front, to be tried again, unless Redis has
        been away for HOLD_SECONDS (then it is dropped: the caller logs it)."""
        now = time.monotonic()
        if self._away_since is None:
            self._away_since = now
            log.warning("Redis unavailable; holding live entries for up to %d s", HOLD_SECONDS)
        if now - self._away_since > HOLD_SECONDS:
            self._away_since = now  # hold the next ones again, as long
            return False
        # Their bytes stay counted, so children pause when too much waits.
        self._entries[:0] = batch
        return True

    def _check_resume(self) -> None:
        if self.paused and self.waiting_bytes() < PAUSE_BYTES // 2:
            self._pause(False)
        elif self.paused:
            self.loop.call_later(RESUME_CHECK_SECONDS, self._check_resume)

    def _pause(self, on: bool) -> None:
        self.paused = on
        self._set_reading(on)
        if on:
            self.loop.call_later(RESUME_CHECK_SECONDS, self._check_resume)
