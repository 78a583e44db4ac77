"""Helpers to build JavaScript sequence packages in tmp dirs and run them under the Node runtime.

`NodeChild` plays the supervisor's part of runner/PROTOCOL.md with real descriptors: pipes for
stdin, stdout, stderr, output, input and log, a socketpair for control, placed on 0..6 in the
child by a tiny Python launcher that dup2s them and execs node.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
NODE = os.environ.get("HUB_NODE", "/usr/bin/node")
RUNTIME = REPO / "runner" / "node_runtime.js"

# Moves the inherited descriptors onto 0..6, then becomes node. Copying them above every target
# first means a source that already sits on a target number cannot be clobbered.
LAUNCHER = """
import fcntl, os, sys
sources = [int(fd) for fd in sys.argv[1].split(",")]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in sources]
for target, fd in enumerate(high):
    os.dup2(fd, target)
for fd in set(high) | set(sources):
    if fd > 6:
        os.close(fd)
os.execv(sys.argv[2], sys.argv[2:])
"""


def make_package(
    root: Path,
    source: str,
    *,
    main: str = "index.js",
    package: dict[str, Any] | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    """Writes a package (package.json, the main module, extra files) under root/pkg."""
    pkg_dir = root / "pkg"
    pkg_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"name": "test-sequence", "version": "1.0.0", "main": main, **(package or {})}
    (pkg_dir / "package.json").write_text(json.dumps(manifest))
    (pkg_dir / main).parent.mkdir(parents=True, exist_ok=True)
    (pkg_dir / main).write_text(source)
    for name, text in (files or {}).items():
        (pkg_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg_dir / name).write_text(text)
    return pkg_dir


class _Collector(threading.Thread):
    """Reads a descriptor to EOF in the background, keeping every byte."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.chunks: list[bytes] = []
        self.lock = threading.Lock()
        self.start()

    def run(self) -> None:
        with os.fdopen(self.fd, "rb", buffering=0) as f:
            while chunk := f.read(1 << 16):
                with self.lock:
                    self.chunks.append(chunk)

    def data(self) -> bytes:
        with self.lock:
            return b"".join(self.chunks)


class NodeChild:
    """One Node runtime process with the supervisor's ends of its seven descriptors."""

    def __init__(
        self,
        package_dir: Path,
        *,
        args: list[Any] | None = None,
        app_config: dict[str, Any] | None = None,
        main: str | None = "index.js",
        spec: dict[str, Any] | None = None,
        input_type: str | None = None,
        read_output: bool = True,
    ) -> None:
        self.package_dir = package_dir
        launch = {
            "instance_id": "00000000-0000-4000-8000-000000000001",
            "mode": "sequence",
            "package_dir": str(package_dir),
            "main": main,
            "args": args if args is not None else [],
            "app_config": app_config or {},
            "workdir": str(package_dir),
            "env": {},
            "limits": {},
            **(spec or {}),
        }
        stdin_r, self.stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        self.control, child_control = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        output_r, output_w = os.pipe()
        input_r, self.input_w = os.pipe()
        log_r, log_w = os.pipe()
        child_fds = [stdin_r, stdout_w, stderr_w, child_control.fileno(), output_w, input_r, log_w]
        env = {**os.environ, "HUB_LAUNCH": json.dumps(launch)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, ",".join(map(str, child_fds)), NODE, str(RUNTIME)],
            pass_fds=child_fds,
            env=env,
            start_new_session=True,
        )
        for fd in (stdin_r, stdout_w, stderr_w, output_w, input_r, log_w):
            os.close(fd)
        child_control.close()
        self.stdout = _Collector(stdout_r)
        self.stderr = _Collector(stderr_r)
        # read_output=False leaves the output unread (a slow client) until start_output().
        self._output_r = output_r
        self.output = _Collector(output_r) if read_output else None
        self.log = _Collector(log_r)
        self.messages: queue.Queue[list[Any]] = queue.Queue()
        threading.Thread(target=self._read_control, daemon=True).start()
        if input_type is not None:
            self.write_input(f"Content-Type: {input_type}\r\n\r\n".encode())

    # -- control -------------------------------------------------------------------------

    def _read_control(self) -> None:
        buffered = b""
        while chunk := self._recv():
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                if line.strip():
                    self.messages.put(json.loads(line))

    def _recv(self) -> bytes:
        try:
            return self.control.recv(1 << 16)
        except OSError:
            return b""

    def send(self, code: int, data: dict[str, Any] | None = None) -> None:
        self.control.sendall(json.dumps([code, data or {}]).encode() + b"\n")

    def close_control(self) -> None:
        """Hangs up the control socket, as a dying supervisor would."""
        # shutdown, not just close: the reader thread blocked in recv() keeps the socket open
        # until it returns, so a bare close() would send nothing to the child.
        self.control.shutdown(socket.SHUT_RDWR)
        self.control.close()

    def next_message(self, timeout: float = 10) -> list[Any]:
        return self.messages.get(timeout=timeout)

    def wait_for(self, code: int, timeout: float = 10) -> dict[str, Any]:
        """Data of the next control message with `code`; other messages are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no control message {code}; stderr: {self.stderr.data()!r}")
            try:
                got, data = self.next_message(remaining)
            except queue.Empty:
                continue
            if got == code:
                return data

    def received(self) -> list[list[Any]]:
        """Every control message not consumed yet (call after the child exited)."""
        items = []
        while not self.messages.empty():
            items.append(self.messages.get_nowait())
        return items

    def start_output(self) -> None:
        if self.output is None:
            self.output = _Collector(self._output_r)

    # -- input ---------------------------------------------------------------------------

    def write_input(self, data: bytes) -> None:
        os.write(self.input_w, data)

    def close_input(self) -> None:
        os.close(self.input_w)
        self.input_w = -1

    # -- end -----------------------------------------------------------------------------

    def wait(self, timeout: float = 20) -> int:
        """Exit code of the child; the collectors then hold everything it wrote."""
        self.start_output()
        code = self.proc.wait(timeout=timeout)
        for collector in (self.stdout, self.stderr, self.output, self.log):
            collector.join(timeout=5)
        return code

    def log_entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.data().splitlines() if line.strip()]

    def close(self) -> None:
        self.start_output()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.stdin_w, self.input_w):
            if fd >= 0:
                os.close(fd)
        self.stdin_w = self.input_w = -1
        self.control.close()
