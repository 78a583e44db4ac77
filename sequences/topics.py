"""Topics: named data streams between sequences and clients (STH's topics; docs/topics.md).

A topic is a Redis stream `hub:topic:<name>` of chunks `{d: bytes}` and a hash of its metadata
(content type, created, origin, totals, the id of its last end). Producers append; each consumer
reads with its own cursor, so every consumer reads everything, a slow one holds no producer
back, and one that comes late reads what the topic still keeps: chunks younger than
HUB_TOPIC_RETENTION, at most HUB_TOPIC_MAX_CHUNKS of them. Producers and consumers register in
sorted sets scored by when the registration lapses, so a crashed one stops counting by itself.

The web (the /topic routes) and the worker (a sequence's output and input) both call these;
names are checked here before any key is made of them, and nothing read back from Redis is used
unchecked: a content type must be one of CONTENT_TYPES, an end entry must carry the hub's MAC.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import redis.asyncio as aredis
from django.conf import settings
from redis.exceptions import RedisError, ResponseError

from sequences import live
from sequences.errors import HubError
from sequences.streams import REDIS_AWAY, Backoff, blocking_read

if TYPE_CHECKING:
    from redis.typing import XReadResponse

# STH's topic names (TopicId.validate) without the backslash it lets through, and bounded.
MAX_NAME = 128
NAME_RE = re.compile(rf"[A-Za-z0-9_+-]{{1,{MAX_NAME}}}")
NDJSON = "application/x-ndjson"
CONTENT_TYPES = (NDJSON, "text/x-ndjson", "text/plain", "application/octet-stream")
DEFAULT_CONTENT_TYPE = NDJSON  # STH's, for a topic a reader creates without saying
CHUNK = 64 * 1024
PEER_TTL = 60.0  # seconds a registration lasts unless refreshed
PEER_REFRESH = 20.0
BLOCK_MS = 5000
GONE_CHECK_SECONDS = 2.0  # a reader of a topic that keeps receiving looks this often if it is gone
READ_BATCH = 200
SHARED_BATCH = 16  # a group's readers take few chunks at a time, so the work spreads
PRODUCER, CONSUMER = "producers", "consumers"

# Metadata without a type (left by counters a delete raced with) counts as no topic.
_CREATE = """
local kind = redis.call('HGET', KEYS[1], 'type')
if kind then return kind end
redis.call('HSET', KEYS[1], 'type', ARGV[1], 'created', ARGV[2], 'origin', ARGV[3],
           'chunks', 0, 'bytes', 0)
