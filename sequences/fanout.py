"""One Redis reader per event loop for every live stream followed in the process.

Every HTTP or WebSocket follower of a live instance stream used to block in its own `XREAD` on
its own pooled connection: 2 000 followers were 2 000 connections and a round trip per line
each, and past the pool's size the reads failed and fell back to the database. Here one task
per event loop (`Fanout`) reads every followed stream in one `XREAD BLOCK` on one connection,
and hands the entries to each follower's `Subscription`: the cost of a line is its share of one
reply, not a round trip of its own.

What a follower sees does not change: the entries of its stream after the id it subscribed
from, in order, each once, or `REDIS_AWAY` (raised by `Subscription.get`) when Redis is away,
after which it falls back to the database and subscribes again, as before. A follower that does
not keep up stops being read for (its queue holds at most QUEUE_LIMIT entries) until it has
taken them, so a slow client neither grows the process nor holds the others back.

The reader does not name every followed stream in each read. Workers add a notice to the
hub's `moved` stream after each flush, naming the streams it wrote (`live.note_moved`); the
reader blocks on that stream (and its wake stream), and reads only the streams the notices name
that someone here follows, plus streams it has reason to look at: a new subscription, a
follower that had run out of room and has some again, a stream that returned a full COUNT (more
may wait) and a follower that heard nothing for its silence timeout (`Subscription.get`: a
notice lost to trimming, or a worker that writes none, costs that delay, never a line). Naming
all 2 000 followed streams in every read cost Redis ~140 µs of CPU per line carried and the web
~160 KB sent per read (bench/README.md, session 10).

A new subscription must join a read that is already blocked: the reader also reads a wake
stream of its own (`live.wake_key`), to which a subscribing follower adds an entry when the
reader is blocked (one write per follower, not per line).

The command is packed here (the key names are packed once per subscription): redis-py packs a
4 000-argument XREAD in ~7 ms, longer than the read itself.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
import weakref
from typing import Any

import redis

from sequences import live

log = logging.getLogger(__name__)

# The reader's own block: a follower's silence timeout is its own (Subscription.get).
BLOCK_MS = 5000
# A blocking read unanswered this long after its block: Redis is frozen or cut off.
READ_GRACE = 3.0
# Entries a follower may have waiting before its stream stops being read for it.
QUEUE_LIMIT = 200
# Entries of one stream per read (a follower far behind catches up over several reads).
COUNT = 200
# After a read that returned entries, wait this long before the next one, so that lines of
# many streams arriving together are read together (a line arriving after a quiet spell is
# read at once: the read is blocked waiting for it).
MIN_GAP_S = 0.005
REDIS_AWAY = (redis.ConnectionError, redis.TimeoutError)

Id = tuple[int, int]


def parse_id(entry_id: bytes | str) -> Id:
    ms, _, seq = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")
    return int(ms), int(seq or 0)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class Subscription:
    """One follower's view of one stream: the entries after `cursor`, as the reader gets them."""

    def __init__(self, fanout: Fanout, key: str, after: Id) -> None:
        self.fanout, self.key = fanout, key
        self.cursor = after  # the last entry handed to this subscription (taken or not)
        self.entries: collections.deque[live.Entry] = collections.deque()
        self.error: BaseException | None = None
        self.ready = asyncio.Event()
        self.closed = False

    @property
    def full(self) -> bool:
        return len(self.entries) >= QUEUE_LIMIT

    async def get(self, timeout: float) -> list[live.Entry]:
        """The entries that came since the last call, waiting up to `timeout` seconds for one
        ([] if none came). Raises what the reader met when Redis is away; the subscription is
        then closed (subscribe again)."""
        if not self.entries and self.error is None:
            # A timer that sets the event, not `wait_for`: under Python 3.11 that wraps the
            # wait in a task of its own, once per line per follower.
            self.ready.clear()
            timer = asyncio.get_running_loop().call_later(timeout, self.ready.set)
            try:
                await self.ready.wait()
            finally:
                timer.cancel()
            if not self.entries and self.error is None:
                self.fanout.look_at(self.key)  # in case a notice of it was missed
                return []
        if self.error is not None:
            self.close()
            raise self.error
        was_full = self.full
        taken = list(self.entries)
        self.entries.clear()
        if was_full:
            self.fanout.resumed(self)
        return taken

    def deliver(self, entries: list[live.Entry]) -> None:
        for entry in entries:
            if len(self.entries) >= QUEUE_LIMIT:
                break  # the rest is read again from the cursor once it has room
            entry_id = parse_id(entry[0])
            if entry_id > self.cursor:
                self.entries.append(entry)
                self.cursor = entry_id
        if self.entries:
            self.ready.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.ready.set()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.fanout.unsubscribe(self)


