"""The hub's own subprocesses (web, worker, beat, Redis): how the web is started, and stopping
them politely, then firmly."""

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from daphne.endpoints import build_endpoint_description_strings

# Connections waiting to be accepted. Twisted's default, 50, overflowed when 200 clients
# connected at once: the kernel answered the overflow with SYN cookies, and requests sent on
# those connections were reset.
LISTEN_BACKLOG = 1024


def web_argv(bin_dir: Path, host: str, port: int, *options: str) -> list[str]:
    """The daphne command line that serves the hub on host:port.

    Never with `--proxy-headers`: daphne would then take the client's address from
    X-Forwarded-For whoever sent it. The hub believes that header only from the peers in
    HUB_TRUSTED_PROXIES (dashboard/views/common.py:client_ip).
    """
    endpoint = build_endpoint_description_strings(host=host, port=port)[0]
    return [
        str(bin_dir / "daphne"),
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
