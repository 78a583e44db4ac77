"""The hub's channel layer (sequences/live.py:ChannelLayer): a send to a group with members
reaches them; a send to a group nobody is in is one ZCARD and reaches nobody, including a
channel that joins after it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from channels.layers import get_channel_layer

from sequences import live


async def test_a_send_reaches_a_group_with_members_and_skips_an_empty_one():
    layer = get_channel_layer()
    assert isinstance(layer, live.ChannelLayer)
    watched, empty = f"w-{uuid.uuid4().hex[:8]}", f"e-{uuid.uuid4().hex[:8]}"
    channel = await layer.new_channel()
    await layer.group_add(watched, channel)
    try:
        await layer.group_send(empty, {"type": "x.y", "n": 0})
        await layer.group_send(watched, {"type": "x.y", "n": 1})
        assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "x.y", "n": 1}
        # Joined after the send to the empty group: nothing was queued for it.
        await layer.group_add(empty, channel)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(layer.receive(channel), 0.3)
        await layer.group_send(empty, {"type": "x.y", "n": 2})
        assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "x.y", "n": 2}
    finally:
        await layer.group_discard(watched, channel)
        await layer.group_discard(empty, channel)


async def test_a_bad_group_name_is_refused_as_the_library_refuses_it():
    with pytest.raises(TypeError):
        await get_channel_layer().group_send("no spaces allowed", {"type": "x.y"})