redis.call('SADD', KEYS[2], ARGV[4])
return false
"""


@dataclass
class Topic:
    name: str
    content_type: str
    created: float
    origin: str


NAME_RULE = f"1 to {MAX_NAME} letters, digits, '_', '+' or '-'"


def check_name(name: Any) -> str:
    """The name, or 400 INVALID_TOPIC: only STH's characters, so a key made of it is a topic's."""
    if not is_name(name):
        raise HubError(400, "INVALID_TOPIC", f"Topic id incorrect format: {NAME_RULE}")
    return cast(str, name)


def is_name(name: Any) -> bool:
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def content_type(value: str | None, default: str = DEFAULT_CONTENT_TYPE) -> str:
    """A Content-Type header as one of CONTENT_TYPES (parameters dropped), or 415."""
    if not value or not value.strip():
        return default
    kind = value.split(";")[0].strip().lower()
    if kind not in CONTENT_TYPES:
        raise HubError(
            415,
            "UNSUPPORTED_CONTENT_TYPE",
            f"Unsupported content-type {kind!r}: one of {', '.join(CONTENT_TYPES)}",
        )
    return kind


def _decoded(meta: dict[bytes, bytes], name: str) -> Topic | None:
    kind = meta.get(b"type", b"").decode("latin-1")
    if kind not in CONTENT_TYPES:
        return None  # not written by the hub: no topic
    try:
        created = float(meta.get(b"created", b"0"))
    except ValueError:
        created = 0.0
    origin = meta.get(b"origin", b"").decode("utf-8", "replace")[:200]
    return Topic(name, kind, created, origin)


async def get(name: str, client: aredis.Redis | None = None) -> Topic | None:
    client = client or live.async_client()
    meta = cast("live.Fields", await client.hgetall(live.topic_meta_key(check_name(name))))
    return _decoded(meta, name) if meta else None


async def ensure(
    name: str, kind: str, origin: str = "api", client: aredis.Redis | None = None
) -> tuple[Topic, bool]:
    """The topic, made with content type `kind` if missing; (topic, whether it was made)."""
    client = client or live.async_client()
    check_name(name)
    now = time.time()
    script = client.register_script(_CREATE)
    existing = await script(
        keys=[live.topic_meta_key(name), live.topics_key()], args=[kind, repr(now), origin, name]
    )
    if existing is None:
        return Topic(name, kind, now, origin), True
    topic = await get(name, client)
    if topic is None:  # deleted in between, or its metadata is not the hub's: make it again
        await client.delete(live.topic_meta_key(name))
        return await ensure(name, kind, origin, client)
    return topic, False


async def create(name: str, kind: str, origin: str = "api") -> Topic:
    """POST /topics: a new topic; 400 if one of that name exists (as STH answers)."""
    topic, made = await ensure(name, kind, origin)
    if not made:
        raise HubError(400, "TOPIC_EXISTS", "Topic with given id already exist")
    return topic


async def open_for_writing(name: str, kind: str, origin: str = "api") -> Topic:
    """The topic a producer sends `kind` to, made if missing; 415 when it holds another type."""
    topic, _ = await ensure(name, kind, origin)
    if topic.content_type != kind:
        raise HubError(
            415,
            "UNSUPPORTED_CONTENT_TYPE",
            f"Acceptable Content-Type for {name} is {topic.content_type}",
        )
    return topic


async def delete(name: str) -> None:
    """Remove the topic and what it holds; 404 if there is none. Readers following it end
    (they see its metadata gone); a producer still sending makes it again."""
    client = live.async_client()
    check_name(name)
    pipe = client.pipeline(transaction=True)
    pipe.exists(live.topic_meta_key(name))
    pipe.delete(
        live.topic_meta_key(name),
        live.topic_key(name),
        live.topic_peers_key(name, PRODUCER),
        live.topic_peers_key(name, CONSUMER),
    )
    pipe.srem(live.topics_key(), name)
    existed, *_ = await pipe.execute()
    if not existed:
        raise HubError(404, "NOT_FOUND", f"Topic {name} not found")


async def list_topics() -> list[dict[str, Any]]:
    """Every topic with its totals (chunks and bytes ever sent: a rate is their change over
    time), what it keeps now (length) and its live producers and consumers; STH's fields
    (`topic`, `topicName`, `contentType`) first."""
    client = live.async_client()
    names = await _names(client)
    if not names:
        return []
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(live.topic_meta_key(name))
        pipe.xlen(live.topic_key(name))
        for role in (PRODUCER, CONSUMER):
            pipe.zcount(live.topic_peers_key(name, role), now, "+inf")
    replies = await pipe.execute()
    found = []
    for i, name in enumerate(names):
        meta, length, producers, consumers = replies[i * 4 : i * 4 + 4]
        topic = _decoded(meta, name) if meta else None
        if topic is None:
            continue
        found.append(
            {
                "topic": name,
                "topicName": name,
                "contentType": topic.content_type,
                "localProvider": topic.origin,
                "created": topic.created,
                "length": int(length),
                "chunks": _int(meta.get(b"chunks")),
                "bytes": _int(meta.get(b"bytes")),
                "producers": int(producers),
                "consumers": int(consumers),
            }
        )
    return found


async def _names(client: aredis.Redis) -> list[str]:
    return _valid_names(cast("set[bytes]", await client.smembers(live.topics_key())))


def _valid_names(members: set[bytes]) -> list[str]:
    """The topics' names, sorted; only well-formed ones make keys."""
    return sorted(n for n in (m.decode("utf-8", "replace") for m in members) if is_name(n))


