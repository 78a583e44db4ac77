"""The child runtime: runs one Python sequence or script in a process the fork server prepared.

It speaks runner/PROTOCOL.md over descriptors 0..6, with the names of core/protocol.py. Only the
standard library and core.protocol are imported here, because the fork server preloads this module
and every child inherits what it imports (a child under Landlock cannot read the hub's source, so
nothing may be imported lazily; tests/runner/test_protocol.py holds it to that).

Threads, and why: user code runs on the event loop of the main thread, and may block it (a sync
generator that sleeps, `while True: pass`). Two small helper threads keep the child responsive
anyway: one reads the control socket, so a kill (4002) always lands, and one flushes the coalesced
writers a few milliseconds after data arrives, so output stays live while the loop is busy.
"""

from __future__ import annotations

import _thread
import asyncio
import codecs
import collections
import contextlib
import datetime
import dis
import functools
import importlib.util
import inspect
import io
import json
import logging
import os
import select
import socket
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Mapping
from types import CodeType, FrameType, ModuleType, TracebackType
from typing import Any

from core.protocol import Exit, Fd, Message

FLUSH_BYTES = 64 * 1024
# The flusher thread writes a buffer that did not grow for WATCH_SECONDS (a producer that
# stopped, or blocks the loop), and any data that waited MAX_DELAY_SECONDS (a producer that
# keeps the loop busy). Short enough to look instant to a reader, long enough that a fast
# producer fills whole batches.
WATCH_SECONDS = 0.003
MAX_DELAY_SECONDS = 0.02
# A producer that never awaits gets the loop back to other work (control messages) this often.
LOOP_SLICE_SECONDS = 0.005
HELPER_THREAD_STACK = 256 * 1024

DECLARE_TIMEOUT = 10.0  # seconds output waits for the supervisor to answer a PANG
NDJSON_TYPES = frozenset({"application/x-ndjson", "text/x-ndjson", "application/json"})

HOOKS = (
    "new_sequence",
    "go_online",
    "go_offline",
    "abort_sequence",
    "stop",
    "shutdown",
    "diagnostic_mode",
    "operations_mode",
)


# --------------------------------------------------------------------------------------------
# Coalescing writers
# --------------------------------------------------------------------------------------------


class FdWriter:
    """Coalesces writes to one blocking descriptor; any thread may write.

    Appends go to a bytearray that is never replaced, and only a flush removes bytes from its
    front, under a lock. Under the GIL each of those is one atomic C call, so producers need no
    lock: the hot path stays a few hundred nanoseconds per item and a syscall per 64 KiB.
    """

    def __init__(self, fd: int, flusher: Flusher) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.broken = False
        self._lock = threading.Lock()
        self._flusher = flusher
        flusher.add(self)

    def write(self, data: bytes) -> None:
        if not data:
            return
        buf = self.buf
        buf += data
        size = len(buf)
        if size >= FLUSH_BYTES:
            self.flush()
        elif size == len(data):
            # The buffer was empty before this append: nobody is due to flush it yet.
            self._flusher.pending()

    def pending(self) -> None:
        self._flusher.pending()

    def flush(self) -> None:
        """Write everything buffered; raises OSError (BrokenPipeError) if the reader is gone."""
        with self._lock:
            buf = self.buf
            while buf:
                # A copy: handing the bytearray itself to os.write would lock its size while the
                # GIL is released, and a concurrent append would raise BufferError.
                chunk = bytes(buf)
                try:
                    written = os.write(self.fd, chunk)
                except OSError:
                    self.broken = True
                    buf.clear()
                    raise
                del buf[:written]

    def flush_quietly(self) -> None:
        with contextlib.suppress(OSError):
            self.flush()


class Flusher:
    """Flushes writers soon after they get data: from the loop when it is idle, else a thread.

    The loop flush covers a producer that waits for something (the usual async case): it runs
    once no other callback is ready, so a producer that keeps the loop busy still fills whole
    batches. The thread covers a loop that user code blocks or keeps busy: it looks at the
    buffers every WATCH_SECONDS while any holds data, and writes one that stopped growing, or
    whose data has waited MAX_DELAY_SECONDS.
    """

    def __init__(self) -> None:
        self._writers: list[FdWriter] = []
        self._wake = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._scheduled = False

    def add(self, writer: FdWriter) -> None:
        self._writers.append(writer)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        _start_helper_thread(self._run)

    def pending(self) -> None:
        """A writer went from empty to non-empty."""
        self._wake.set()
        if (
            not self._scheduled
            and self._loop is not None
            and threading.get_ident() == self._loop_thread
        ):
            self._scheduled = True
            self._loop.call_soon(self._flush_when_idle)

    def flush_all(self) -> None:
        for writer in self._writers:
            writer.flush_quietly()

    def _flush_when_idle(self) -> None:
        assert self._loop is not None
        # _ready is the loop's queue of runnable callbacks (private, hence getattr): while it
        # holds anything the producer is still going, and a flush now would cut the batch short.
        if getattr(self._loop, "_ready", None):
            self._loop.call_soon(self._flush_when_idle)
            return
        self._scheduled = False
        for writer in self._writers:
            if writer.buf:
                writer.flush_quietly()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            # Cleared before looking at the buffers: a write after this point sets it again.
            self._wake.clear()
            self._watch()

    def _watch(self) -> None:
        started = time.monotonic()
        seen = {id(writer): (len(writer.buf), started) for writer in self._writers}
        while seen:
            time.sleep(WATCH_SECONDS)
            now = time.monotonic()
            for writer in self._writers:
                size = len(writer.buf)
                last_size, since = seen.get(id(writer), (0, now))
                if not size:
                    seen.pop(id(writer), None)
                elif size == last_size or now - since >= MAX_DELAY_SECONDS:
                    writer.flush_quietly()
                    seen.pop(id(writer), None)
                else:
                    seen[id(writer)] = (size, since)


