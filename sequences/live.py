"""Redis: key names and clients shared by the web and the workers.

Every key a hub keeps in Redis is under its namespace `hub:<hub id>:` (`key()`), the hub id
being made at its first start and kept in its database (`sequences.hubs`), so hubs that share a
Redis database never see each other's keys. Django's cache (`cache_key`), the channel layer
(`ChannelLayer`) and Celery's broker keys (`celery_prefix`, set by dashboard/celery.py) go under
it too. The one key outside is `hub:hubs` (`REGISTRY`), where each hub says it is alive, so a
hub learns at start that it shares its Redis (`sequences.hubs`).

Live data goes worker → Redis → web; the database holds the durable copy. Under the namespace:
- `s:<iid>:<stream>`      Redis stream of chunks `{s: seq, d: bytes}`, then `{eof: 1, n: chunks}`
                          with the outcome when a worker ends it (status, exitcode, reason, ended)
- `ev:<iid>`              Redis stream of events emitted by the sequence `{n: name, m: json}`
- `evlast:<iid>`          hash: last message per event name
- `res:<iid>`             list: the instance's CPU and memory samples, "<time> <cpu %> <rss>",
                          at most 120 spanning its life (sequences/resources.py)
- `ctl:<worker>`          list: control messages for one worker's supervisor
- `start:<queue>`         list: start requests any supervisor serving that queue takes
- `startto:<queue>:<worker>`  list: start requests the web placed on one worker (it pops
                          this list before the shared one; the web takes back what it leaves)
- `owner:<iid>`           the worker that just started an instance, until its row says so
- `reply:<token>`         list: one reply to a request that waits for it
- `claim:<iid>`           the worker that took an instance's start: a replayed start finds it
- `worker:<name>`         heartbeat key, expires when the worker stops answering
- `room:<queue>`          hash: worker name -> "<free places> <unix time it lapses> <json>", the
                          JSON `{"labels": [...], "mem": MiB available, "host": name}` (and
                          `"draining": true`, with 0 free places, while the worker drains),
                          written by each worker serving the queue when its room changes and at
                          each beat (an entry without the JSON: a worker that reads only the
                          shared list)
- `wake:<token>`          Redis stream a web process's fan-out reader reads along with the
                          streams it follows, so that a new follower can end its blocked read
                          (sequences/fanout.py); expires an hour after its last entry
- `moved`                 Redis stream of notices `{k: "<key>\n<key>..."}`, one per worker
                          flush (and per lost-instance sweep), naming the streams it just wrote:
                          a fan-out reader reads those, not every stream it follows; a hint
                          only (a forged notice costs a read), at most MOVED_MAXLEN kept
- `log`                   Redis stream of host log lines
- `stats:stream-bytes`    hash: stream name -> bytes of output workers have streamed, counted
                          as they write them (the web's /metrics reads it)
- `auth:generation`       counter that token, user and group changes bump (accounts.identity)
- `topic:<name>`          Redis stream of a topic's chunks `{d: bytes}`, and signed end entries
                          `{eof: 1}` (sequences/topics.py)
- `topicmeta:<name>`      hash: a topic's content type, created, origin, totals, last end's id
- `topicpeers:<name>:<role>`  sorted set: a topic's producers or consumers, scored by when
                          each registration lapses
- `topics`                set: the names of the topics
- `seqev:<sequencer id>`  Redis stream of a sequencer's change notices
                          (sequences/sequencer_store.py)
- `complock:<name>`, `seqprefix:<prefix>`  locks: one command per component, one sequencer
                          per prefix (sequences/sequencers.py)
- `modeslock:`            lock: one observing-mode operation at a time (sequences/modes.py)
- `cache:...`, `asgi...`, `celery:...`  Django's cache, the channel layer, Celery's broker

Nothing read from Redis is trusted because it arrived: start requests, control messages,
replies and the end entries of streams carry a MAC made with a key derived from SECRET_KEY
(which sequence code cannot read), bound to the key they were written under, so a message
cannot be forged, nor moved from one list or stream to another. Messages also name the hub
they are for (`encode_control`): a message for another hub is refused (`OtherHub`) even where
two hubs share a SECRET_KEY.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cache
from typing import TYPE_CHECKING, Any, cast

import hiredis
import redis
import redis.asyncio as aredis
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from core.protocol import STREAMS

if TYPE_CHECKING:
    from redis.typing import (
        BlockingListPopResponse,
        EncodableT,
        FieldT,
        StreamRangeResponse,
        XReadResponse,
    )

# -- the hub's namespace ----------------------------------------------------------------------

# A hub id: what `HUB_ID` may be set to, and what `sequences.hubs` makes.
HUB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,40}")
# Where each hub on this Redis database says it is alive (sequences/hubs.py): the only key
# outside any hub's namespace, read by every hub to learn whether it shares its Redis.
REGISTRY = "hub:hubs"

_hub_id: str | None = None
_hub_id_lock = threading.Lock()


def hub_id() -> str:
    """This hub's id: HUB_ID when set, else the one kept in the database (made there on first
    use). Read once per process; the web and the workers read it at start (dashboard/asgi.py,
    dashboard/celery.py), so no async code path waits for the database here."""
    global _hub_id
    if _hub_id is None:
        with _hub_id_lock:
            if _hub_id is None:
                from sequences.hubs import load_hub_id

                _hub_id = load_hub_id()
    return _hub_id


def key(*parts: str) -> str:
    """A key in this hub's namespace: every key name below is made here."""
    return ":".join(("hub", hub_id(), *parts))


