"""The fork server ("zygote"): a preloaded interpreter that forks one child per instance.

Starting an instance costs a fork of a process that already imported the runtime (a few
milliseconds), not a fresh interpreter (tens of milliseconds and more).

Two halves live here:

* the zygote, run as `python -m runner.forkserver --fd N --parent PID` with a clean environment.
  It serves requests on the inherited Unix socket N: each request is a length-prefixed JSON
  object carrying, as SCM_RIGHTS, the seven descriptors of runner/PROTOCOL.md. It forks, and the
  child either runs `python_runtime.main(spec)` or execs a program (the Node runtime). It reaps
  its children and reports every exit. It dies with its parent (PDEATHSIG), and each child dies
  with it.
* `ForkServer`, the asyncio client the supervisor uses, and `make_child_fds()`.

Wire format, client -> zygote: `!I` length + JSON `{"id", "kind": "fork"|"exec", "spec",
"argv"?, "nfds"}`, descriptors attached to the first byte. Zygote -> client: JSON lines,
`{"ready": pid}`, `{"id", "pid"}` or `{"id", "error"}`, and `{"exit": pid, "code": n}`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import fcntl
import gc
import json
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.protocol import CHILD_FDS, SIGNAL_BASE, Exit
from runner import cgroups, isolation, landlock, python_runtime, seccomp

REPO_ROOT = str(Path(__file__).resolve().parent.parent)
HEADER = struct.Struct("!I")
MAX_REQUEST = 64 << 20

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
CHATTY_PIPE_BYTES = 1 << 20  # the pipe size of stdout and output, what sequences write most

SANDBOX_ENV = "HUB_SANDBOX_CONFIG"

# Stdlib modules a sequence commonly imports; importing them once in the zygote makes every
# child's import free. python_runtime's own imports are preloaded by importing it.
PRELOAD = (
    "base64",
    "concurrent.futures.thread",
    "dataclasses",
    "datetime",
    "decimal",
    "functools",
    "hashlib",
    "itertools",
    "math",
    "pathlib",
    "random",
    "re",
    "subprocess",
    "tempfile",
    "typing",
    "urllib.parse",
    "uuid",
)


class SpawnError(RuntimeError):
    """The zygote could not fork or set up a child."""


# --------------------------------------------------------------------------------------------
# Zygote
# --------------------------------------------------------------------------------------------

_libc: ctypes.CDLL | None = None


def _prctl(option: int, value: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}) failed: {os.strerror(errno)}")


def exit_code_of(status: int) -> int:
    """A wait status as a shell would say it: the exit code, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return SIGNAL_BASE - code if code < 0 else code