class _Watch:
    """What the reader reads for one key: its subscriptions and the packed key name."""

    __slots__ = ("key", "key_bulk", "subs")

    def __init__(self, key: str) -> None:
        self.key = key
        self.key_bulk = _bulk(key.encode())
        self.subs: list[Subscription] = []

    def read_from(self) -> Id | None:
        """Where to read this key from: the least advanced subscription that has room."""
        open_ = [s.cursor for s in self.subs if not s.full]
        return min(open_) if open_ else None


class Fanout:
    """The reader of one event loop (`for_loop`)."""

    def __init__(self) -> None:
        self.watches: dict[str, _Watch] = {}
        # Per key read: its packed name and the packed id it is read from.
        self._args: dict[str, tuple[bytes, bytes]] = {}
        self.task: asyncio.Task[None] | None = None
        self.blocking = False
        self.wake_sent = False
        self.wake_key = live.wake_key(uuid.uuid4().hex)
        self.wake_id: Id = (0, 0)
        self.moved_key = live.moved_key()
        self.moved_id: Id | None = None  # None: read the stream's last id first
        # Followed streams to read in the next XREAD (besides the notices and the wake).
        self.dirty: set[str] = set()
        self.conn: Any = None
        self.reads = 0  # for tests and benches: how many XREADs this reader sent

    def subscribe(self, key: str, after: bytes | str) -> Subscription:
        sub = Subscription(self, key, parse_id(after))
        watch = self.watches.get(key)
        if watch is None:
            watch = self.watches[key] = _Watch(key)
        watch.subs.append(sub)
        self._refresh(watch)
        self.dirty.add(key)  # what it has after `after` is read at once, notice or not
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())
        else:
            self.wake()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        watch = self.watches.get(sub.key)
        if watch is not None and sub in watch.subs:
            watch.subs.remove(sub)
            if not watch.subs:
                del self.watches[sub.key]
            self._refresh(watch)
        # A read blocked on a key nobody follows any more ends by itself (BLOCK_MS).

    def resumed(self, sub: Subscription) -> None:
        """`sub` had no room and now has: the blocked read does not include it, so end it."""
        watch = self.watches.get(sub.key)
        if watch is not None:
            self._refresh(watch)
        self.look_at(sub.key)

    def look_at(self, key: str) -> None:
        """Read `key` in the next XREAD, notice or not."""
        if key in self.watches:
            self.dirty.add(key)
            self.wake()

    def wake(self) -> None:
        if self.blocking and not self.wake_sent:
            self.wake_sent = True
            asyncio.get_running_loop().create_task(self._send_wake())

    async def _send_wake(self) -> None:
        try:
            pipe = live.async_client().pipeline(transaction=False)
            pipe.xadd(self.wake_key, {"w": 1}, maxlen=1, approximate=False)
            pipe.expire(self.wake_key, 3600)
            await pipe.execute()
        except REDIS_AWAY:
            pass  # the reader's own read fails as well, or its block ends by itself

    def _refresh(self, watch: _Watch) -> None:
        """Re-pack where `watch` is read from (after a delivery, a subscription coming or
        going, a follower running out of room or taking its entries)."""
        start = watch.read_from() if self.watches.get(watch.key) is watch else None
        if start is None:
            self._args.pop(watch.key, None)
        else:
            self._args[watch.key] = (watch.key_bulk, _bulk(b"%d-%d" % start))

    def _command(self) -> tuple[bytes, list[str]]:
        """The XREAD to send, and the followed streams it reads."""
        # Packed from what `_refresh` keeps: a read costs a join, not a pass over every
        # follower (2 000 of them took ~10 ms of packing under load).
        read = [key for key in self.dirty if key in self._args]
        pairs = [self._args[key] for key in read]
        moved_id = self.moved_id or (0, 0)
        pairs.append((_bulk(self.moved_key.encode()), _bulk(b"%d-%d" % moved_id)))
        pairs.append((_bulk(self.wake_key.encode()), _bulk(b"%d-%d" % self.wake_id)))
        head = [b"XREAD", b"COUNT", b"%d" % COUNT, b"BLOCK", b"%d" % BLOCK_MS, b"STREAMS"]
        argc = len(head) + 2 * len(pairs)
        packed = b"".join(
            [
                b"*%d\r\n" % argc,
                *(_bulk(a) for a in head),
                *(key for key, _ in pairs),
                *(start for _, start in pairs),
            ]
        )
        return packed, read

    async def _xread(self, packed: bytes) -> Any:
        if self.conn is None:
            pool = live.async_client().connection_pool
            conn = pool.make_connection()
            await conn.connect()
            self.conn = conn
        await self.conn.send_packed_command(packed, check_health=False)
        return await self.conn.read_response(disable_decoding=True)

    async def _last_moved_id(self) -> Id:
        """Where to read notices from: after the newest (what a follower's stream holds from
        before is read because it is new, not because of a notice)."""
        newest = await live.async_client().xrevrange(self.moved_key, count=1)
        entry_id = newest[0][0] if newest else None
        return parse_id(entry_id) if entry_id is not None else (0, 0)

    async def _drop_connection(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                await conn.disconnect()
            except Exception:
                log.debug("closing the fan-out reader's connection failed", exc_info=True)

    async def _run(self) -> None:
        try:
            while True:
                if not self.watches:
                    # Nobody left to read for: let the connection go. A follower that
                    # subscribes meanwhile (the close awaits) is read for, not stranded.
                    await self._drop_connection()
                    if not self.watches:
                        break
                    continue
                self.blocking, self.wake_sent = True, False
                try:
                    if self.moved_id is None:
                        self.moved_id = await self._last_moved_id()
                    packed, read = self._command()
                    # Read now. (Marked again while the read is out, by a follower that
                    # subscribed or made room, it is read again after.)
                    self.dirty.difference_update(read)
                    self.reads += 1
                    reply = await asyncio.wait_for(
                        self._xread(packed), BLOCK_MS / 1000 + READ_GRACE
                    )
                except (TimeoutError, *REDIS_AWAY, OSError) as exc:
                    await self._drop_connection()
                    error = (
                        redis.TimeoutError("Redis did not answer a blocking read in time")
                        if isinstance(exc, TimeoutError)
                        else exc
                        if isinstance(exc, REDIS_AWAY)
                        else redis.ConnectionError(str(exc))
                    )
                    self._fail_all(error)
                    continue
                except Exception as exc:
                    log.exception("the fan-out reader's XREAD failed")
                    await self._drop_connection()
                    self._fail_all(exc)
                    continue
                finally:
                    self.blocking = False
                if reply and self._deliver(reply):
                    await asyncio.sleep(MIN_GAP_S)
        finally:
            if self.conn is not None:  # cancelled mid-read: the loop is closing
                await self._drop_connection()
            # No await between the loop's end and here: a subscription made after it sees
            # the task gone and starts another.
            if self.task is asyncio.current_task():
                self.task = None

    def _fail_all(self, error: BaseException) -> None:
        """Every follower falls back (to the database) and subscribes again after its pause."""
        watches, self.watches = self.watches, {}
        self._args.clear()
        self.dirty.clear()
        self.moved_id = None  # a restarted Redis has a new stream of notices
        for watch in watches.values():
            for sub in watch.subs:
                sub.closed = True
                sub.fail(error)

    def _deliver(self, reply: Any) -> bool:
        """Hands each stream's entries to its subscriptions; whether any follower got one."""
        streams = reply.items() if isinstance(reply, dict) else reply
        got = False
        for raw_key, raw_entries in streams:
            key = raw_key.decode()
            entries = [
                (entry_id, _fields(fields))
                for entry_id, fields in raw_entries
                if fields is not None
            ]
            if key == self.wake_key:
                if raw_entries:
                    self.wake_id = parse_id(raw_entries[-1][0])
                continue
            if key == self.moved_key:
                if raw_entries:
                    self.moved_id = parse_id(raw_entries[-1][0])
                for _, fields in entries:
                    for name in fields.get(b"k", b"").decode(errors="replace").split("\n"):
                        if name in self.watches:
                            self.dirty.add(name)
                continue
            watch = self.watches.get(key)
            if watch is None or not entries:
                continue
            if len(raw_entries) >= COUNT:
                self.dirty.add(key)  # more may wait
            got = True
            for sub in list(watch.subs):
                if not sub.full:
                    sub.deliver(entries)
            self._refresh(watch)
        return got


def _fields(raw: Any) -> live.Fields:
    if isinstance(raw, dict):
        return raw
    return dict(zip(raw[::2], raw[1::2], strict=True))


_readers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Fanout] = weakref.WeakKeyDictionary()


def for_loop() -> Fanout:
    """The running event loop's reader (made on first use)."""
    loop = asyncio.get_running_loop()
    reader = _readers.get(loop)
    if reader is None:
        reader = _readers[loop] = Fanout()
    return reader


def subscribe(key: str, after: bytes | str = "0-0") -> Subscription:
    """Follow the stream `key` from after the entry id `after`; `close()` the subscription when
    done (a follower that ends or is cancelled)."""
    return for_loop().subscribe(key, after)
