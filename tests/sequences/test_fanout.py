"""The per-process fan-out reader of live streams (sequences/fanout.py): every follower gets
its stream's entries in order, each once, from one XREAD for all of them; a follower that joins
while the read is blocked is served at once; a slow one is not read for until it takes what it
has, and loses nothing; Redis going away reaches every follower as REDIS_AWAY. A read names the
streams a worker's notice says moved, not every followed one; a missed notice costs a
follower its silence timeout, not a line.

The tests write as a worker's outbox does: the entries, then a notice naming their streams."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis

from sequences import fanout, live
from tests.live_writes import awrite

pytestmark = pytest.mark.django_db


def _keys(n: int) -> list[str]:
    return [live.stream_key(uuid.uuid4().hex, "stdout") for _ in range(n)]


async def finish(subs: list[fanout.Subscription], keys: list[str]) -> None:
    """Close the subscriptions, delete the streams, let the client go."""
    for sub in subs:
        sub.close()
    await live.async_client().delete(*keys)
    await live.close_async_client()


async def _collect(sub: fanout.Subscription, want: int, timeout: float = 5) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        for _entry_id, fields in await sub.get(0.5):
            got.append(fields[b"d"])
    return got


def test_many_followers_one_reader_in_order_each_once():
    keys = _keys(50)

    async def main() -> None:
        subs = [fanout.subscribe(key) for key in keys]
        reader = fanout.for_loop()
        for i in range(20):
            await awrite([(key, {"s": i, "d": f"{key} {i}".encode()}) for key in keys])
        results = await asyncio.gather(*(_collect(s, 20) for s in subs))
        for key, got in zip(keys, results, strict=True):
            assert got == [f"{key} {i}".encode() for i in range(20)]
        # 50 followers of 20 entries each: a few reads serve them all, not 1 000.
        assert reader.reads < 100
        await finish(subs, keys)

    asyncio.run(main())


def test_a_follower_joining_a_blocked_read_is_served_at_once():
    first, second = _keys(2)

    async def main() -> None:
        a = fanout.subscribe(first)
        await asyncio.sleep(0.2)  # the reader is now blocked on `first` alone
        await awrite([(second, {"s": 0, "d": b"old"})])
        t0 = time.monotonic()
        b = fanout.subscribe(second)
        got = await _collect(b, 1)
        assert got == [b"old"]
        assert time.monotonic() - t0 < 1.0  # not the reader's 5 s block
        await awrite([(second, {"s": 1, "d": b"new"})])
        assert await _collect(b, 1) == [b"new"]
        await finish([a, b], [first, second])

    asyncio.run(main())


def test_a_subscription_starts_after_the_id_it_names():
    (key,) = _keys(1)

    async def main() -> None:
        ids = [(await awrite([(key, {"s": i, "d": b"%d" % i})]))[0] for i in range(5)]
        sub = fanout.subscribe(key, ids[2])
        assert await _collect(sub, 2) == [b"3", b"4"]
        await finish([sub], [key])

    asyncio.run(main())


def test_a_slow_follower_loses_nothing_and_holds_no_one_back(monkeypatch):
    monkeypatch.setattr(fanout, "QUEUE_LIMIT", 10)
    slow_key, fast_key = _keys(2)

    async def main() -> None:
        slow = fanout.subscribe(slow_key)
        fast = fanout.subscribe(fast_key)
        for i in range(35):
            await awrite([(slow_key, {"s": i, "d": b"%d" % i})])
        await asyncio.sleep(0.3)
        assert len(slow.entries) == 10  # at its limit: no longer read for
        await awrite([(fast_key, {"s": 0, "d": b"fast"})])
        assert await _collect(fast, 1) == [b"fast"]
        got = await _collect(slow, 35)
        assert got == [b"%d" % i for i in range(35)]
        await finish([slow, fast], [slow_key, fast_key])

    asyncio.run(main())


def test_redis_away_reaches_every_follower(monkeypatch):
    keys = _keys(3)

    async def main() -> None:
        subs = [fanout.subscribe(key) for key in keys]
        reader = fanout.for_loop()
        await asyncio.sleep(0.2)

        async def refused(packed: bytes) -> None:
            raise redis.ConnectionError("refused")

        monkeypatch.setattr(reader, "_xread", refused)
        reader.wake()  # end the blocked read; the next one fails
        for sub in subs:
            with pytest.raises(redis.ConnectionError):
                await sub.get(5)
        assert not reader.watches
        monkeypatch.undo()
        # Subscribing again works once Redis answers.
        again = fanout.subscribe(keys[0])
        await awrite([(keys[0], {"s": 0, "d": b"back"})])
        assert await _collect(again, 1) == [b"back"]
        await finish([again], keys)

    asyncio.run(main())


def test_a_follower_after_the_last_one_left_is_served():
    first, second = _keys(2)

    async def main() -> None:
        reader = fanout.for_loop()
        a = fanout.subscribe(first)
        await asyncio.sleep(0.1)
        a.close()
        reader.wake()  # the read ends; nobody is left: the reader lets its connection go
        await asyncio.sleep(0)
        b = fanout.subscribe(second)  # while it closes, or after
        await awrite([(second, {"s": 0, "d": b"late"})])
        assert await _collect(b, 1) == [b"late"]
        await finish([b], [first, second])

    asyncio.run(main())


async def settle() -> None:
    """Let the reader's current read end (a notice of a stream nobody here follows) and the
    next one block on the notices alone: a read that named a stream sees its new entries,
    notice or not."""
    await awrite([(live.stream_key(uuid.uuid4().hex, "stdout"), {"s": 0, "d": b""})])
    await asyncio.sleep(0.2)


async def settled_subscription(key: str) -> fanout.Subscription:
    """A follower of `key` whose first read is done and whose reader waits on notices alone."""
    sub = fanout.subscribe(key)
    await asyncio.sleep(0.2)
    await settle()
    return sub


def test_a_notice_brings_a_line_at_once():
    (key,) = _keys(1)

    async def main() -> None:
        sub = await settled_subscription(key)
        t0 = time.monotonic()
        await awrite([(key, {"s": 0, "d": b"now"})])
        got = await sub.get(5)  # its silence timeout is 5 s: the notice, not it, brings it
        assert [fields[b"d"] for _, fields in got] == [b"now"]
        assert time.monotonic() - t0 < 1.0
        await finish([sub], [key])

    asyncio.run(main())


def test_a_read_names_only_the_streams_that_moved(monkeypatch):
    keys = _keys(40)

    async def main() -> None:
        reader = fanout.for_loop()
        sent: list[bytes] = []
        xread = reader._xread

        async def recording(packed: bytes):
            sent.append(packed)
            return await xread(packed)

        monkeypatch.setattr(reader, "_xread", recording)
        subs = [fanout.subscribe(key) for key in keys]
        await asyncio.sleep(0.2)  # the first read names every new subscription
        assert sum(key.encode() in sent[0] for key in keys) == 40
        await settle()
        sent.clear()
        await awrite([(keys[7], {"s": 0, "d": b"seven"})])
        got = await subs[7].get(5)
        assert [fields[b"d"] for _, fields in got] == [b"seven"]
        named = [[key for key in keys if key.encode() in packed] for packed in sent]
        # The read that got the notice named none; the next, the one stream it named.
        assert [keys[7]] in named, named
        assert all(n in ([], [keys[7]]) for n in named), named
        await finish(subs, keys)

    asyncio.run(main())


def test_a_missed_notice_costs_the_follower_its_silence_not_a_line():
    (key,) = _keys(1)

    async def main() -> None:
        sub = await settled_subscription(key)
        # Written by something that sends no notice (a worker from before them; a notice
        # trimmed away before this reader got to it).
        await awrite([(key, {"s": 0, "d": b"quiet"})], notice=False)
        assert await sub.get(0.5) == []  # not read: nothing said it moved
        got = await sub.get(2)  # its silence made the reader look at it
        assert [fields[b"d"] for _, fields in got] == [b"quiet"]
        await finish([sub], [key])

    asyncio.run(main())
