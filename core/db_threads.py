"""Database work for async code, on a few long-lived threads that keep their connections.

sync_to_async's per-request thread would open (and close) a new connection for every request,
which on the hot routes (start, stream reads, authentication) costs more than the queries.
The web's requests use `db_call`; the worker's sequencer actors use `db_call_retrying`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_db_threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hub-db")

# A thread's connection is checked (and renewed if broken or too old) by `db_call_retrying` at
# most this often: reopening one for every call would cost more than the call itself.
CONNECTION_CHECK_SECONDS = 30.0
_thread_state = threading.local()


def _run_db(call: Callable[[], T]) -> T:
    try:
        return call()
    except (InterfaceError, OperationalError):
        dead = _connection_dead()
        connection.close()  # a broken connection must not serve the next call
        if not dead:
            raise
        # The thread's connection had died (the database restarted since its last call; the
        # pool checks the connections it hands out, but these threads keep theirs from call to
        # call): the call failed on its first statement and ran nowhere, so once more on a
        # fresh one. (Should the database die in the middle of a call that writes several
        # times outside a transaction, the writes before would be made twice.)
        return call()
    except DatabaseError:
        connection.close()
        raise


def _connection_dead() -> bool:
    """Whether the thread's connection is broken (psycopg marks one whose server went)."""
    raw = connection.connection
    return raw is None or bool(getattr(raw, "broken", False) or getattr(raw, "closed", False))


async def db_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on a database thread, awaited; tried once more on a fresh
    connection only when the thread's own connection had died (a database restart)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_db_threads, _run_db, functools.partial(fn, *args, **kwargs))


def _run_db_retrying(call: Callable[[], T]) -> T:
    now = time.monotonic()
    if now - getattr(_thread_state, "checked", 0.0) > CONNECTION_CHECK_SECONDS:
        close_old_connections()
        _thread_state.checked = now
    try:
        return _run_db(call)
    except (InterfaceError, OperationalError):
        # A dropped connection, or a database busy for too long: one more try on a fresh
        # connection (_run_db closed the broken one).
        log.warning("database call failed; retrying once", exc_info=True)
        return _run_db(call)


async def db_call_retrying(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`db_call`, tried once more on a fresh connection also when the database failed the
    call for being busy too long or going away during it; the thread's connection is also
    renewed when it is old. Only for a call that is one transaction, so that a failed try
    leaves nothing behind.

    The worker's sequencer actors need it and web requests do not: an actor's command comes
    once, over a worker that lives across database restarts, while a failed web request
    reaches its client (503 DATABASE_UNAVAILABLE), which may send it again."""
    loop = asyncio.get_running_loop()
    call = functools.partial(fn, *args, **kwargs)
    return await loop.run_in_executor(_db_threads, _run_db_retrying, call)


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
