"""One thread per worker that writes stream chunks and status changes to the database in order.

Chunks from every instance are batched into few `bulk_create` calls; a status change is applied
only after the chunks queued before it, so "ended" in the database means "all output stored".
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import close_old_connections, transaction

from sequences.models import Instance, InstanceEvent, StreamChunk

log = logging.getLogger(__name__)

BATCH_ROWS = 500


class DbWriter:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.pending_bytes = 0
        self._thread = threading.Thread(target=self._run, name="hub-dbwriter", daemon=True)
        self._thread.start()

    def chunk(self, iid: str, stream: str, seq: int, data: bytes) -> None:
        with self._lock:
            self.pending_bytes += len(data)
        self._queue.put(("chunk", (iid, stream, seq, data)))

    def update(self, iid: str, **fields: Any) -> None:
        self._queue.put(("update", (iid, fields)))

    def event(self, iid: str, direction: str, name: str, message: Any) -> None:
        self._queue.put(("event", (iid, direction, name, message)))

    def call(self, fn: Callable[[], Any]) -> None:
        """Run `fn` in the writer thread, after everything queued before it."""
        self._queue.put(("call", fn))

    def flush(self, timeout: float = 30.0) -> None:
        done = threading.Event()
        self._queue.put(("call", done.set))
        done.wait(timeout)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < BATCH_ROWS:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                close_old_connections()
                self._apply(batch)
            except Exception:
                log.exception("database writer failed; retrying the batch once")
                time.sleep(0.5)
                try:
                    close_old_connections()
                    self._apply(batch)
                except Exception:
                    log.exception("database writer dropped a batch")

    def _apply(self, batch: list[tuple[str, Any]]) -> None:
        chunks: list[StreamChunk] = []
        size = 0
        for kind, item in batch:
            if kind == "chunk":
                iid, stream, seq, data = item
                chunks.append(StreamChunk(instance_id=iid, stream=stream, seq=seq, data=data))
                size += len(data)
                continue
            self._write_chunks(chunks)
            chunks = []
            if kind == "update":
                iid, fields = item
                Instance.objects.filter(pk=iid).update(**fields)
            elif kind == "event":
                iid, direction, name, message = item
                InstanceEvent.objects.create(
                    instance_id=iid, direction=direction, name=name, message=message
                )
            elif kind == "call":
                item()
        self._write_chunks(chunks)
        with self._lock:
            self.pending_bytes -= size

    @staticmethod
    def _write_chunks(chunks: list[StreamChunk]) -> None:
        if chunks:
            with transaction.atomic():
                StreamChunk.objects.bulk_create(chunks, ignore_conflicts=True)
