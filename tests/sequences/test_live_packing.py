"""The hub's async Redis clients pack commands in one call into hiredis (sequences/live.py):
byte for byte what redis-py sends, the library's own errors where it would raise, and a real
Redis that reads them back."""

from __future__ import annotations

import uuid

import pytest
import redis
import redis.asyncio as aredis

from sequences import live

COMMANDS = [
    ("SET", "hub:k", b"v\r\n\x00\xff", "EX", 60),
    ("XADD", "hub:s:1:stdout", "MAXLEN", "~", 10_000, "*", "s", 3, "d", b"line\n", "t", 1.5),
    ("HSET", "hub:room", "w-ünïcode", '{"free": 3}'),
    ("ZADD", "hub:z", 1733340000.1234567, "m", 1e-07, "n", float("inf"), "o"),
    ("SET", b"hub:bytes-key", memoryview(b"from a view")),
    ("RPUSH", "hub:big", b"x" * 200_000),
]


@pytest.fixture
def packing():
    base = aredis.Connection
    return live._packing_in_c(base)(), base()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_a_command_is_packed_as_redis_py_packs_it(packing, command):
    ours, theirs = packing
    assert b"".join(bytes(c) for c in ours.pack_command(*command)) == b"".join(
        bytes(c) for c in theirs.pack_command(*command)
    )
    assert b"".join(ours.pack_commands([command, command])) == b"".join(
        bytes(c) for c in theirs.pack_commands([command, command])
    )


def test_what_hiredis_does_not_take_goes_the_librarys_way(packing):
    ours, theirs = packing
    with pytest.raises(redis.DataError):
        ours.pack_command("SET", "hub:k", True)
    with pytest.raises(redis.DataError):
        ours.pack_command("SET", "hub:k", object())
    # A command name of two words is split into two arguments, as redis-py does.
    assert ours.pack_command("CLIENT SETNAME", "hub") == theirs.pack_command(
        "CLIENT SETNAME", "hub"
    )
    assert ours.pack_command(b"CLIENT SETNAME", "hub") == theirs.pack_command(
        b"CLIENT SETNAME", "hub"
    )


async def test_the_hubs_async_client_packs_in_c_and_redis_reads_it_back():
    client = live.async_client()
    assert client.connection_pool.connection_class.__name__.startswith("PackingInC")
    key = f"hub:test-packing:{uuid.uuid4().hex}"
    try:
        pipe = client.pipeline(transaction=False)
        pipe.xadd(key, {"s": 0, "d": b"\x00line\n", "t": 2.5})
        pipe.expire(key, 60)
        pipe.xrange(key)
        *_, entries = await pipe.execute()
        assert [fields for _, fields in entries] == [
            {b"s": b"0", b"d": b"\x00line\n", b"t": b"2.5"}
        ]
    finally:
        await client.delete(key)
