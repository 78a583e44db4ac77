"""One thread per worker that writes stream chunks and status changes to the database in order.

Chunks from every instance are batched into few `bulk_create` calls, and everything queued
between two `call`s is written in one transaction (status changes of one instance merged into
one UPDATE); a status change is never visible before the chunks queued before it, so "ended" in
the database means "all output stored".

When the database is away (restarted, unreachable, locked too long) a batch is tried again, on a
fresh connection, backing off to every RETRY_CAP seconds, until it is written: nothing queued is
dropped and the order holds. Meanwhile the queue grows and `pending_bytes` with it, which makes
the supervisor stop reading children (runner/outbox.py), so memory stays bounded. Only a batch
the database refuses for what it holds (a row it cannot take) is split, and that row dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.db import InterfaceError, OperationalError, connection, models, transaction
from django.utils import timezone

from sequences.models import Instance, InstanceEvent, StreamChunk

log = logging.getLogger(__name__)

BATCH_ROWS = 500
# At most one transaction per WRITE_GAP_S: what arrives meanwhile joins the next one. A
# transaction costs the worker ~0.5 ms of CPU whatever it holds, and lines of hundreds of
# instances arriving one by one made one each (bench/README.md, session 8). Readers of live
# output read Redis; the database is their fallback and the record. A status change or a call
# does not wait out the gap: the API reads a start's worker and pid from the row (a stop right
# after a start is routed by them), and there are a few per instance, not one per line.
WRITE_GAP_S = 0.02
# Back-off while the database is away: first retry after RETRY_FIRST seconds, doubling to the cap.
RETRY_FIRST = 0.2
RETRY_CAP = 2.0
# Errors that say "the database, or the connection to it, is away", not "this row is wrong".
UNAVAILABLE = (InterfaceError, OperationalError)


class DbWriter:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._urgent = threading.Event()
        self.pending_bytes = 0
        # Called (in the writer thread) with the id of an instance whose "starting" update found
        # no row: the supervisor kills what it started for it.
        self.on_missing: Callable[[str], None] | None = None
        self._thread = threading.Thread(target=self._run, name="hub-dbwriter", daemon=True)
        self._thread.start()

    def chunk(self, iid: str, stream: str, seq: int, data: bytes) -> None:
        with self._lock:
            self.pending_bytes += len(data)
        # The arrival time, taken now: the batched write may land a while later.
        self._queue.put(("chunk", (iid, stream, seq, data, timezone.now())))

    def update(self, iid: str, **fields: Any) -> None:
        self._queue.put(("update", (iid, fields)))
        if "status" in fields:
            self._urgent.set()

    def event(self, iid: str, direction: str, name: str, message: Any) -> None:
        self._queue.put(("event", (iid, direction, name, message)))

    def call(self, fn: Callable[[], Any]) -> None:
        """Run `fn` in the writer thread, after everything queued before it (soon: calls
        record ends, beats and drains, which someone waits on)."""
        self._queue.put(("call", fn))
        self._urgent.set()

    def flush(self, timeout: float = 30.0) -> None:
        done = threading.Event()
        self.call(done.set)
        done.wait(timeout)

    def _run(self) -> None:
        last = 0.0
        while True:
            batch = [self._queue.get()]
            wait = last + WRITE_GAP_S - time.monotonic()
            if wait > 0:
                self._urgent.wait(wait)
            self._urgent.clear()  # what was queued until now goes in this batch
            last = time.monotonic()
            while len(batch) < BATCH_ROWS:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._apply(batch)
            except Exception:
                log.exception("database writer failed on a batch")
            size = sum(len(item[3]) for kind, item in batch if kind == "chunk")
            with self._lock:
                self.pending_bytes -= size

    def _apply(self, batch: list[tuple[str, Any]]) -> None:
        """Everything between two calls is one transaction; a call runs after it committed."""
        segment: list[tuple[str, Any]] = []
        for kind, item in batch:
            if kind == "call":
                self._write_segment(segment)
                segment = []
                try:
                    self._until_available(item, "call")
                except Exception:
                    log.exception("database writer call failed")
                    connection.close()
            else:
                segment.append((kind, item))
        self._write_segment(segment)

    def _write_segment(self, items: list[tuple[str, Any]]) -> None:
        # One transaction for the lot: under SQLite every write transaction takes the database
        # lock that the web's writes wait for, and a start alone used to cost four of them.
        # The connection is kept from batch to batch (close_old_connections would close it
        # every time under CONN_MAX_AGE=0, and a reconnect costs more than a batch).
        if not items:
            return

        def write() -> None:
            with transaction.atomic():
                self._write_merged(items)

        try:
            self._until_available(write, f"{len(items)} rows")
        except Exception:
            log.exception("database writer failed on %d rows; writing them one by one", len(items))
            connection.close()
            time.sleep(0.2)
            for item in items:
                try:
                    with transaction.atomic():
                        self._write_merged([item])
                except Exception:
                    log.exception("database writer dropped a %s", item[0])
                    connection.close()

    def _until_available(self, fn: Callable[[], Any], what: str) -> Any:
        """`fn()`, tried again on a fresh connection for as long as the database is away; any
        other error is raised. `fn` must be one transaction (or idempotent), so that a failed
        try leaves nothing behind."""
        delay = RETRY_FIRST
        since = logged = 0.0
        while True:
            try:
                result = fn()
            except UNAVAILABLE:
                connection.close()  # the next try opens a fresh one
                now = time.monotonic()
                if not since:
                    since = logged = now
                    log.warning("database unavailable; holding %s until it is back", what)
                elif now - logged > 30:
                    logged = now
                    log.warning("database unavailable for %.0f s; still holding", now - since)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_CAP)
                continue
            if since:
                waited = time.monotonic() - since
                log.warning("database back after %.1f s; %s written", waited, what)
            return result

    def _write_merged(self, items: list[tuple[str, Any]]) -> None:
        """Chunks, then events, then one UPDATE per instance with its queued changes merged in
        order (the last value of a field wins, as if each had been applied in turn)."""
        chunks: list[tuple[str, str, int, bytes, datetime]] = []
        events: list[InstanceEvent] = []
        updates: dict[str, dict[str, Any]] = {}
        for kind, item in items:
            if kind == "chunk":
                chunks.append(item)
            elif kind == "update":
                iid, fields = item
                updates.setdefault(iid, {}).update(fields)
            elif kind == "event":
                iid, direction, name, message = item
                events.append(
                    InstanceEvent(instance_id=iid, direction=direction, name=name, message=message)
                )
        if chunks:
            insert_chunks(chunks)
        if events:
            InstanceEvent.objects.bulk_create(events)
        for iid, fields in updates.items():
            found = update_instance(iid, fields)
            if not found and "worker" in fields and self.on_missing is not None:
                self.on_missing(iid)


_COLUMNS = "(instance_id, stream, seq, data, created)"


def update_instance(iid: str, fields: dict[str, Any]) -> int:
    """`Instance.objects.filter(pk=iid).update(**fields)` (plain values only), without the
    ORM building the query: a start costs the writer four updates, and compiling each took
    ~70 % of it. The values are prepared by the fields themselves, as update() does."""
    opts = Instance._meta
    quote = connection.ops.quote_name
    columns, params = [], []
    for name, value in fields.items():
        field = opts.get_field(name)
        if not isinstance(field, models.Field) or field.column is None:
            raise ValueError(f"{name} is not a column of the instance table")
        columns.append(f"{quote(field.column)} = %s")
        params.append(field.get_db_prep_save(value, connection))
    params.append(opts.pk.get_db_prep_value(iid, connection))
    sql = (
        f"UPDATE {quote(opts.db_table)} SET {', '.join(columns)} WHERE {quote(opts.pk.column)} = %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def insert_chunks(rows: list[tuple[str, str, int, bytes, datetime]]) -> None:
    """INSERT (instance, stream, seq, data, arrived) rows, skipping any already stored (a batch
    tried again after a commit whose answer was lost). Not `bulk_create`: building a model per
    chunk and compiling the INSERT cost ~70 µs of the worker's CPU a line; on PostgreSQL the
    rows go as five arrays in one statement (~17 µs), elsewhere through `executemany`."""
    table = connection.ops.quote_name(StreamChunk._meta.db_table)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"INSERT INTO {table} {_COLUMNS} SELECT * FROM unnest(%s::varchar[], "
                "%s::varchar[], %s::int[], %s::bytea[], %s::timestamptz[]) ON CONFLICT DO NOTHING",
                [list(column) for column in zip(*rows, strict=True)],
            )
        else:
            created = connection.ops.adapt_datetimefield_value
            cursor.executemany(
                f"INSERT INTO {table} {_COLUMNS} VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                [(iid, stream, seq, data, created(at)) for iid, stream, seq, data, at in rows],
            )