def host_log_key() -> str:
    return key("log")


def stream_key(iid: str, stream: str) -> str:
    return key("s", iid, stream)


def wake_key(token: str) -> str:
    return key("wake", token)


# Notices kept: at a few hundred flushes a second, a minute of them (a reader further behind
# than that finds a stream's data at its next notice, or when its follower has heard nothing for
# a while: sequences/fanout.py).
MOVED_MAXLEN = 20_000


def moved_key() -> str:
    return key("moved")


def note_moved(pipe: Any, keys: Iterable[str]) -> None:
    """Queue on `pipe`, after the writes it names, a notice of the streams they went to.

    Redis runs a pipeline in order, so a reader that sees the notice finds the entries."""
    names = "\n".join(dict.fromkeys(keys))
    if names:
        pipe.xadd(moved_key(), {"k": names}, maxlen=MOVED_MAXLEN, approximate=True)


def events_key(iid: str) -> str:
    return key("ev", iid)


def last_events_key(iid: str) -> str:
    return key("evlast", iid)


def control_key(worker: str) -> str:
    return key("ctl", worker)


def start_key(queue: str) -> str:
    return key("start", queue)


def room_key(queue: str) -> str:
    return key("room", queue)


def stream_bytes_key() -> str:
    return key("stats", "stream-bytes")


def placed_start_key(queue: str, worker: str) -> str:
    return key("startto", queue, worker)


def room_value(
    free: int,
    lapses: float,
    labels: list[str] | None = None,
    memory_mb: int | None = None,
    host: str = "",
    draining: bool = False,
) -> str:
    """A worker's entry in `room:<queue>`. With `labels` (even none) the entry says the
    worker reads its own start list (placed_start_key) and checks placements; a draining
    worker's says 0 free places and why."""
    if draining:
        free = 0
        labels = labels or []
    value = f"{int(free)} {lapses:.3f}"
    if labels is None:
        return value
    detail: dict[str, Any] = {
        "labels": labels,
        "mem": -1 if memory_mb is None else int(memory_mb),
        "host": host,
    }
    if draining:
        detail["draining"] = True
    return f"{value} {json.dumps(detail, separators=(',', ':'))}"


@dataclass(frozen=True)
class WorkerRoom:
    """One live worker's published room: free places, labels, memory available (MiB, -1
    unknown), its host's name, whether it reads a start list of its own (`own_list`), and
    whether it is draining (it says 0 free places, and is going away)."""

    name: str
    free: int
    labels: tuple[str, ...] = ()
    memory_mb: int = -1
    own_list: bool = False
    host: str = ""
    draining: bool = False


