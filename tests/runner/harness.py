"""An asyncio harness that plays the supervisor's part of runner/PROTOCOL.md with real processes.

`Harness.start(spec)` forks a child through a real `ForkServer` on the descriptors of the
supervisor's own set-up (`make_child_fds()`), then collects every byte of stdout, stderr, output
and log, and every control message, while the test writes input, stdin and control messages and
awaits the exit.

Reusable by any runtime test (Python by fork, or an exec'd runtime through `start_exec`):

    async with started_fork_server() as server:
        harness = Harness(server)
        child = await harness.start(make_spec(write_package(tmp_path, SOURCE)))
        await child.end_input()
        assert await child.wait_exit() == 0
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from core.protocol import STREAMS
from runner.forkserver import ForkServer, ParentEnds, close_fds, make_child_fds

T = TypeVar("T")


def write_package(
    root: Path,
    source: str,
    *,
    main: str = "main.py",
    files: dict[str, str] | None = None,
    name: str = "pkg",
) -> Path:
    """Writes a Python package (package.json, the main module, extra files) under root/name."""
    package_dir = root / name
    package_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"name": "test-sequence", "version": "1.0.0", "main": main}
    (package_dir / "package.json").write_text(json.dumps(manifest))
    for path, text in {main: source, **(files or {})}.items():
        target = package_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return package_dir


def make_spec(
    package_dir: Path,
    *,
    mode: str = "sequence",
    main: str = "main.py",
    args: list[Any] | None = None,
    app_config: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    workdir: Path | None = None,
    env: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A launch spec as PROTOCOL.md describes it, with test-friendly defaults."""
    instance_id = str(uuid.uuid4())
    return {
        "instance_id": instance_id,
        "mode": mode,
        "package_dir": str(package_dir),
        "main": main,
        "args": args if args is not None else [],
        "app_config": app_config if app_config is not None else {},
        "workdir": str(workdir or package_dir.parent / "run" / instance_id),
        "env": env if env is not None else {"PATH": os.environ.get("PATH", os.defpath)},
        "limits": limits if limits is not None else {"memory": 1024, "nofile": 1024},
        **extra,
    }


@contextlib.asynccontextmanager
async def started_fork_server(**options: Any) -> AsyncIterator[ForkServer]:
    server = ForkServer(**options)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