class Zygote:
    """The server loop. Single-threaded on purpose: forking a threaded process is unsafe."""

    def __init__(
        self, sock: socket.socket, parent_pid: int, sandbox: list[tuple[int, int]] | None = None
    ) -> None:
        self.sock = sock
        self.parent_pid = parent_pid
        # Landlock rules every child shares, as descriptors opened once here; None: no layer.
        self.sandbox = sandbox
        self.pid = os.getpid()
        self.children: set[int] = set()
        self._buf = bytearray()
        self._fds: collections.deque[int] = collections.deque()
        self._wake_r = -1
        self._wake_w = -1
        self._installed = False  # in a child: its seven descriptors are on 0..6

    def serve(self) -> None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != self.parent_pid:
            return  # the parent died before the death signal was armed
        # Orphaned grandchildren are reparented here and reaped, instead of piling up as zombies
        # under init; only our direct children are reported.
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, _ignore_signal)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        # Everything imported so far is shared with every child; freezing keeps the collector
        # from touching those pages in the children (which would copy them).
        gc.freeze()
        self._send({"ready": self.pid})
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            for fd, _events in poller.poll():
                if fd == self._wake_r:
                    self._drain_wakeups()
                    self._reap()
                elif not self._read_requests():
                    return  # the client closed its end: we are done, and so are the children

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.children:
                self.children.discard(pid)
                self._send({"exit": pid, "code": exit_code_of(status)})
            # After every reap, an instance's or an orphan's: killing an orphan hands its own
            # children to the zygote, and they are killed on the next pass.
            self._kill_orphans()

    def _kill_orphans(self) -> None:
        """Kill every process that was reparented here: what an instance left running when it
        ended (a daemon that double-forked out of its process group, say). Each instance is a
        subreaper of its own tree while it lives, so orphans reach the zygote only once their
        instance is gone. Their own children come here next, and are killed on the next reap."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            return
        for pid in pids:
            if pid not in self.children:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            os._exit(0)  # the client is gone

    def _read_requests(self) -> bool:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 16, 64)
        except InterruptedError:
            return True
        except OSError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        self._fds.extend(fds)
        self._buf += data
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if size > MAX_REQUEST:
                return False  # not our client speaking
            if len(self._buf) < HEADER.size + size:
                break
            body = bytes(self._buf[HEADER.size : HEADER.size + size])
            del self._buf[: HEADER.size + size]
            try:
                request = json.loads(body)
            except ValueError:
                # Which descriptors belonged to it is unknown: drop them all rather than hand
                # them to the next child.
                while self._fds:
                    os.close(self._fds.popleft())
                self._send({"id": None, "error": "malformed request"})
                continue
            self._handle(request)
        return True

    def _handle(self, request: dict[str, Any]) -> None:
        wanted = int(request.get("nfds", CHILD_FDS))
        fds = [self._fds.popleft() for _ in range(min(wanted, len(self._fds)))]
        try:
            if len(fds) != CHILD_FDS:
                raise SpawnError(f"expected {CHILD_FDS} descriptors, got {len(fds)}")
            pid = self._fork(request, fds)
        except Exception as exc:
            self._send({"id": request.get("id"), "error": f"{type(exc).__name__}: {exc}"})
        else:
            self.children.add(pid)
            self._send({"id": request.get("id"), "pid": pid})
        finally:
            for fd in fds:
                os.close(fd)

    def _fork(self, request: dict[str, Any], fds: list[int]) -> int:
        spec = request.get("spec") or {}
        pid = os.fork()
        if pid:
            return pid
        code: int = Exit.LAUNCH_FAILED
        try:
            execs = request.get("kind") == "exec"
            self._become_child(spec, fds, execs)
            if execs:
                _exec(list(request.get("argv") or []), spec)
            code = python_runtime.main(spec)
        except BaseException:
            # Set-up fails before or after the child's descriptors are in place: its stderr
            # is fds[2] until then, 2 after.
            stderr = 2 if self._installed else fds[2]
            with contextlib.suppress(Exception):
                os.write(stderr, traceback.format_exc().encode("utf-8", "replace"))
        finally:
            os._exit(code)

    def _become_child(self, spec: dict[str, Any], fds: list[int], execs: bool) -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()  # its own session and process group: killpg(pid) reaches all it spawns
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != self.pid:
            os._exit(Exit.KILLED)  # the zygote died before the signal was armed
        run_as = spec.get("run_as")
        workdir = spec.get("workdir")
        if workdir:
            os.makedirs(workdir, exist_ok=True)
            if run_as:
                isolation.own_workdir(workdir, run_as)
        cgroups.join(spec.get("cgroups") or [])
        if spec.get("nice"):
            # Below the hub's own processes when the cores are busy. Single-threaded here, so
            # every thread it makes inherits it; lowering it back needs CAP_SYS_NICE.
            os.setpriority(os.PRIO_PROCESS, 0, int(spec["nice"]))
        if spec.get("isolate_network"):
            isolation.isolate_network()
        if run_as:
            isolation.drop_privileges(run_as)
            # A change of credentials clears the death signal: arm it again, and check again.
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != self.pid:
                os._exit(Exit.KILLED)
            if run_as.get("sweep"):
                # A leased id is ours alone: whatever still runs under it was left behind by
                # an instance of a worker that died. kill(-1) spares only ourselves.
                with contextlib.suppress(OSError):
                    os.kill(-1, signal.SIGKILL)
        if os.geteuid() == 0:
            isolation.drop_capabilities()  # a child that stays root keeps none of its powers
        if self.sandbox is not None:
            # Before install_fds, which closes the shared rules' descriptors.
            own = [(str(spec["package_dir"]), landlock.READ)] if spec.get("package_dir") else []
            if workdir:
                own.append((workdir, landlock.fs_rights()))
            landlock.confine(self.sandbox, own)
        # Orphans of its tree stay in its tree while it lives (the zygote kills them after).
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        install_fds(fds)
        self._installed = True
        if workdir:
            os.chdir(workdir)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in (spec.get("env") or {}).items()})
        # The zygote found `runner` through the hub's checkout; user code should not see it.
        sys.path[:] = [entry for entry in sys.path if entry not in ("", REPO_ROOT)]
        # Last: a small RLIMIT_NOFILE or RLIMIT_AS must not break the setup steps above.
        apply_limits(spec.get("limits") or {}, address_space=not execs)


def install_fds(fds: Sequence[int]) -> None:
    """Puts fds[i] on descriptor i (0..6) and closes every other descriptor."""
    # Copies above every target first, so a source already sitting on a target number is not
    # clobbered by an earlier dup2.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds]
    for target, fd in enumerate(high):
        os.dup2(fd, target, inheritable=True)
    os.closerange(CHILD_FDS, _max_fd())


def _max_fd() -> int:
    # No descriptor can sit above the hard limit. close_range(2) makes the range free; the bound
    # only matters for an interpreter built without it, which closes one by one.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return hard if hard != resource.RLIM_INFINITY else 1 << 20


def apply_limits(limits: dict[str, Any], *, address_space: bool = True) -> None:
    """`memory` (MB) becomes RLIMIT_AS, `nofile` RLIMIT_NOFILE; both soft and hard.

    With address_space=False (exec'd runtimes) memory becomes RLIMIT_DATA instead: V8 reserves
    gigabytes of address space up front and dies at start under any useful RLIMIT_AS, while
    RLIMIT_DATA counts only writable private memory, what a heap really uses.
    """
    memory = limits.get("memory")
    if memory:
        which = resource.RLIMIT_AS if address_space else resource.RLIMIT_DATA
        _set_limit(which, int(float(memory) * (1 << 20)))
    nofile = limits.get("nofile")
    if nofile:
        _set_limit(resource.RLIMIT_NOFILE, max(int(nofile), CHILD_FDS + 3))
    nproc = limits.get("nproc")
    if nproc:
        # Counts the processes and threads of the user id: one instance's, when it is leased.
        _set_limit(resource.RLIMIT_NPROC, int(nproc))


def _set_limit(which: int, value: int) -> None:
    _soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def _exec(argv: list[str], spec: dict[str, Any]) -> None:
    if not argv:
        os.write(2, b"fork server: exec request without argv\n")
        os._exit(Exit.EXEC_FAILED)
    env = dict(os.environ)
    env["HUB_LAUNCH"] = json.dumps(spec)
    # Python ignores SIGPIPE and SIGXFSZ; an exec'd program must not inherit that.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        os.write(2, f"fork server: cannot exec {argv[0]}: {exc}\n".encode())
    os._exit(Exit.EXEC_FAILED)


def _ignore_signal(_signum: int, _frame: Any) -> None:
    # SIGCHLD only needs to wake poll() through the wakeup fd.
    return None


def _preload() -> None:
    import importlib

    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    # -S leaves out site, and with it the exit()/quit() builtins that scripts expect.
    import site

    site.setquit()


def zygote_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m runner.forkserver")
    parser.add_argument("--fd", type=int, required=True, help="the inherited Unix socket")
    parser.add_argument("--parent", type=int, required=True, help="pid to die with")
    args = parser.parse_args(argv)
    # The sandbox's configuration comes in the environment, not on the command line, which
    # any process may read in /proc/<pid>/cmdline: it names the hub's folders and ports.
    raw_sandbox = os.environ.pop(SANDBOX_ENV, "")
    sock = socket.socket(fileno=args.fd)
    sock.setblocking(True)
    _preload()
    sandbox = None
    if raw_sandbox:
        config = json.loads(raw_sandbox)
        # Sockets Landlock does not see (MPTCP, Unix sockets by path) and io_uring: for the
        # zygote and all it forks, at no cost per child.
        seccomp.install()
        rules = [(str(p), int(r)) for p, r in config.get("rules") or []]
        if config.get("shared"):
            # Children with a user id each: one layer for the zygote and all it forks.
            landlock.restrict_all(rules + [tuple(r) for r in config["shared"]], config["ports"])
        elif landlock.abi():
            # Children sharing a user id: each adds its own layer on these rules.
            sandbox = landlock.open_paths(rules)
    Zygote(sock, args.parent, sandbox).serve()
    os._exit(0)


# --------------------------------------------------------------------------------------------
# Descriptors for a child
# --------------------------------------------------------------------------------------------


@dataclass
class ParentEnds:
    """The supervisor's side of a child's seven descriptors (all close-on-exec)."""

    stdin: int  # write
    stdout: int  # read
    stderr: int  # read
    control: socket.socket  # both ways, AF_UNIX stream
    output: int  # read
    input: int  # write
    log: int  # read

    def readers(self) -> dict[str, int]:
        return {
            "stdout": self.stdout,
            "stderr": self.stderr,
            "output": self.output,
            "log": self.log,
        }

    def close(self) -> None:
        for fd in (self.stdin, self.stdout, self.stderr, self.output, self.input, self.log):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.control.close()


def make_child_fds() -> tuple[list[int], ParentEnds]:
    """Creates the pipes and the control socketpair for one child: the supervisor's set-up,
    which the test harness uses too.

    Returns the child's descriptors in PROTOCOL.md order (core.protocol.Fd), to hand to
    `spawn` and then close with `close_fds`, and the parent's ends.
    """
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    control, control_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    output_r, output_w = os.pipe()
    input_r, input_w = os.pipe()
    log_r, log_w = os.pipe()
    for fd in (stdout_w, output_w):
        # Bigger pipes mean fewer wake-ups for chatty sequences.
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, CHATTY_PIPE_BYTES)
    # In core.protocol.Fd order.
    child = [stdin_r, stdout_w, stderr_w, control_child.detach(), output_w, input_r, log_w]
    parent = ParentEnds(stdin_w, stdout_r, stderr_r, control, output_r, input_w, log_r)
    return child, parent


def close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# --------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------


class ForkServer:
    """Asyncio client of one zygote. Use it from one long-lived event-loop thread.

    `python` is the interpreter for the zygote (default: this one). `site_packages=False` runs it
    with -S, so sequences see the standard library and their own __pypackages__, not the hub's
    dependencies.
    """

    def __init__(
        self,
        python: str | None = None,
        *,
        site_packages: bool = False,
        sandbox: dict[str, Any] | None = None,
    ) -> None:
        # A system interpreter when children change user and this one's stdlib is closed to them.
        self.python = python or isolation.runtime_python()
        self.site_packages = site_packages
        self.sandbox = sandbox  # {"rules", "ports", "shared"}: launch.sandbox_config
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[int] | None = None
        self._rbuf = b""
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[int]] = {}
        self._live: set[int] = set()
        self._callbacks: list[Callable[[int, int], None]] = []
        self._send_lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._sock is not None

    async def start(self) -> None:
        """Launches the zygote and waits until it is ready to fork.

        PDEATHSIG follows the thread that forked the zygote: call this from the thread that
        runs the loop for the life of the server.
        """
        if self._proc is not None:
            raise RuntimeError("fork server already started")
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [self.python, "-s", *([] if self.site_packages else ["-S"])]
        argv += ["-m", "runner.forkserver", "--fd", str(theirs.fileno())]
        argv += ["--parent", str(os.getpid())]
        env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        if self.sandbox is not None:
            env[SANDBOX_ENV] = json.dumps(self.sandbox)
        try:
            self._proc = subprocess.Popen(
                argv,
                pass_fds=[theirs.fileno()],
                env=env,
                cwd=REPO_ROOT,  # `-m runner.forkserver` finds the package here
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C on the worker's terminal is not for it
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock, self._loop = ours, loop
        self._ready = loop.create_future()
        loop.add_reader(ours.fileno(), self._on_readable)
        try:
            self.pid = await asyncio.wait_for(asyncio.shield(self._ready), 30)
        except BaseException:
            await self.close()
            raise

    def on_exit(self, callback: Callable[[int, int], None]) -> None:
        """`callback(pid, code)` for every child that ends, called in the loop.

        It runs after the `spawn` that returned the pid has resumed its caller.
        """
        self._callbacks.append(callback)

    async def spawn(self, spec: dict[str, Any], fds: Sequence[int]) -> int:
        """Forks a child that runs `python_runtime.main(spec)` on `fds` (0..6); returns its pid."""
        return await self._request({"kind": "fork", "spec": spec}, fds)

    async def spawn_exec(self, argv: list[str], spec: dict[str, Any], fds: Sequence[int]) -> int:
        """Forks a child that execs `argv` with the spec in env HUB_LAUNCH; returns its pid."""
        return await self._request({"kind": "exec", "argv": list(argv), "spec": spec}, fds)

    async def close(self) -> None:
        """Kills the zygote; its children die with it, and are reported as exit 137."""
        proc = self._proc
        self._proc = None
        for pid in list(self._live):
            _kill_group(pid)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await _wait_process(proc)
        self._lost("fork server closed")

    # -- requests ---------------------------------------------------------------------------
    async def _request(self, request: dict[str, Any], fds: Sequence[int]) -> int:
        if self._sock is None or self._loop is None:
            raise SpawnError("fork server is not running")
        if len(fds) != CHILD_FDS:
            raise ValueError(f"a child needs {CHILD_FDS} descriptors, got {len(fds)}")
        self._next_id += 1
        request_id = self._next_id
        body = json.dumps({**request, "id": request_id, "nfds": len(fds)}).encode()
        future: asyncio.Future[int] = self._loop.create_future()
        self._pending[request_id] = future
        try:
            async with self._send_lock:
                await self._send(HEADER.pack(len(body)) + body, fds)
            return await future
        finally:
            self._pending.pop(request_id, None)

    async def _send(self, frame: bytes, fds: Sequence[int]) -> None:
        assert self._sock is not None and self._loop is not None
        while True:
            try:
                sent = socket.send_fds(self._sock, [frame], list(fds))
                break
            except (BlockingIOError, InterruptedError):
                await self._writable()
        if sent < len(frame):
            await self._loop.sock_sendall(self._sock, frame[sent:])

    async def _writable(self) -> None:
        assert self._sock is not None and self._loop is not None
        loop, fd = self._loop, self._sock.fileno()
        future: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            loop.remove_writer(fd)
            if not future.done():
                future.set_result(None)

        loop.add_writer(fd, ready)
        try:
            await future
        finally:
            loop.remove_writer(fd)

    # -- replies ----------------------------------------------------------------------------
    def _on_readable(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._zygote_died()
            return
        *lines, self._rbuf = (self._rbuf + data).split(b"\n")
        for line in lines:
            if line:
                self._handle(json.loads(line))

    def _handle(self, message: dict[str, Any]) -> None:
        if "exit" in message:
            pid, code = int(message["exit"]), int(message["code"])
            self._live.discard(pid)
            self._report_exit(pid, code)
        elif "id" in message:
            future = self._pending.get(message["id"])
            if "pid" in message:
                # Counted live here, not in _request: the exit may be in the same read.
                self._live.add(int(message["pid"]))
                if future is not None and not future.done():
                    future.set_result(int(message["pid"]))
            elif future is not None and not future.done():
                future.set_exception(SpawnError(message.get("error", "spawn failed")))
        elif "ready" in message and self._ready is not None and not self._ready.done():
            self._ready.set_result(int(message["ready"]))

    def _report_exit(self, pid: int, code: int) -> None:
        if self._loop is None:
            return
        # call_soon, not a direct call: the task awaiting spawn() for this pid was woken by
        # call_soon too, so it runs first and can learn its pid before the exit arrives.
        for callback in self._callbacks:
            self._loop.call_soon(callback, pid, code)

    def _zygote_died(self) -> None:
        # Its children got SIGKILL with it; their own children might not have, so the groups
        # go too.
        for pid in list(self._live):
            _kill_group(pid)
        self._lost("fork server died")
        proc, self._proc = self._proc, None
        if proc is not None and self._loop is not None:
            self._reaper = self._loop.create_task(_wait_process(proc))  # no zombie left behind

    def _lost(self, why: str) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        self._sock = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(SpawnError(why))
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(SpawnError(why))
        for pid in sorted(self._live):
            self._report_exit(pid, Exit.KILLED)
        self._live.clear()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _wait_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while proc.poll() is None and loop.time() < deadline:
        await asyncio.sleep(0.002)


if __name__ == "__main__":
    zygote_main(sys.argv[1:])