def live_rooms(entries: dict[bytes, bytes], now: float) -> list[WorkerRoom]:
    """The entries of a `room:<queue>` hash that have not lapsed (a worker that died stops
    refreshing its entry), by worker name; malformed ones are left out."""
    rooms: list[WorkerRoom] = []
    for name, value in entries.items():
        try:
            free, lapses, *rest = value.decode().split(maxsplit=2)
            if float(lapses) < now:
                continue
            room = WorkerRoom(name=name.decode(), free=int(free))
            if rest:
                detail = json.loads(rest[0])
                labels = detail["labels"]
                if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                    continue
                room = replace(
                    room,
                    labels=tuple(labels),
                    memory_mb=int(detail["mem"]),
                    own_list=True,
                    host=str(detail.get("host", "")),
                    draining=detail.get("draining") is True,
                )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            continue
        rooms.append(room)
    return sorted(rooms, key=lambda r: r.name)


def live_room(entries: dict[bytes, bytes], now: float, draining: bool = True) -> dict[str, int]:
    """The free places of each worker whose entry in a `room:<queue>` hash has not lapsed
    (a worker that died stops refreshing its entry). A draining worker says 0; `draining=False`
    leaves it out: it is going away, so it is neither room nor a reason to call the cluster
    full (a start waits for the worker that takes its place)."""
    return {
        room.name: room.free for room in live_rooms(entries, now) if draining or not room.draining
    }


OWNER_TTL = 120  # seconds; the worker's batched database write lands long before


def owner_key(iid: str) -> str:
    return key("owner", iid)


def claim_key(iid: str) -> str:
    return key("claim", iid)


def reply_key(token: str) -> str:
    return key("reply", token)


def worker_key(name: str) -> str:
    return key("worker", name)


def auth_generation_key() -> str:
    return key("auth", "generation")


def topics_key() -> str:
    return key("topics")


def topic_key(name: str) -> str:
    return key("topic", name)


def topic_meta_key(name: str) -> str:
    return key("topicmeta", name)


def topic_peers_key(name: str, role: str) -> str:
    return key("topicpeers", name, role)


def sequencer_events_key(sequencer_id: str) -> str:
    return key("seqev", sequencer_id)


def component_lock_key(name: str) -> str:
    return key("complock", name)


def sequencer_prefix_lock_key(prefix: str) -> str:
    return key("seqprefix", prefix)


def modes_lock_key() -> str:
    """One observing-mode operation at a time (configure, shutdown, restart: sequences/modes.py)."""
    return key("modeslock", "")


def celery_prefix() -> str:
    """Kombu's `global_keyprefix`: Celery's queues, bindings and fan-out channels."""
    return key("celery", "")


def cache_key(name: str, key_prefix: str, version: int) -> str:
    """Django's cache KEY_FUNCTION: the cache's keys in the hub's namespace."""
    return key("cache", key_prefix, str(version), name)


class ChannelLayer(RedisChannelLayer):
    """The channel layer, its channels and groups in the hub's namespace (its `prefix` option
    goes under it)."""

    def __init__(self, *args: Any, prefix: str = "asgi", **kwargs: Any) -> None:
        super().__init__(*args, prefix=key(prefix), **kwargs)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """As channels_redis sends, but a group nobody is in costs one ZCARD: its own send
        takes two round trips to find the group empty, and most groups the hub tells are (the
        worker tells every instance's group of its changes, open page or not: ~10 % of the
        supervisor's time a start, bench/README.md session 11). A page joining meanwhile
        misses this notice as it would have missed one sent a moment earlier; it reads its
        snapshot after joining."""
        self.require_valid_group_name(group)  # raises on a bad name, as the library's does
        connection = self.connection(self.consistent_hash(group))
        if not await connection.zcard(self._group_key(group)):
            return
        await super().group_send(group, message)


def instance_keys(iid: str) -> list[str]:
    return [
        *(stream_key(iid, s) for s in STREAMS),
        events_key(iid),
        last_events_key(iid),
        claim_key(iid),
        key("res", iid),  # its resource samples (sequences/resources.py)
    ]


def new_token() -> str:
    return uuid.uuid4().hex


# Every blocking command the hub sends (XREAD BLOCK, BLPOP) waits at most 15 s; a read that
# has not answered this long after it was sent finds Redis frozen or cut off (packets dropped,
# not refused: nothing else would ever end the wait). Readers that follow a stream give up
# sooner, a few seconds after their own block (streams.blocking_read).
READ_TIMEOUT = 20.0
CLIENT_OPTIONS: dict[str, Any] = {
    "socket_timeout": READ_TIMEOUT,
    "socket_connect_timeout": 5,
    # A connection idle for this long is PINGed before its next command.
    "health_check_interval": 10,
}
# Over TCP, an idle pooled connection to a host that vanished is found by TCP itself.
TCP_OPTIONS: dict[str, Any] = {
    "socket_keepalive": True,
    "socket_keepalive_options": {
        option: value
        for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
        if (option := getattr(socket, name, None)) is not None  # not every system has them
    },
}


