"""Writing live stream entries as a worker's outbox does (runner/outbox.py): the entries, then,
in the same pipeline, a notice naming their streams, which the webs' fan-out readers follow
(sequences/fanout.py). A test that plays the worker writes through these."""

from __future__ import annotations

from typing import Any

from sequences import live


async def awrite(entries: list[tuple[str, dict[Any, Any]]], notice: bool = True) -> list[bytes]:
    """XADD each (key, fields) with the async client, then the notice; the entries' ids."""
    pipe = live.async_client().pipeline(transaction=False)
    for key, fields in entries:
        pipe.xadd(key, fields)
    if notice:
        live.note_moved(pipe, [key for key, _ in entries])
    return (await pipe.execute())[: len(entries)]


def write(entries: list[tuple[str, dict[Any, Any]]]) -> list[bytes]:
    """The same with the sync client."""
    pipe = live.sync_client().pipeline(transaction=False)
    for key, fields in entries:
        pipe.xadd(key, fields)
    live.note_moved(pipe, [key for key, _ in entries])
    return pipe.execute()[: len(entries)]