class Utf8Text(io.TextIOBase):
    """A standard stream of the child: UTF-8 text, with odd bytes kept (surrogateescape)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    # io.TextIOBase's encoding and errors are read-only properties; typeshed declares them as
    # plain attributes, hence the ignores.
    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "surrogateescape"

    @property
    def name(self) -> str:
        return self._name

    def isatty(self) -> bool:
        return False


class TextStream(Utf8Text):
    """What sys.stdout and sys.stderr become: UTF-8 text into a coalescing FdWriter.

    Buffered, not line-buffered: a sequence printing a million lines makes a syscall per 64 KiB,
    and the Flusher still puts a lone print() on the pipe within a few milliseconds, even when
    the loop is blocked. Everything is flushed again before the child exits.
    """

    def __init__(self, writer: FdWriter, name: str) -> None:
        super().__init__(name)
        self._writer = writer
        self.buffer = BinaryStream(writer, name)

    @property
    def line_buffering(self) -> bool:
        return False

    def write(self, s: str) -> int:
        # print() calls this twice per line: FdWriter.write is inlined to halve the calls.
        if type(s) is not str and not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if not s:
            return 0
        try:
            data = s.encode()
        except UnicodeEncodeError:
            data = encode_text(s)
        writer = self._writer
        buf = writer.buf
        buf += data
        size = len(buf)
        if size >= FLUSH_BYTES:
            writer.flush()
        elif size == len(data):
            writer.pending()
        return len(s)

    def flush(self) -> None:
        self._writer.flush()

    def fileno(self) -> int:
        return self._writer.fd

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        # Closing sys.stdout must not close descriptor 1 under the runtime's feet.
        self.flush()


class BinaryStream(io.RawIOBase):
    """sys.stdout.buffer: raw bytes into the same writer as the text stream."""

    def __init__(self, writer: FdWriter, name: str) -> None:
        super().__init__()
        self._writer = writer
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._writer.write(data)
        return len(data)

    def flush(self) -> None:
        self._writer.flush()

    def fileno(self) -> int:
        return self._writer.fd

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        self.flush()


def encode_text(s: str) -> bytes:
    try:
        return s.encode()
    except UnicodeEncodeError:
        # Lone surrogates: bytes smuggled through surrogateescape go back out as the original
        # bytes; any other surrogate becomes a visible escape rather than an exception.
        try:
            return s.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return s.encode("utf-8", "backslashreplace")


def encode_item(item: Any) -> bytes:
    """Output encoding of PROTOCOL.md for one item (None is filtered out by the caller)."""
    if isinstance(item, str):
        return encode_text(item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    return (json.dumps(item, default=str, ensure_ascii=False) + "\n").encode(
        "utf-8", "backslashreplace"
    )


def _start_helper_thread(target: Callable[[], None]) -> None:
    # Small stacks: the child may run under RLIMIT_AS, and the default 8 MiB each would count.
    # The user's own threads get the default size back. _thread rather than threading: start()
    # would wait for the new thread to be scheduled, a millisecond or two of every launch.
    previous = _thread.stack_size(HELPER_THREAD_STACK)
    try:
        _thread.start_new_thread(target, ())
    finally:
        _thread.stack_size(previous)


# --------------------------------------------------------------------------------------------
# Control channel
# --------------------------------------------------------------------------------------------


class Control:
    """Newline-delimited JSON `[code, data]` over the control socket (fd 3).

    The socket stays blocking: sends are small and must be on the wire before the child exits,
    and the reader thread simply blocks in recv.
    """

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=fd)
        self._lock = threading.Lock()

    def send(self, code: int, data: Any) -> None:
        line = json.dumps([code, data], default=str, ensure_ascii=False) + "\n"
        payload = line.encode("utf-8", "backslashreplace")
        # OSError: the supervisor is gone, and the exit code is all it could still learn.
        with self._lock, contextlib.suppress(OSError):
            self._sock.sendall(payload)

    def start_reader(
        self,
        loop: asyncio.AbstractEventLoop,
        dispatch: Callable[[int, Any], None],
        on_eof: Callable[[], None],
    ) -> None:
        def run() -> None:
            if self._read_forever(loop, dispatch):
                on_eof()

        _start_helper_thread(run)

    def _read_forever(
        self, loop: asyncio.AbstractEventLoop, dispatch: Callable[[int, Any], None]
    ) -> bool:
        """Dispatches messages until the supervisor hangs up (True) or the loop is gone."""
        pending = b""
        while True:
            try:
                chunk = self._sock.recv(65536)
            except OSError:
                return True
            if not chunk:
                return True
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                message = _parse_control(line)
                if message is None:
                    continue
                code, data = message
                if code == Message.KILL:
                    # Right here, in this thread: user code may be blocking the loop.
                    os._exit(Exit.KILLED)
                try:
                    loop.call_soon_threadsafe(dispatch, code, data)
                except RuntimeError:
                    return False  # loop closed: the child is exiting anyway


def _parse_control(line: bytes) -> tuple[int, Any] | None:
    if not line.strip():
        return None
    try:
        code, data = json.loads(line)
        return int(code), data
    except (ValueError, TypeError):
        sys.stderr.write(f"runtime: ignored a malformed control message: {line[:200]!r}\n")
        return None


# --------------------------------------------------------------------------------------------
# Log stream
# --------------------------------------------------------------------------------------------


class JsonLineHandler(logging.Handler):
    """Writes each record as `{"ts", "level", "msg", "from"?, "data"?, "exc"?}` on the log
    stream; `from` names a child of the context logger (`context.logger.getChild("mount")`)."""

    def __init__(self, writer: FdWriter, base: str = "") -> None:
        super().__init__(logging.DEBUG)
        self._writer = writer
        self._prefix = base + "." if base else ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry: dict[str, Any] = {
                "ts": int(record.created * 1000),
                "level": record.levelname,
                "msg": record.getMessage(),
            }
            if self._prefix and record.name.startswith(self._prefix):
                entry["from"] = record.name[len(self._prefix) :]
            data = getattr(record, "data", None)
            if data is not None:
                entry["data"] = data
            if record.exc_info:
                entry["exc"] = "".join(traceback.format_exception(*record.exc_info))
            line = json.dumps(entry, default=str, ensure_ascii=False) + "\n"
            self._writer.write(line.encode("utf-8", "backslashreplace"))
        except Exception:
            self.handleError(record)


def make_logger(name: str, writer: FdWriter) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [JsonLineHandler(writer, name)]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger


# --------------------------------------------------------------------------------------------
# Input stream
# --------------------------------------------------------------------------------------------


class InputStream:
    """The `input` of a sequence: an async iterable over fd 5, decoded by its Content-Type.

    Reading starts on first use and pauses while too many items wait, so an unread input
    back-pressures the supervisor instead of filling this process's memory.
    """

    MAX_HEADER = 4096
    HIGH_WATER_ITEMS = 4096
    HIGH_WATER_CHUNKS = 16

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fd: int, content_type: str | None = None
    ) -> None:
        self._loop = loop
        self._fd = fd
        self._items: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._reading = False
        self._eof = False
        self._header = bytearray()
        self.content_type: str | None = None
        self._decode: Callable[[bytes], None] = self._decode_header
        self._finish_decoding: Callable[[], None] = self._finish_header
        self._text_decoder: codecs.IncrementalDecoder | None = None
        self._partial_text = ""
        self._partial_bytes = b""
        self._high_water = self.HIGH_WATER_ITEMS
        if content_type is not None:  # a stream without a header (stdin)
            self._start_body(content_type, b"")

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        while not self._items:
            if self._eof:
                raise StopAsyncIteration
            self._resume()
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if not self._reading and not self._eof and len(self._items) < self._high_water // 2:
            self._resume()
        return item

    def _resume(self) -> None:
        if not self._reading and not self._eof:
            self._reading = True
            self._loop.add_reader(self._fd, self._on_readable)

    def _pause(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        self._take(data)

    def _take(self, data: bytes) -> None:
        """Decodes what was read (the end, if nothing) and wakes whoever waits for items."""
        if data:
            self._decode(data)
            if len(self._items) >= self._high_water:
                self._pause()
        else:
            self._pause()
            self._eof = True
            self._finish_decoding()
        if self._waiter is not None and not self._waiter.done() and (self._items or self._eof):
            self._waiter.set_result(None)

    # -- header ----------------------------------------------------------------------------
    def _decode_header(self, data: bytes) -> None:
        self._header += data
        end = self._header.find(b"\r\n\r\n")
        if end < 0:
            if len(self._header) > self.MAX_HEADER:
                self._start_body("text/plain", bytes(self._header))
            return
        header, body = bytes(self._header[:end]), bytes(self._header[end + 4 :])
        self._start_body(_content_type_of(header), body)

    def _finish_header(self) -> None:
        # Input closed before a complete header: what came is body text, not a header.
        if self._header:
            self._start_body("text/plain", bytes(self._header))
            self._finish_decoding()

    def _start_body(self, content_type: str, body: bytes) -> None:
        self.content_type = content_type
        self._header = bytearray()
        if content_type == "text/plain":
            self._text_decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
            self._decode, self._finish_decoding = self._decode_text, self._finish_text
        elif content_type in NDJSON_TYPES:
            self._decode, self._finish_decoding = self._decode_json, self._finish_json
        else:
            # application/octet-stream, and any type we do not know: raw chunks.
            self._high_water = self.HIGH_WATER_CHUNKS
            self._decode, self._finish_decoding = self._decode_bytes, _nothing
        if body:
            self._decode(body)

    # -- bodies ----------------------------------------------------------------------------
    def _decode_bytes(self, data: bytes) -> None:
        self._items.append(data)

    def _decode_text(self, data: bytes) -> None:
        assert self._text_decoder is not None
        text = self._partial_text + self._text_decoder.decode(data)
        lines = text.split("\n")
        self._partial_text = lines.pop()
        self._items.extend([line + "\n" for line in lines])

    def _finish_text(self) -> None:
        assert self._text_decoder is not None
        rest = self._partial_text + self._text_decoder.decode(b"", final=True)
        self._partial_text = ""
        if rest:
            self._items.append(rest)

    def _decode_json(self, data: bytes) -> None:
        lines = (self._partial_bytes + data).split(b"\n")
        self._partial_bytes = lines.pop()
        for line in lines:
            self._append_json(line)

    def _finish_json(self) -> None:
        rest, self._partial_bytes = self._partial_bytes, b""
        self._append_json(rest)

    def _append_json(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            self._items.append(json.loads(line))
        except ValueError as exc:
            # One bad line from a client should not end the sequence's input.
            sys.stderr.write(f"runtime: skipped an input line that is not JSON ({exc}): ")
            sys.stderr.write(f"{line[:200]!r}\n")


class StdinLines(InputStream):
    """The lines of stdin (fd 0), for both ways of reading `sys.stdin` (`StdinStream`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        super().__init__(loop, fd, "text/plain")

    def _on_readable(self) -> None:
        # A synchronous read on the loop's thread may have taken what made fd 0 readable, and
        # fd 0 stays blocking (the sequence's subprocesses share it): look before reading.
        if select.select([self._fd], [], [], 0)[0]:
            super()._on_readable()

    def _fill(self) -> None:
        """Blocks until more text, or the end, comes."""
        try:
            data = os.read(self._fd, 65536)
        except InterruptedError:
            return
        except OSError:
            data = b""
        self._take(data)

    def read_text(self, size: int) -> str:
        """Up to `size` characters (all, to the end, if negative), blocking."""
        parts: list[str] = []
        wanted = size if size >= 0 else sys.maxsize
        while wanted > 0:
            if not self._items:
                if self._eof:
                    break
                self._fill()
                continue
            item = self._cut(self._items.popleft(), wanted)
            parts.append(item)
            wanted -= len(item)
        return "".join(parts)

    def read_line(self, size: int) -> str:
        """The next line (up to `size` characters; "" at the end), blocking."""
        while not self._items and not self._eof:
            self._fill()
        return self._cut(self._items.popleft(), size) if self._items else ""

    async def next_text(self, size: int) -> str | None:
        """The next line as soon as it comes (up to `size` characters); None at the end, as
        STH's stream gives."""
        try:
            item = await self.__anext__()
        except StopAsyncIteration:
            return None
        return self._cut(item, size)

    def _cut(self, item: str, size: int) -> str:
        if 0 <= size < len(item):
            self._items.appendleft(item[size:])
            return item[:size]
        return item


class AwaitableText(str):
    """A str that `await` gives back as it is: a synchronous read awaited later still works."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, str]:
        yield from ()
        return str(self)


class StdinStream(Utf8Text):
    """What sys.stdin becomes: the text of fd 0 (UTF-8, surrogateescape), read either way.

    As a file, the way that works on any Python: read(), readline(), iteration, input(); they
    block until the text or the end is there. As on STH, whose sys.stdin is a scramjet stream:
    `async for line in sys.stdin`, and `await sys.stdin.read()`, which gives the next line as
    soon as it comes (None at the end) and lets the loop run meanwhile. Which of the two a
    read() is depends on whether its caller awaits the call (`_awaited_by_caller`).
    `sys.stdin.buffer` reads raw bytes; it does not see text that a text read took already.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        super().__init__("<stdin>")
        self._fd = fd
        self._lines = StdinLines(loop, fd)
        self.buffer = io.FileIO(fd, "rb", closefd=False)

    def fileno(self) -> int:
        return self._fd

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> Any:
        size = -1 if size is None else size
        if _awaited_by_caller(sys._getframe(1)):
            return self._lines.next_text(size)
        return AwaitableText(self._lines.read_text(size))

    def readline(self, size: int | None = -1) -> Any:
        size = -1 if size is None else size
        if _awaited_by_caller(sys._getframe(1)):
            return self._lines.next_text(size)
        return AwaitableText(self._lines.read_line(size))

    # typeshed gives io's __next__ the binary type; a text file's lines are str.
    def __next__(self) -> str:  # type: ignore[override]
        line = self._lines.read_line(-1)
        if not line:
            raise StopIteration
        return line

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._lines.__aiter__()


_ASYNC_CODE = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _awaited_by_caller(frame: FrameType | None) -> bool:
    """Whether the call that `frame` is making is awaited at once, as in `await f()`: in the
    bytecode of a coroutine, the call is followed by GET_AWAITABLE."""
    if frame is None or not frame.f_code.co_flags & _ASYNC_CODE:
        return False
    return frame.f_lasti in _awaited_call_offsets(frame.f_code)


@functools.lru_cache(maxsize=256)
def _awaited_call_offsets(code: CodeType) -> frozenset[int]:
    offsets: set[int] = set()
    previous: dis.Instruction | None = None
    for instruction in dis.get_instructions(code):
        if (
            instruction.opname == "GET_AWAITABLE"
            and previous is not None
            and previous.opname.startswith("CALL")
        ):
            # f_lasti is the call's own offset or (3.11) that of its last inline cache entry.
            offsets.update(range(previous.offset, instruction.offset, 2))
        previous = instruction
    return frozenset(offsets)


def _content_type_of(header: bytes) -> str:
    for line in header.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type":
            return value.split(";")[0].strip().lower() or "text/plain"
    return "text/plain"


def _nothing() -> None:
    return None


# --------------------------------------------------------------------------------------------
# What user code sees
# --------------------------------------------------------------------------------------------


class AppContext:
    """The `context` argument of `run(context, input, *args)` (STH's AppContext)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.config: Any = runtime.spec.get("app_config") or {}
        self.logger: logging.Logger = runtime.logger
        self.instance_id: str = str(runtime.spec.get("instance_id", ""))
        self._event_handlers: dict[str, list[Callable[..., Any]]] = {}
        self._stop_handlers: list[Callable[..., Any]] = []
        self._health_check: Callable[[], Any] | None = None

    def emit(self, event_name: str, message: Any = "") -> None:
        """Send an event out; clients read it with event/once/events."""
        self._runtime.control.send(Message.EVENT, {"eventName": event_name, "message": message})

    def on(self, event_name: str, callback: Callable[[Any], Any]) -> None:
        """Call `callback(message)` (sync or async) for each event `event_name` sent in."""
        self._event_handlers.setdefault(event_name, []).append(callback)

    def set_stop_handler(self, handler: Callable[..., Any]) -> None:
        """Add `handler(timeout_seconds, can_keep_alive)` (sync or async) to run on stop; a
        handler taking fewer parameters gets the first ones only."""
        self._stop_handlers.append(handler)

    def set_health_check(self, check: Callable[[], Any]) -> None:
        """`check()` returns `{"healthy": bool, ...}` or a bool, or an awaitable of either."""
        self._health_check = check

    async def keep_alive(self, seconds: float = 0) -> None:
        """Tell the supervisor the sequence is alive; during a stop, cancel the exit."""
        self._runtime.keep_alive_requested()
        self._runtime.control.send(Message.ALIVE, {"keepAlive": int(seconds * 1000)})


class Step:
    """One step of a step list, as script handlers see it."""

    __slots__ = ("command", "id", "params", "type")

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.id: str = str(data.get("id", ""))
        self.type: str = str(data.get("type", ""))
        self.command: str = str(data.get("command", ""))
        self.params: Any = data.get("params") or {}

    def __repr__(self) -> str:
        return f"Step(id={self.id!r}, type={self.type!r}, command={self.command!r})"


class SequencerError(Exception):
    """Another sequencer refused a command or its run failed (docs/scripts.md).

    `response` is its typed answer as the API gives it (`{"type": "Unhandled", "state", ...}`,
    `{"type": "Error", "runId", "msg"}`, ...), or None when the hub refused the request itself;
    then `code` says why (NOT_FOUND, CYCLE, FORBIDDEN, INVALID_REQUEST, TIMEOUT, ...). Not caught,
    it fails the step (or hook) with its message, as ESW raises a negative SubmitResponse."""

    def __init__(
        self,
        message: str,
        response: Answer | None = None,
        code: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.response = response
        self.code = code or (response.get("type") if response else None)
        self.status = status


class SequencerTimeout(SequencerError):
    """`submit_and_wait` / `query_final` reached its timeout; the downstream's run goes on."""


class Answer(dict):
    """A typed answer, the API's JSON: `answer["type"]`, or `answer.type`, `answer.run_id`,
    `answer.msg`, `answer.state` (snake_case names read the camelCase keys; None if absent)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        head, *rest = name.split("_")
        return self.get(head + "".join(part.capitalize() for part in rest))


# Answers that are success: anything else raises SequencerError in the script.
_POSITIVE = frozenset({"Ok", "Started", "Completed", "State"})


class SequencerHandle:
    """Another sequencer, as a script commands it: `sequencer.sequencer("IRIS.darknight")`.

    Every method is async and answers the typed response the API gives; a refusal or a failed
    run raises SequencerError (carrying that response). The script's own supervisor sends the
    command, recorded as this sequencer (its run and step), never as a user."""

    def __init__(self, runtime: Runtime, target: str) -> None:
        self._runtime = runtime
        self.target = target

    def __repr__(self) -> str:
        return f"SequencerHandle({self.target!r})"

    async def _call(self, command: str, body: Any = None, **extra: Any) -> Answer:
        data = await self._runtime.request_sequencer(
            {"target": self.target, "command": command, "body": body, **extra}
        )
        if not data.get("ok"):
            code, error = data.get("code"), data.get("error") or "refused"
            raise SequencerError(f"{self.target}: {error}", None, code, data.get("status"))
        answer = Answer(data.get("response") or {})
        if data.get("timedOut"):
            raise SequencerTimeout(
                f"{self.target}: run {answer.get('runId')} did not finish within "
                f"{extra.get('timeout')} s (it goes on)",
                answer,
                "TIMEOUT",
                504,
            )
        if command != "query" and answer.get("type") not in _POSITIVE:
            msg = answer.get("msg") or answer.get("type") or "refused"
            raise SequencerError(f"{self.target}: {msg}", answer, None, data.get("status"))
        return answer

    @staticmethod
    def _steps(steps: Any) -> Any:
        return {"commands": steps} if isinstance(steps, list | tuple) else steps

    async def submit_and_wait(self, steps: Any, timeout: float = 60.0) -> Answer:
        """Submit a step list and wait for its run's end: Completed, or SequencerError
        (Error naming the failing step, Unhandled, ...); SequencerTimeout after `timeout` s."""
        return await self._call("submitAndWait", self._steps(steps), timeout=timeout)

    async def submit(self, steps: Any) -> Answer:
        """Load and start a step list: Started (`.run_id`)."""
        return await self._call("submit", self._steps(steps))

    async def query(self, run_id: str) -> Answer:
        """A run's answer now: Started, Completed, Error or Invalid (never raises for these)."""
        return await self._call("query", runId=run_id)

    async def query_final(self, run_id: str, timeout: float = 60.0) -> Answer:
        """A run's final answer (Completed, else SequencerError), waiting up to `timeout` s."""
        return await self._call("queryFinal", runId=run_id, timeout=timeout)

    async def load_sequence(self, steps: Any) -> Answer:
        return await self._call("loadSequence", self._steps(steps))

    async def start_sequence(self) -> Answer:
        return await self._call("startSequence")

    async def add(self, steps: Any) -> Answer:
        return await self._call("add", self._steps(steps))

    async def prepend(self, steps: Any) -> Answer:
        return await self._call("prepend", self._steps(steps))

    async def reset(self) -> Answer:
        return await self._call("reset")

    async def pause(self) -> Answer:
        return await self._call("pause")

    async def resume(self) -> Answer:
        return await self._call("resume")

    async def abort_sequence(self) -> Answer:
        return await self._call("abortSequence")

    async def stop(self) -> Answer:
        return await self._call("stop")

    async def go_online(self) -> Answer:
        return await self._call("goOnline")

    async def go_offline(self) -> Answer:
        return await self._call("goOffline")

    async def diagnostic_mode(self, start_time: Any = None, hint: str = "") -> Answer:
        when = start_time or datetime.datetime.now(datetime.UTC)
        text = when.isoformat() if isinstance(when, datetime.datetime) else str(when)
        return await self._call("diagnosticMode", {"startTime": text, "hint": hint})

    async def operations_mode(self) -> Answer:
        return await self._call("operationsMode")

    async def get_state(self) -> str:
        """Its state now: Idle, Loaded, Running, Offline, Processing or Killed."""
        return str((await self._call("getState")).get("state"))

    async def command(self, name: str, body: Any = None) -> Answer:
        """Any other sequencer command by its API name (`insertAfter`, `addBreakpoint`, ...)."""
        return await self._call(name, body)


class Sequencer:
    """The `sequencer` argument of `script(sequencer)`: registers step handlers and hooks."""

    # A script catches these as `sequencer.SequencerError` (it cannot import the runtime).
    SequencerError = SequencerError
    SequencerTimeout = SequencerTimeout

    def __init__(
        self, logger: logging.Logger, config: Any, prefix: str, runtime: Runtime | None = None
    ) -> None:
        self.logger = logger
        self.config = config
        self.prefix = prefix
        self._runtime = runtime
        self.setup_handlers: dict[str, Callable[..., Any]] = {}
        self.observe_handlers: dict[str, Callable[..., Any]] = {}
        self.hooks: dict[str, Callable[..., Any]] = {}

    def sequencer(self, prefix: str) -> SequencerHandle:
        """A handle on another sequencer of the hub, by prefix (or id), to command it."""
        if not isinstance(prefix, str) or not prefix:
            raise TypeError("sequencer() needs a prefix, e.g. sequencer.sequencer('IRIS.x')")
        if self._runtime is None:
            raise RuntimeError("this sequencer cannot command others (no runtime)")
        return SequencerHandle(self._runtime, prefix)

    def on_setup(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self._command_decorator(self.setup_handlers, "on_setup", name)

    def on_observe(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self._command_decorator(self.observe_handlers, "on_observe", name)

    def on_new_sequence(self, handler: Callable[..., Any] | None = None) -> Any:
        return self._hook("new_sequence", handler)

    def on_go_online(self, handler: Callable[..., Any] | None = None) -> Any:
        return self._hook("go_online", handler)

    def on_go_offline(self, handler: Callable[..., Any] | None = None) -> Any:
        return self._hook("go_offline", handler)

    def on_abort_sequence(self, handler: Callable[..., Any] | None = None) -> Any:
        return self._hook("abort_sequence", handler)

    def on_stop(self, handler: Callable[..., Any] | None = None) -> Any:
        return self._hook("stop", handler)

    def on_shutdown(self, handler: Callable[..., Any] | None = None) -> Any:
        return self._hook("shutdown", handler)

    def on_diagnostic_mode(self, handler: Callable[..., Any] | None = None) -> Any:
        """The handler gets `(start_time, hint)`: a datetime (or the raw string) and a str."""
        return self._hook("diagnostic_mode", handler)

    def on_operations_mode(self, handler: Callable[..., Any] | None = None) -> Any:
        return self._hook("operations_mode", handler)

    def registered(self) -> dict[str, list[str]]:
        return {
            "setup": sorted(self.setup_handlers),
            "observe": sorted(self.observe_handlers),
            "hooks": [name for name in HOOKS if name in self.hooks],
        }

    @staticmethod
    def _command_decorator(
        table: dict[str, Callable[..., Any]], method: str, name: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        if not isinstance(name, str):
            raise TypeError(f"{method} needs a command name: @sequencer.{method}('command')")

        def register(handler: Callable[..., Any]) -> Callable[..., Any]:
            table[name] = handler
            return handler

        return register

    def _hook(self, name: str, handler: Callable[..., Any] | None) -> Any:
        # Both `@sequencer.on_go_online` and `@sequencer.on_go_online()` work.
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.hooks[name] = fn
            return fn

        return register if handler is None else register(handler)


# --------------------------------------------------------------------------------------------
# The runtime
# --------------------------------------------------------------------------------------------


class LoadFailed(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Runtime:
    """One child: its streams, control channel, event loop and the user module."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec
        self.mode = spec.get("mode", "sequence")
        for fd in (Fd.CONTROL, Fd.OUTPUT, Fd.INPUT, Fd.LOG):
            # The sequence's own subprocesses get stdio, not the runtime's channels: a
            # grandchild holding fd 4 open would keep the output from ever ending.
            _set_cloexec(fd)
        self.flusher = Flusher()
        self.stdout = FdWriter(Fd.STDOUT, self.flusher)
        self.stderr = FdWriter(Fd.STDERR, self.flusher)
        self.output = FdWriter(Fd.OUTPUT, self.flusher)
        self.log = FdWriter(Fd.LOG, self.flusher)
        self.control = Control(Fd.CONTROL)
        self.logger = make_logger(f"hub.{spec.get('instance_id', 'instance')}", self.log)
        self.loop = asyncio.new_event_loop()
        self.context: AppContext | None = None
        self.sequencer: Sequencer | None = None
        self._exit: asyncio.Future[int] = self.loop.create_future()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._kept_alive = False
        self._exiting = False
        self._calls: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._module: ModuleType | None = None
        # The input handed to `run`, held for the child's life. Lent scramjet's Stream reads it
        # in a task of its own that waits on the stream's own future until something reads
        # from it, and the loop keeps only weak references to tasks: once `run` drops an input
        # it never read, that task would be unreachable garbage, and the collector, whenever
        # it runs, destroys it with "Task was destroyed but it is pending!" on stderr.
        self._input: Any = None
        self._declared: asyncio.Future[Any] | None = None  # the supervisor's DECLARED
        self._requests: dict[int, asyncio.Future[dict[str, Any]]] = {}  # SEQ_REQUEST → answer
        self._next_request = 0

    # -- top level ---------------------------------------------------------------------------
    def run(self) -> int:
        self._install_stdio()
        asyncio.set_event_loop(self.loop)
        self.flusher.start(self.loop)
        self.control.start_reader(self.loop, self._dispatch, self._on_control_eof)
        try:
            code = self.loop.run_until_complete(self._main())
        except BaseException:
            self._print_traceback(*sys.exc_info())
            code = Exit.FAILED_WHILE_RUNNING
        # From here on a closed control socket is the supervisor reacting to the end, not a loss.
        self._exiting = True
        self.flusher.flush_all()
        if code == Exit.COMPLETED and self.mode != "script":
            self.control.send(Message.COMPLETED, {})
        elif code == Exit.STOPPED:
            self.control.send(Message.STOPPED, {})
        return code

    async def _main(self) -> int:
        try:
            module = self._load_module()
            if self.mode == "script":
                await self._start_script(module)
            else:
                run = self._find_run(module)
                self._module = module
                self.context = AppContext(self)
                # A module-level `requires` names the topic its input comes from.
                requires = _topic_declaration(getattr(module, "requires", None), "requires")
                if requires:
                    self.control.send(Message.PANG, requires)
                self.control.send(Message.PING, {"pid": os.getpid()})
                self._track(self._run_sequence(run))
        except LoadFailed as failed:
            return failed.code
        return await self._exit

    def finish(self, code: int) -> None:
        if not self._exit.done():
            self._exit.set_result(code)

    def _install_stdio(self) -> None:
        sys.stdout = TextStream(self.stdout, "<stdout>")
        sys.stderr = TextStream(self.stderr, "<stderr>")
        # The originals are the fork server's objects, with buffers an os._exit never flushes.
        # (typeshed makes them Final TextIOWrappers: a child replaces them on purpose.)
        sys.__stdout__, sys.__stderr__ = sys.stdout, sys.stderr  # type: ignore[misc,assignment]
        # The fork server's own stdin object may hold state; a fresh one reads the child's fd 0.
        sys.stdin = StdinStream(self.loop, Fd.STDIN)

    def _track(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = self.loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- loading ---------------------------------------------------------------------------
    def _load_module(self) -> ModuleType:
        package_dir = os.path.abspath(str(self.spec.get("package_dir") or "."))
        main = str(self.spec.get("main") or "main.py")
        path = os.path.normpath(os.path.join(package_dir, main))
        if not path.startswith(package_dir + os.sep) or not os.path.isfile(path):
            sys.stderr.write(f"Bad main: {main!r} is not a file inside the package\n")
            raise LoadFailed(Exit.BAD_MAIN)
        _set_sys_path(package_dir, os.path.dirname(path), self.spec.get("python_path") or [])
        # STH's runner changes into the folder of main, so a sequence opens the files beside
        # it by relative paths. Before the import (STH: after), so module-level code may too.
        # Landlock and the package's owner keep that folder read-only to the child; HOME and
        # TMPDIR stay the instance's own folder.
        os.chdir(os.path.dirname(path))
        sys.argv = [path]
        name = _module_name(path)
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            sys.stderr.write(f"Bad main: {main!r} cannot be imported as a Python module\n")
            raise LoadFailed(Exit.BAD_MAIN)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            self._print_traceback(*sys.exc_info())
            raise LoadFailed(Exit.FAILED_ON_START) from None
        return module

    @staticmethod
    def _find_run(module: ModuleType) -> Callable[..., Any]:
        run = getattr(module, "run", None)
        if not callable(run):
            sys.stderr.write("Bad main: the main module defines no run(context, input, *args)\n")
            raise LoadFailed(Exit.BAD_MAIN)
        return run

    # -- sequence mode ---------------------------------------------------------------------
    async def _run_sequence(self, run: Callable[..., Any]) -> None:
        args = self.spec.get("args") or []
        if not isinstance(args, list):
            args = [args]
        try:
            self._input = self._make_input()
            result = run(self.context, self._input, *args)
            await self._declare_output(result)
            await self._pump(result)
            self.output.flush()
        except SystemExit as exc:
            self.finish(_system_exit_code(exc))
            return
        except BaseException:
            self._print_traceback(*sys.exc_info())
            self.finish(Exit.FAILED_WHILE_RUNNING)
            return
        self.finish(Exit.COMPLETED)

    async def _declare_output(self, result: Any) -> None:
        """STH's `provides`: on the returned object (`.provides`, `.content_type`) or at module
        level (`{"provides": topic, "contentType": type}`). The supervisor decides; output
        waits for its answer, so none of it goes where it should not."""
        declared = getattr(result, "provides", None)
        if isinstance(declared, str):
            declared = {"provides": declared, "contentType": getattr(result, "content_type", None)}
        pang = _topic_declaration(declared, "provides") or _topic_declaration(
            getattr(self._module, "provides", None), "provides"
        )
        if not pang:
            return
        self._declared = self.loop.create_future()
        self.control.send(Message.PANG, pang)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._declared, DECLARE_TIMEOUT)

    def _make_input(self) -> Any:
        stream = InputStream(self.loop, Fd.INPUT)
        try:
            # The package's own (__pypackages__), else the one the hub lends (python_path).
            from scramjet.streams import Stream
        except Exception:
            return stream  # the worker could not lend it: still an async iterable
        # STH-style sequences call input.map(...), input.each(...): give them the real thing.
        return Stream.read_from(stream)

    async def _pump(self, value: Any) -> None:
        """Writes what `run` returned to the output stream, whatever its shape."""
        while True:
            if value is None:
                return
            if isinstance(value, (str, bytes, bytearray, memoryview, Mapping)):
                self.output.write(encode_item(value))
                return
            # Before the awaitable check: a scramjet Stream defines __await__ only to refuse it.
            if hasattr(type(value), "__aiter__"):
                await self._pump_async(value)
                return
            if inspect.isawaitable(value):
                value = await value
                continue
            if isinstance(value, Iterable):
                await self._pump_sync(value)
                return
            self.output.write(encode_item(value))
            return

    async def _pump_sync(self, items: Iterable[Any]) -> None:
        # The hot loop: inlined appends to the writer's buffer, one flush per 64 KiB.
        output = self.output
        buf = output.buf
        pending = self.flusher.pending
        clock = time.monotonic
        deadline = clock() + LOOP_SLICE_SECONDS
        count = 0
        for item in items:
            if type(item) is str:
                try:
                    data = item.encode()
                except UnicodeEncodeError:
                    data = encode_text(item)
            elif type(item) is bytes:
                data = item
            elif item is None:
                continue
            else:
                data = encode_item(item)
            if not data:
                continue
            buf += data
            size = len(buf)
            if size >= FLUSH_BYTES:
                output.flush()
            elif size == len(data):
                pending()
            count += 1
            if not count & 255 and clock() >= deadline:
                # Let the loop answer control messages during a long synchronous producer.
                await asyncio.sleep(0)
                deadline = clock() + LOOP_SLICE_SECONDS

    async def _pump_async(self, items: Any) -> None:
        output = self.output
        clock = time.monotonic
        deadline = clock() + LOOP_SLICE_SECONDS
        count = 0
        async for item in items:
            if item is None:
                continue
            output.write(encode_item(item))
            count += 1
            if not count & 255 and clock() >= deadline:
                await asyncio.sleep(0)
                deadline = clock() + LOOP_SLICE_SECONDS

    # -- script mode -----------------------------------------------------------------------
    async def _start_script(self, module: ModuleType) -> None:
        script = getattr(module, "script", None)
        if not callable(script):
            sys.stderr.write("Failed on start: the main module defines no script(sequencer)\n")
            raise LoadFailed(Exit.FAILED_ON_START)
        config = self.spec.get("app_config") or {}
        self.sequencer = Sequencer(
            self.logger, config, str(self.spec.get("prefix") or ""), runtime=self
        )
        try:
            result = script(self.sequencer)
            if inspect.isawaitable(result):
                await result
        except BaseException:
            self._print_traceback(*sys.exc_info())
            raise LoadFailed(Exit.FAILED_ON_START) from None
        self.control.send(Message.SCRIPT_LOADED, self.sequencer.registered())
        self.control.send(Message.PING, {"pid": os.getpid()})
        self._track(self._serve_calls())

    async def _serve_calls(self) -> None:
        # Each call runs as its own task: an abort, stop or diagnostic hook must not wait
        # behind a long step (in ESW these hooks run while the step is in flight).
        while True:
            call = await self._calls.get()
            self._track(self._answer(call))

    async def _answer(self, call: Mapping[str, Any]) -> None:
        ok, error = await self._call_handler(call)
        self.flusher.flush_all()
        self.control.send(Message.CALL_DONE, {"call": call.get("call"), "ok": ok, "error": error})

    async def _call_handler(self, call: Mapping[str, Any]) -> tuple[bool, str | None]:
        assert self.sequencer is not None
        name = str(call.get("handler", ""))
        try:
            handler, args = self._resolve_handler(name, call)
        except LookupError as missing:
            return False, str(missing.args[0])
        if handler is None:
            return True, None  # a hook the script did not register succeeds
        try:
            result = handler(*args)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            self._print_traceback(type(exc), exc, exc.__traceback__)
            return False, f"{type(exc).__name__}: {exc}"
        return True, None

    def _resolve_handler(
        self, name: str, call: Mapping[str, Any]
    ) -> tuple[Callable[..., Any] | None, tuple[Any, ...]]:
        assert self.sequencer is not None
        if name in ("setup", "observe"):
            step = Step(call.get("step") or {})
            table = (
                self.sequencer.setup_handlers
                if name == "setup"
                else self.sequencer.observe_handlers
            )
            handler = table.get(step.command)
            if handler is None:
                kind = step.type or name.capitalize()
                raise LookupError(f"no handler for {kind} '{step.command}'")
            return handler, (step,)
        if name not in HOOKS:
            raise LookupError(f"unknown handler '{name}'")
        handler = self.sequencer.hooks.get(name)
        if name == "diagnostic_mode":
            args = call.get("args") or {}
            return handler, (_parse_time(args.get("startTime")), str(args.get("hint", "")))
        return handler, ()

    async def request_sequencer(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Ask the supervisor to command another sequencer; its answer (SEQ_ANSWER)."""
        self._next_request += 1
        req = self._next_request
        answer: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self._requests[req] = answer
        self.control.send(Message.SEQ_REQUEST, {**payload, "req": req})
        try:
            return await answer
        finally:
            self._requests.pop(req, None)

    # -- control ---------------------------------------------------------------------------
    def _dispatch(self, code: int, data: Any) -> None:
        if code == Message.STOP:
            self._track(self._stop(data if isinstance(data, dict) else {}))
        elif code == Message.HEALTH_CHECK:
            self._track(self._health())
        elif code == Message.EVENT:
            self._event(data if isinstance(data, dict) else {})
        elif code == Message.DECLARED:
            if self._declared is not None and not self._declared.done():
                self._declared.set_result(data)
        elif code == Message.CALL:
            self._calls.put_nowait(data if isinstance(data, dict) else {})
        elif code == Message.SEQ_ANSWER and isinstance(data, dict):
            waiting = self._requests.get(data.get("req"))  # type: ignore[arg-type]
            if waiting is not None and not waiting.done():
                waiting.set_result(data)

    def _on_control_eof(self) -> None:
        if self._exiting:
            return
        if self.mode == "script":
            # The supervisor let go of the sequencer: an orderly end.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.finish, Exit.COMPLETED)
            return
        # Nobody supervises this instance any more; nobody could stop it or read its output.
        self.flusher.flush_all()
        os._exit(Exit.KILLED)

    async def _stop(self, data: Mapping[str, Any]) -> None:
        if self._stopping:
            return
        self._stopping, self._kept_alive = True, False
        timeout = float(data.get("timeout") or 0) / 1000
        can_keep_alive = bool(data.get("canCallKeepalive"))
        handlers = list(self.context._stop_handlers) if self.context else []
        for handler in handlers:
            try:
                result = call_with_accepted(handler, timeout, can_keep_alive)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self._print_traceback(*sys.exc_info())
        self._stopping = False
        if can_keep_alive and self._kept_alive:
            return
        self.finish(Exit.STOPPED)

    def keep_alive_requested(self) -> None:
        if self._stopping:
            self._kept_alive = True

    async def _health(self) -> None:
        check = self.context._health_check if self.context else None
        report: dict[str, Any]
        try:
            result = check() if check is not None else True
            if inspect.isawaitable(result):
                result = await result
            if isinstance(result, Mapping):
                report = dict(result)
                report["healthy"] = bool(report.get("healthy", True))
            else:
                report = {"healthy": bool(result)}
        except Exception as exc:
            report = {"healthy": False, "error": f"{type(exc).__name__}: {exc}"}
        self.control.send(Message.HEALTH, report)

    def _event(self, data: Mapping[str, Any]) -> None:
        if self.context is None:
            return
        message = data.get("message")
        for callback in list(self.context._event_handlers.get(str(data.get("eventName")), [])):
            try:
                result = callback(message)
                if inspect.isawaitable(result):
                    self._track(self._await_quietly(result))
            except Exception:
                self._print_traceback(*sys.exc_info())

    async def _await_quietly(self, awaitable: Awaitable[Any]) -> None:
        try:
            await awaitable
        except Exception:
            self._print_traceback(*sys.exc_info())

    # -- errors ----------------------------------------------------------------------------
    def _print_traceback(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        lines = traceback.format_exception(exc_type, exc, _user_frames(tb))
        try:
            sys.stderr.write("".join(lines))
            self.stderr.flush()
        except OSError:
            pass


_RUNTIME_FILES = {
    __file__,
    "<frozen importlib._bootstrap>",
    "<frozen importlib._bootstrap_external>",
}


def _user_frames(tb: TracebackType | None) -> TracebackType | None:
    """Drops the runtime's own frames (and importlib's) from the top of a traceback."""
    while tb is not None and tb.tb_frame.f_code.co_filename in _RUNTIME_FILES:
        tb = tb.tb_next
    return tb


def call_with_accepted(fn: Callable[..., Any], *args: Any) -> Any:
    """Calls `fn` with as many leading `args` as its signature takes: all of them for `*args`.

    Stop handlers written for STH take none, one or both of `(timeout, can_keep_alive)` (its
    samples differ): each must run, so its arity decides rather than a TypeError.
    """
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return fn(*args)  # no signature to read (some builtins): give it everything
    taken = 0
    for parameter in parameters:
        if parameter.kind is parameter.VAR_POSITIONAL:
            return fn(*args)
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            taken += 1
    return fn(*args[:taken])


def _system_exit_code(exc: SystemExit) -> int:
    # sys.exit() inside run ends the instance with that code, as it would a plain program.
    if exc.code is None:
        return Exit.COMPLETED
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    sys.stderr.write(f"{exc.code}\n")
    return 1


def _module_name(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem.isidentifier() and stem not in sys.modules:
        return stem
    return "__sequence_main__"


def _set_sys_path(package_dir: str, main_dir: str, lent: Iterable[str]) -> None:
    """The package's folders first; the hub's lent library (scramjet) last, so a package that
    ships its own copy in __pypackages__ imports that one."""
    entries = [package_dir]
    if main_dir != package_dir:
        entries.append(main_dir)
    entries.append(os.path.join(package_dir, "__pypackages__"))
    sys.path[:0] = [entry for entry in entries if entry not in sys.path]
    sys.path += [str(entry) for entry in lent if entry not in sys.path]
    importlib.invalidate_caches()


def _parse_time(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value


def _topic_declaration(value: Any, key: str) -> dict[str, Any] | None:
    """A PANG's data from STH's `{key: topic, "contentType": type}`, or None."""
    if not isinstance(value, Mapping) or not isinstance(value.get(key), str):
        return None
    declaration = {key: value[key]}
    if isinstance(value.get("contentType"), str):
        declaration["contentType"] = value["contentType"]
    return declaration


def _set_cloexec(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.set_inheritable(fd, False)


def main(spec: dict[str, Any]) -> int:
    """Runs the sequence or script of `spec`; returns the exit code (the caller os._exit()s)."""
    return Runtime(spec).run()


if __name__ == "__main__":
    os._exit(main(json.loads(os.environ["HUB_LAUNCH"])))
