"""The per-process fan-out reader of live streams (sequences/fanout.py): every follower gets
its stream's entries in order, each once, from one XREAD for all of them; a follower that joins
while the read is blocked is served at once; a slow one is not read for until it takes what it
has, and loses nothing; Redis going away reaches every follower as REDIS_AWAY."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis

from sequences import fanout, live

pytestmark = pytest.mark.django_db


def _keys(n: int) -> list[str]:
    return [live.stream_key(uuid.uuid4().hex, "stdout") for _ in range(n)]


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
        client = live.async_client()
        subs = [fanout.subscribe(key) for key in keys]
        reader = fanout.for_loop()
        for i in range(20):
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.xadd(key, {"s": i, "d": f"{key} {i}".encode()})
            await pipe.execute()
        results = await asyncio.gather(*(_collect(s, 20) for s in subs))
        for key, got in zip(keys, results, strict=True):
            assert got == [f"{key} {i}".encode() for i in range(20)]
        # 50 followers of 20 entries each: a few reads serve them all, not 1 000.
        assert reader.reads < 100
        for sub in subs:
            sub.close()
        await client.delete(*keys)
        await live.close_async_client()

    asyncio.run(main())


def test_a_follower_joining_a_blocked_read_is_served_at_once():
    first, second = _keys(2)

    async def main() -> None:
        client = live.async_client()
        a = fanout.subscribe(first)
        await asyncio.sleep(0.2)  # the reader is now blocked on `first` alone
        await client.xadd(second, {"s": 0, "d": b"old"})
        t0 = time.monotonic()
        b = fanout.subscribe(second)
        got = await _collect(b, 1)
        assert got == [b"old"]
        assert time.monotonic() - t0 < 1.0  # not the reader's 5 s block
        await client.xadd(second, {"s": 1, "d": b"new"})
        assert await _collect(b, 1) == [b"new"]
        a.close()
        b.close()
        await client.delete(first, second)
        await live.close_async_client()

    asyncio.run(main())


def test_a_subscription_starts_after_the_id_it_names():
    (key,) = _keys(1)

    async def main() -> None:
        client = live.async_client()
        ids = [await client.xadd(key, {"s": i, "d": b"%d" % i}) for i in range(5)]
        sub = fanout.subscribe(key, ids[2])
        assert await _collect(sub, 2) == [b"3", b"4"]
        sub.close()
        await client.delete(key)
        await live.close_async_client()

    asyncio.run(main())


def test_a_slow_follower_loses_nothing_and_holds_no_one_back(monkeypatch):
    monkeypatch.setattr(fanout, "QUEUE_LIMIT", 10)
    slow_key, fast_key = _keys(2)

    async def main() -> None:
        client = live.async_client()
        slow = fanout.subscribe(slow_key)
        fast = fanout.subscribe(fast_key)
        for i in range(35):
            await client.xadd(slow_key, {"s": i, "d": b"%d" % i})
        await asyncio.sleep(0.3)
        assert len(slow.entries) == 10  # at its limit: no longer read for
        await client.xadd(fast_key, {"s": 0, "d": b"fast"})
        assert await _collect(fast, 1) == [b"fast"]
        got = await _collect(slow, 35)
        assert got == [b"%d" % i for i in range(35)]
        slow.close()
        fast.close()
        await client.delete(slow_key, fast_key)
        await live.close_async_client()

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
        client = live.async_client()
        again = fanout.subscribe(keys[0])
        await client.xadd(keys[0], {"s": 0, "d": b"back"})
        assert await _collect(again, 1) == [b"back"]
        again.close()
        await client.delete(*keys)
        await live.close_async_client()

    asyncio.run(main())


def test_a_follower_after_the_last_one_left_is_served():
    first, second = _keys(2)

    async def main() -> None:
        client = live.async_client()
        reader = fanout.for_loop()
        a = fanout.subscribe(first)
        await asyncio.sleep(0.1)
        a.close()
        reader.wake()  # the read ends; nobody is left: the reader lets its connection go
        await asyncio.sleep(0)
        b = fanout.subscribe(second)  # while it closes, or after
        await client.xadd(second, {"s": 0, "d": b"late"})
        assert await _collect(b, 1) == [b"late"]
        b.close()
        await client.delete(first, second)
        await live.close_async_client()

    asyncio.run(main())