class Child:
    """One running child seen from the supervisor's side."""

    def __init__(self, pid: int, ends: ParentEnds) -> None:
        self.pid = pid
        self.ends = ends
        self.streams: dict[str, bytearray] = {name: bytearray() for name in STREAMS}
        self.messages: list[tuple[int, Any]] = []
        self.exit_code: int | None = None
        self._loop = asyncio.get_running_loop()
        self._open: set[int] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._control_buf = b""
        self._input_started = False
        self._closed = False
        for name, fd in ends.readers().items():
            os.set_blocking(fd, False)
            self._open.add(fd)
            self._loop.add_reader(fd, self._on_stream, name, fd)
        ends.control.setblocking(False)
        self._loop.add_reader(ends.control.fileno(), self._on_control)
        for fd in (ends.stdin, ends.input):
            os.set_blocking(fd, False)

    # -- what came out -------------------------------------------------------------------------
    @property
    def stdout(self) -> bytes:
        return bytes(self.streams["stdout"])

    @property
    def stderr(self) -> bytes:
        return bytes(self.streams["stderr"])

    @property
    def output(self) -> bytes:
        return bytes(self.streams["output"])

    @property
    def log(self) -> bytes:
        return bytes(self.streams["log"])

    def log_entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.splitlines() if line.strip()]

    def codes(self) -> list[int]:
        return [code for code, _ in self.messages]

    def data_of(self, code: int) -> list[Any]:
        return [data for c, data in self.messages if c == code]

    # -- what goes in --------------------------------------------------------------------------
    def send(self, code: int, data: Any) -> None:
        """A control message to the child (small: the socket buffer takes it at once)."""
        self.ends.control.sendall(json.dumps([code, data]).encode() + b"\n")

    async def write_input(self, data: bytes | str, content_type: str = "text/plain") -> None:
        """Writes to the input stream; the first call sends the Content-Type header."""
        if not self._input_started:
            self._input_started = True
            await self._write(self.ends.input, f"Content-Type: {content_type}\r\n\r\n".encode())
        await self._write(self.ends.input, data.encode() if isinstance(data, str) else data)

    async def end_input(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.ends.input)
        self.ends.input = -1

    async def write_stdin(self, data: bytes | str) -> None:
        await self._write(self.ends.stdin, data.encode() if isinstance(data, str) else data)

    async def end_stdin(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.ends.stdin)
        self.ends.stdin = -1

    def close_control(self) -> None:
        """Hangs up the control socket, as a supervisor that lets go of the child."""
        self._loop.remove_reader(self.ends.control.fileno())
        with contextlib.suppress(OSError):
            self.ends.control.shutdown(2)

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    # -- waiting -------------------------------------------------------------------------------
    async def wait_until(
        self, predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition"
    ) -> T:
        """Waits until predicate() is truthy; returns its value.

        Checked after every change the child makes, and every 50 ms for conditions outside it
        (a process gone).
        """
        try:
            async with asyncio.timeout(timeout):
                while not (value := predicate()):
                    future: asyncio.Future[None] = self._loop.create_future()
                    self._waiters.append(future)
                    await asyncio.wait([future], timeout=0.05)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None
        return value

    async def wait_message(self, code: int, timeout: float = 10.0) -> Any:
        """The data of the first control message with this code (waiting for it if needed)."""
        found = await self.wait_until(
            lambda: [data for c, data in self.messages if c == code] or None,
            timeout,
            f"control message {code}",
        )
        return found[0]

    async def wait_stream(self, name: str, needle: bytes, timeout: float = 10.0) -> bytes:
        await self.wait_until(
            lambda: needle in self.streams[name], timeout, f"{needle!r} in {name}"
        )
        return bytes(self.streams[name])

    async def wait_exit(self, timeout: float = 10.0) -> int:
        """The exit code, once the child ended and its pipes reached end of file."""
        await self.wait_until(lambda: self.exit_code is not None, timeout, "the exit")
        # Anything the child wrote before it died is still in the pipes: drain them.
        with contextlib.suppress(AssertionError):
            await self.wait_until(lambda: not self._open, 5.0, "end of the streams")
        assert self.exit_code is not None
        return self.exit_code

    # -- plumbing ------------------------------------------------------------------------------
    def exited(self, code: int) -> None:
        self.exit_code = code
        self._changed()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in list(self._open):
            self._close_stream(fd)
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self.ends.control.fileno())
        self.ends.control.close()
        for fd in (self.ends.stdin, self.ends.input):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

    def _on_stream(self, name: str, fd: int) -> None:
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.streams[name] += data
        else:
            self._close_stream(fd)
        self._changed()

    def _close_stream(self, fd: int) -> None:
        self._loop.remove_reader(fd)
        self._open.discard(fd)
        with contextlib.suppress(OSError):
            os.close(fd)

    def _on_control(self) -> None:
        try:
            data = self.ends.control.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._loop.remove_reader(self.ends.control.fileno())
            self._changed()
            return
        *lines, self._control_buf = (self._control_buf + data).split(b"\n")
        for line in lines:
            if line.strip():
                code, payload = json.loads(line)
                self.messages.append((code, payload))
        self._changed()

    async def _write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                await self._writable(fd)
                continue
            view = view[written:]

    async def _writable(self, fd: int) -> None:
        future: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_writer(fd, lambda: future.done() or future.set_result(None))
        try:
            await future
        finally:
            self._loop.remove_writer(fd)


class Harness:
    """Starts children on a running ForkServer and routes their exits; closes them at the end."""

    def __init__(self, server: ForkServer) -> None:
        self.server = server
        self.children: dict[int, Child] = {}
        self._early_exits: dict[int, int] = {}
        self._active = True
        server.on_exit(self._on_exit)

    async def start(self, spec: dict[str, Any]) -> Child:
        """Forks a Python child (python_runtime.main(spec))."""
        child_fds, ends = make_child_fds()
        try:
            pid = await self.server.spawn(spec, child_fds)
        except BaseException:
            ends.close()
            raise
        finally:
            close_fds(child_fds)
        return self._track(pid, ends)

    async def start_exec(self, argv: list[str], spec: dict[str, Any]) -> Child:
        """Forks a child that execs argv (for example the Node runtime)."""
        child_fds, ends = make_child_fds()
        try:
            pid = await self.server.spawn_exec(argv, spec, child_fds)
        except BaseException:
            ends.close()
            raise
        finally:
            close_fds(child_fds)
        return self._track(pid, ends)

    def close(self) -> None:
        """Kills whatever is still running and closes every descriptor."""
        self._active = False
        for child in self.children.values():
            if child.exit_code is None:
                child.kill_group()
            child.close()

    def _track(self, pid: int, ends: ParentEnds) -> Child:
        child = Child(pid, ends)
        self.children[pid] = child
        if pid in self._early_exits:
            child.exited(self._early_exits.pop(pid))
        return child

    def _on_exit(self, pid: int, code: int) -> None:
        if not self._active:
            return
        child = self.children.get(pid)
        if child is None:
            self._early_exits[pid] = code
        else:
            child.exited(code)