def _int(value: bytes | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def describe(topic: Topic) -> dict[str, Any]:
    """STH's answer to POST /topics."""
    return {
        "id": topic.name,
        "origin": {"type": "hub", "id": topic.origin},
        "state": "flowing",
        "contentType": topic.content_type,
    }


# -- writing ---------------------------------------------------------------------------------


class LineAligner:
    """Cuts a producer's bytes at line ends for line-based topics, so that chunks of several
    producers interleave between lines, never inside one. Raw bytes pass as they come."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.by_lines = kind != "application/octet-stream"
        self._rest = b""

    def feed(self, data: bytes) -> bytes:
        """The part of what came so far that ends with a whole line (all of it for raw)."""
        if not self.by_lines:
            return data
        data = self._rest + data
        cut = data.rfind(b"\n") + 1
        # A line longer than a chunk goes out as it is rather than grow without bound.
        if cut == 0 and len(data) < CHUNK:
            self._rest = data
            return b""
        if cut == 0:
            cut = len(data)
        self._rest = data[cut:]
        return data[:cut]

    def rest(self) -> bytes:
        """What is left when the producer ends: a last line without its newline."""
        rest, self._rest = self._rest, b""
        return rest


def _trim_id() -> str:
    """Entries older than the retention time have ids below this one."""
    return f"{int((time.time() - settings.HUB_TOPIC_RETENTION) * 1000)}-0"


def queue_publish(pipe: Any, name: str, chunks: list[bytes], kind: str) -> None:
    """Queue on `pipe` the commands that append `chunks` to the topic (trimmed by size, then
    by age) and count them: one place for the web and the worker.

    A topic deleted while its producer sends is made again with the producer's type `kind`
    (HSETNX: a topic that exists keeps its own), listed, and new to readers that followed the
    deleted one (its `created` changes), so they end."""
    key, meta = live.topic_key(name), live.topic_meta_key(name)
    pipe.hsetnx(meta, "type", kind)
    pipe.hsetnx(meta, "created", repr(time.time()))
    pipe.hsetnx(meta, "origin", "producer")
    pipe.sadd(live.topics_key(), name)
    for chunk in chunks:
        pipe.xadd(key, {"d": chunk}, maxlen=settings.HUB_TOPIC_MAX_CHUNKS, approximate=True)
    pipe.xtrim(key, minid=_trim_id(), approximate=True)
    pipe.hincrby(meta, "chunks", len(chunks))
    pipe.hincrby(meta, "bytes", sum(len(c) for c in chunks))


async def publish(
    name: str,
    chunks: list[bytes],
    kind: str = DEFAULT_CONTENT_TYPE,
    client: aredis.Redis | None = None,
) -> None:
    if not chunks:
        return
    pipe = (client or live.async_client()).pipeline(transaction=False)
    queue_publish(pipe, name, chunks, kind)
    await pipe.execute()


async def publish_body(
    name: str, kind: str, body: AsyncIterable[bytes], member: str | None = None
) -> int:
    """Send what a client POSTs to the topic as it arrives, cut at line ends; the bytes sent.

    Each piece is published when it comes, so readers get a line while the request is still
    open. What is held here is one piece and the unfinished line (at most 64 KiB). `member`,
    the producer's registration, is refreshed while the body lasts."""
    aligner = LineAligner(kind)
    sent = 0
    refreshed = time.monotonic()
    async for data in body:
        batch: list[bytes] = []
        for start in range(0, len(data), CHUNK):
            chunk = aligner.feed(data[start : start + CHUNK])
            if chunk:
                batch.append(chunk)
                sent += len(chunk)
        await publish(name, batch, kind)
        if member and time.monotonic() - refreshed > PEER_REFRESH:
            await refresh(name, PRODUCER, member)
            refreshed = time.monotonic()
    rest = aligner.rest()
    if rest:
        await publish(name, [rest], kind)
        sent += len(rest)
    return sent


async def end(name: str, client: aredis.Redis | None = None) -> None:
    """End the topic's current stream: readers that reach this entry finish, and a reader that
    starts later begins after it (what is sent next is a new stream)."""
    client = client or live.async_client()
    key = live.topic_key(name)
    previous = await _ended(client, name)
    entry_id = await client.xadd(key, live.sign_end(key, {"eof": 1, "at": repr(time.time())}))
    await client.hset(
        live.topic_meta_key(name), mapping={"ended": entry_id, "ended_before": previous or b""}
    )


# -- reading ---------------------------------------------------------------------------------


async def _start_id(client: aredis.Redis, name: str, since: str) -> bytes | str:
    """Where a reader begins: after the newest chunk ("now"), or at the start of the topic's
    current stream ("start"): after its last end when something was sent since, else the
    stream that end closed (from the end before it), so a reader that comes after a producer
    sent and ended reads what was sent, then ends, as a reader of a file would."""
    key = live.topic_key(name)
    if since == "now":
        newest = live.range_entries(await client.xrevrange(key, count=1))
        return newest[0][0] if newest else "0-0"
    # Only an end the hub wrote moves a reader's start: a forged id would skip data.
    ended = await _ended(client, name)
    if ended is None:
        return "0-0"
    if await client.xrange(key, b"(" + ended, "+", count=1):
        return ended
    return await _ended(client, name, "ended_before") or "0-0"


ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")


async def start_cursor(name: str) -> str:
    """Where a reader `since="start"` would begin now, as an entry id: a reader that starts
    later from it misses nothing sent in between."""
    start = await _start_id(live.async_client(), check_name(name), "start")
    return start.decode() if isinstance(start, bytes) else start


async def read(
    name: str, since: str = "start", after: bytes | str | None = None
) -> AsyncIterator[bytes]:
    """The topic's chunks in order: from the first it keeps after its last end (`since` =
    "start") or from the next one sent ("now"), or after the entry id `after` (a cursor
    `tail_cursor` gave); follows until an end, or until the topic is deleted. Registers as a
    consumer while it reads."""
    client = live.async_client()
    key = live.topic_key(name)
    cursor: list[bytes | str] = []

    async def fetch() -> Any:
        if not cursor:
            cursor.append(after if after is not None else await _start_id(client, name, since))
        reply = await blocking_read(
            client.xread({key: cursor[0]}, count=READ_BATCH, block=BLOCK_MS), BLOCK_MS
        )
        entries = live.read_entries(reply)
        if entries:
            cursor[0] = entries[-1][0]
        return entries

    async for data in _follow(client, name, fetch):
        yield data


async def read_shared(name: str, group: str, since: str = "start") -> AsyncIterator[bytes]:
    """Like `read`, but the readers that name the same `group` share the work: each chunk goes
    to one of them (a Redis consumer group; beyond STH). The group starts where its first
    reader's `since` says and remembers its place after its readers go. Delivery is at most
    once: a chunk handed to a reader that disconnects before using it is not given to another.
    """
    check_name(group)
    client = live.async_client()
    key = live.topic_key(name)
    member = f"c-{uuid.uuid4().hex[:12]}"
    made: list[bool] = []

    async def fetch() -> Any:
        if not made:
            start = await _start_id(client, name, since)
            try:
                await client.xgroup_create(key, group, id=start, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            made.append(True)
        try:
            reply = await blocking_read(
                client.xreadgroup(
                    group, member, {key: ">"}, count=SHARED_BATCH, block=BLOCK_MS, noack=True
                ),
                BLOCK_MS,
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            made.clear()  # Redis restarted and lost the group: make it again, then read
            return []
        # XREADGROUP answers in XREAD's shape; redis-py types it apart.
        return live.read_entries(cast("XReadResponse", reply))

    try:
        async for data in _follow(client, name, fetch):
            yield data
    finally:
        with contextlib.suppress(RedisError, OSError):
            await client.xgroup_delconsumer(key, group, member)


async def _follow(
    client: aredis.Redis, name: str, fetch: Callable[[], Awaitable[Any]]
) -> AsyncIterator[bytes]:
    """The chunks `fetch` brings, registered as a consumer, until an end the hub signed or the
    topic's deletion. An end one reader of a group took is seen by the others through the
    topic's `ended` mark.

    While Redis is away the reader waits, retrying with back-off, and keeps its place (entry
    ids are times: what a restarted Redis receives comes after it). A topic lives only in
    Redis, so a restart takes what it held; the reader makes it again, with its content type,
    as a reader of a missing topic does, and reads what producers send from then on."""
    topic = await get(name, client)
    if topic is None:
        return
    key = live.topic_key(name)
    ended_before = await _ended(client, name)
    member = await attach(name, CONSUMER, client)
    refreshed = looked = time.monotonic()
    backoff = Backoff()
    away = False
    try:
        while True:
            try:
                entries = await fetch()
                if time.monotonic() - refreshed > PEER_REFRESH:
                    await refresh(name, CONSUMER, member, client)
                    refreshed = time.monotonic()
                if away:  # back after an outage, which may have been a restart
                    away = False
                    backoff.reset()
                    topic, _ = await ensure(name, topic.content_type, topic.origin, client)
                    await refresh(name, CONSUMER, member, client)
                # Deleted (and perhaps made again by a producer still sending): this reader's
                # topic is gone. Looked at when a read comes back empty, and every few seconds
                # while data flows, which a deleted topic's producer keeps doing.
                if not entries or time.monotonic() - looked > GONE_CHECK_SECONDS:
                    looked = time.monotonic()
                    now = await get(name, client)
                    if now is None or now.created != topic.created:
                        return
                if not entries:
                    if await _ended(client, name) != ended_before:
                        return
                    continue
            except REDIS_AWAY:
                away = True
                await backoff.wait()
                continue
            for _entry_id, fields in entries:
                if b"eof" in fields:
                    if live.is_end(key, fields):
                        return
                    continue  # not the hub's: a forged end must not cut a reader off
                data = fields.get(b"d")
                if data:
                    yield data
    finally:
        with contextlib.suppress(RedisError, OSError):
            await detach(name, CONSUMER, member, client)


async def _ended(client: aredis.Redis, name: str, mark: str = "ended") -> bytes | None:
    """The id of the topic's last end (`mark` "ended_before": the end before it), when the
    hub wrote it (a forged mark counts for none)."""
    key = live.topic_key(name)
    ended = live.as_bytes(await client.hget(live.topic_meta_key(name), mark))
    if not ended:
        return None
    entries = live.range_entries(await client.xrange(key, ended, ended))
    return ended if entries and live.is_end(key, entries[0][1]) else None


async def tail(name: str, count: int = 50) -> list[bytes]:
    """The newest `count` chunks the topic keeps, oldest first (a console's live tail starts
    with these, then follows `read(name, since="now")`)."""
    return (await tail_cursor(name, count))[0]


async def tail_cursor(name: str, count: int = 50) -> tuple[list[bytes], bytes | str]:
    """The newest `count` chunks, oldest first, and the id to follow from with
    `read(name, after=...)`: nothing sent in between is lost or shown twice."""
    client = live.async_client()
    entries = live.range_entries(
        await client.xrevrange(live.topic_key(check_name(name)), count=count)
    )
    cursor: bytes | str = entries[0][0] if entries else "0-0"
    return [f[b"d"] for _, f in reversed(entries) if b"d" in f], cursor


# -- producers and consumers -----------------------------------------------------------------


async def attach(name: str, role: str, client: aredis.Redis | None = None) -> str:
    """Register a producer or consumer of the topic for PEER_TTL seconds; its member id."""
    member = uuid.uuid4().hex
    await refresh(name, role, member, client)
    return member


async def refresh(name: str, role: str, member: str, client: aredis.Redis | None = None) -> None:
    client = client or live.async_client()
    key = live.topic_peers_key(name, role)
    now = time.time()
    pipe = client.pipeline(transaction=False)
    pipe.zadd(key, {member: now + PEER_TTL})
    pipe.zremrangebyscore(key, "-inf", now)  # lapsed ones: their holder died
    await pipe.execute()


async def detach(name: str, role: str, member: str, client: aredis.Redis | None = None) -> None:
    client = client or live.async_client()
    await client.zrem(live.topic_peers_key(name, role), member)


def trim_all() -> int:
    """Trim every topic by age, from the periodic task: writers trim the topics they write
    to, an idle one only here. The number of chunks removed."""
    client = live.sync_client()
    pipe = client.pipeline(transaction=False)
    for name in _valid_names(cast("set[bytes]", client.smembers(live.topics_key()))):
        pipe.xtrim(live.topic_key(name), minid=_trim_id(), approximate=True)
    return sum(int(n) for n in pipe.execute())