def client_options(url: str) -> dict[str, Any]:
    """CLIENT_OPTIONS, and TCP_OPTIONS for a TCP URL (a Unix socket's connection takes none)."""
    tcp = url.startswith(("redis://", "rediss://"))
    return {**CLIENT_OPTIONS, **(TCP_OPTIONS if tcp else {})}


def _retrying(retry_class: type) -> dict[str, Any]:
    """A client made by from_url retries nothing: after a Redis restart, the first command on
    each pooled connection (stale, from before) failed. A few quick retries reconnect. A
    timeout is not retried: Redis did not answer for READ_TIMEOUT, and five more waits as long
    would only hold the caller, whose own retry (backing off, falling back to the database)
    knows better."""
    return {
        "retry": retry_class(
            ExponentialBackoff(cap=0.5, base=0.02), 5, supported_errors=(redis.ConnectionError,)
        ),
        "retry_on_error": [redis.ConnectionError],
    }


@cache
def sync_client() -> redis.Redis:
    options = client_options(settings.REDIS_URL)
    return redis.Redis.from_url(settings.REDIS_URL, **options, **_retrying(Retry))


@cache
def probe_client() -> redis.Redis:
    """For /health and /metrics: a short timeout and no retries, so that a Redis that is down
    is reported as down within a few seconds, not waited for."""
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


_async_clients: dict[int, aredis.Redis] = {}


def async_client() -> aredis.Redis:
    """One pool per event loop: redis.asyncio connections belong to the loop that made them."""
    import asyncio

    loop = asyncio.get_running_loop()
    client = _async_clients.get(id(loop))
    if client is None:
        client = aredis.Redis.from_url(
            settings.REDIS_URL,
            max_connections=2000,
            **client_options(settings.REDIS_URL),
            **_retrying(AsyncRetry),
        )
        pool = client.connection_pool
        pool.connection_class = _packing_in_c(pool.connection_class)
        _async_clients[id(loop)] = client
    return client


_packing_classes: dict[type, type] = {}


def _packing_in_c(base: type[aredis.connection.AbstractConnection]) -> type:
    """`base` (the connection class the URL chose: TCP, TLS or Unix) packing each command with
    one call into hiredis. redis-py encodes every argument in Python first (~14 µs a command,
    1.5 µs this way), and the worker sends some 25 commands per start: ~0.3 ms of its CPU
    (bench/README.md, session 11). hiredis takes str, bytes, int and float as redis-py does
    (floats as their repr); anything else, and a command name holding a space ("CLIENT
    SETNAME"), goes the library's way, which also raises its errors (a bool: DataError)."""
    known = _packing_classes.get(base)
    if known is not None:
        return known

    class PackingInC(base):  # type: ignore[valid-type,misc]
        def pack_command(self, *args: Any) -> list[bytes]:
            name = args[0] if args else None
            if (isinstance(name, str) and " " not in name) or (
                isinstance(name, bytes) and b" " not in name
            ):
                try:
                    return [hiredis.pack_command(args)]
                except TypeError:
                    pass
            return super().pack_command(*args)

    PackingInC.__name__ = PackingInC.__qualname__ = f"PackingInC{base.__name__}"
    _packing_classes[base] = PackingInC
    return PackingInC


async def close_async_client() -> None:
    """Close and forget the running loop's client: for a loop that ends after its work (each
    `async_to_sync` call from plain code runs a new one), so a later loop given the same id
    does not get a client whose connections belong to a closed loop."""
    import asyncio

    client = _async_clients.pop(id(asyncio.get_running_loop()), None)
    if client is not None:
        await client.aclose()


# -- what the hub's clients read back --------------------------------------------------------
# redis-py annotates each reply for every client configuration: str or bytes values, RESP2 or
# RESP3 shapes. The clients above decode nothing and speak RESP2, so every value read back is
# bytes and a stream entry is (id, {field: value}); these narrow a reply to that.

