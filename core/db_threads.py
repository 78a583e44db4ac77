"""Database work for async code, on a few long-lived threads that keep their connections.

sync_to_async's per-request thread would open (and close) a new connection for every request,
which on the hot routes (start, stream reads, authentication) costs more than the queries.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.db import DatabaseError, connection

log = logging.getLogger(__name__)
T = TypeVar("T")

_db_threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hub-db")


def _run_db(call: Callable[[], T]) -> T:
    try:
        return call()
    except DatabaseError:
        connection.close()  # a broken connection must not serve the next call
        raise


async def db_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on a database thread, awaited."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_db_threads, _run_db, functools.partial(fn, *args, **kwargs))


_background: set[asyncio.Task[Any]] = set()


def in_background(coro: Coroutine[Any, Any, Any]) -> None:
    """Run `coro` after the current request answers; its failure is logged, not raised."""
    task = asyncio.ensure_future(coro)
    _background.add(task)  # a task nobody references may be collected before it finishes
    task.add_done_callback(_background_done)


def _background_done(task: asyncio.Task[Any]) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("background database write failed", exc_info=task.exception())
