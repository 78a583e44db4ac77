"""A pipe transport closes its descriptor once.

uvloop's pipe transports close the descriptor (libuv) and then close the file object they were
given, which closed the same number again (MagicStack/uvloop#763). Any thread that opened a
descriptor in between (the database writer's connection, an unpack) got that number and lost
it, and the loss spread from there: under 200 starts at once, new children's pipes failed with
"Bad file descriptor" and "File exists". `runner.supervisor.pipe_file` makes the file objects
the supervisor hands its loop; these tests watch every close those file objects make.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os

import pytest
import uvloop

from runner import supervisor
from runner.supervisor import pipe_file

LOOPS = [uvloop.new_event_loop, asyncio.new_event_loop]


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


class Watched(io.FileIO):
    """A pipe file that notes a close of a number that is not open any more: a second close,
    which would have closed whatever another thread had opened there meanwhile."""

    second_closes: list[int] = []

    def close(self) -> None:
        if not self.closed and self.closefd and not _is_open(self.fileno()):
            Watched.second_closes.append(self.fileno())
        super().close()


@pytest.fixture
def watched(monkeypatch):
    Watched.second_closes = []

    def fdopen(fd: int, mode: str, buffering: int = -1, closefd: bool = True) -> Watched:
        assert buffering == 0
        return Watched(fd, mode, closefd=closefd)

    monkeypatch.setattr(supervisor.os, "fdopen", fdopen)
    return Watched


async def _open_and_close(kind: str) -> int:
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    if kind == "read":
        ours, other = r, w
        transport, _ = await loop.connect_read_pipe(asyncio.Protocol, pipe_file(loop, r, "rb"))
    else:
        ours, other = w, r
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, pipe_file(loop, w, "wb"))
    transport.close()
    for _ in range(5):
        await asyncio.sleep(0.01)
    del transport
    gc.collect()
    os.close(other)
    return ours


@pytest.mark.parametrize("kind", ["read", "write"])
@pytest.mark.parametrize("loop_factory", LOOPS)
def test_a_pipe_transport_closes_its_descriptor_once_and_leaves_none_open(
    kind, loop_factory, watched
):
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        fd = runner.run(_open_and_close(kind))
    gc.collect()
    assert watched.second_closes == [], f"fd {fd} was closed twice"
    assert not _is_open(fd), f"fd {fd} outlived its transport"