Fields = dict[bytes, bytes]
Entry = tuple[bytes, Fields]


def as_bytes(value: bytes | str | None) -> bytes | None:
    """A GET or HGET reply."""
    return cast("bytes | None", value)


def popped(item: BlockingListPopResponse) -> bytes | None:
    """The value a BLPOP took, or None when it timed out."""
    return None if item is None else cast(bytes, item[1])


def popped_from(item: BlockingListPopResponse) -> tuple[str, bytes] | None:
    """The list a BLPOP of several took from and the value, or None when it timed out."""
    return None if item is None else (cast(bytes, item[0]).decode(), cast(bytes, item[1]))


def range_entries(reply: StreamRangeResponse | None) -> list[Entry]:
    """The entries of an XRANGE or XREVRANGE reply."""
    return cast("list[Entry]", reply or [])


def read_entries(reply: XReadResponse) -> list[Entry]:
    """The entries of an XREAD reply for one stream; none when it timed out."""
    return cast("list[list[Any]]", reply)[0][1] if reply else []


class Forged(ValueError):
    """A message or stream entry whose MAC does not match: not written by the hub."""


@cache
def _wire_key() -> bytes:
    return hashlib.sha256(b"sequence-hub wire v1\0" + settings.SECRET_KEY.encode()).digest()


def _mac(where: str, *parts: bytes) -> bytes:
    mac = hmac.new(_wire_key(), where.encode(), hashlib.sha256)
    for part in parts:
        mac.update(len(part).to_bytes(8, "big"))
        mac.update(part)
    return mac.hexdigest()[:32].encode()


class OtherHub(Forged):
    """A message signed for the list it came from, but for another hub (two hubs with one
    SECRET_KEY on one Redis): not this hub's to act on."""


def encode_control(dest: str, header: dict[str, Any], payload: bytes = b"") -> bytes:
    """A message for the list `dest`: a MAC line, one JSON line, then raw payload bytes. The
    header names this hub (`hub`) unless it names one already."""
    header = {"hub": hub_id(), **header}
    head = json.dumps(header, separators=(",", ":")).encode()
    return _mac(dest, head, payload) + b"\n" + head + b"\n" + payload


def decode_control(dest: str, raw: bytes) -> tuple[dict[str, Any], bytes]:
    """The header and payload of a message popped from `dest`; Forged if the hub did not
    write it for `dest`, OtherHub if it is for another hub."""
    mac, _, rest = raw.partition(b"\n")
    head, _, payload = rest.partition(b"\n")
    if not hmac.compare_digest(mac, _mac(dest, head, payload)):
        raise Forged(f"message on {dest} with a bad MAC")
    header = json.loads(head)
    if not isinstance(header, dict):
        raise Forged(f"message on {dest} is not an object")
    if header.get("hub") != hub_id():
        raise OtherHub(f"message on {dest} is for hub {header.get('hub')!r}, not {hub_id()!r}")
    return header, payload


def encode_reply(token: str, value: dict[str, Any]) -> bytes:
    return encode_control(reply_key(token), value)


def decode_reply(token: str, raw: bytes) -> dict[str, Any]:
    return decode_control(reply_key(token), raw)[0]


def _end_parts(fields: dict[Any, Any]) -> list[bytes]:
    items = []
    for name, value in fields.items():
        name = name.decode() if isinstance(name, bytes) else str(name)
        if name == "mac":
            continue
        value = value if isinstance(value, bytes) else str(value).encode()
        items.append(name.encode() + b"=" + value)
    return sorted(items)


def sign_end(key: str, fields: dict[FieldT, EncodableT]) -> dict[FieldT, EncodableT]:
    """An end entry for the stream `key` (`{"eof": 1, ...}`) with its MAC, as XADD takes it."""
    return {**fields, "mac": _mac(key, *_end_parts(fields)).decode()}


def is_end(key: str, fields: dict[bytes, bytes]) -> bool:
    """Whether a stream entry is an end entry the hub wrote for `key`; forged ones are not."""
    if b"eof" not in fields:
        return False
    mac = fields.get(b"mac", b"")
    return hmac.compare_digest(mac, _mac(key, *_end_parts(fields)))
