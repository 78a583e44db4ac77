"""Fault drills: helpers shared by the files of tests/faults/.

Every drill runs against real processes (daphne, Celery workers, forked children) through the
`private_hub` fixture, so killing or starving them harms no other test.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import IN_CI, free_port, wait_for

REDIS_SERVER = "/usr/bin/redis-server"

FOREVER = """
import asyncio
async def run(context, input):
    n = 0
    while True:
        n += 1
        print("alive", n, flush=True)
        await asyncio.sleep(0.2)
"""


def start(api: httpx.Client, seq: str, body: dict | None = None) -> str:
    response = api.post(f"/sequence/{seq}/start", json=body or {})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def info(api: httpx.Client, iid: str) -> dict:
    response = api.get(f"/instance/{iid}")
    assert response.status_code == 200, response.text
    return response.json()


def status(api: httpx.Client, iid: str) -> str:
    return info(api, iid)["status"]


def wait_ended(api: httpx.Client, iid: str, timeout: float = 30) -> dict:
    """The instance's info once it left the live statuses."""
    live = {"initializing", "starting", "running", "stopping", "killing"}
    return wait_for(
        lambda: (data := info(api, iid))["status"] not in live and data,
        timeout=timeout,
        interval=0.2,
        what=f"instance {iid} to end",
    )


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_hub_runs_a_normal_instance(api: httpx.Client, seq: str) -> None:
    """The hub is unaffected: a fresh instance of a plain sequence runs and completes."""
    iid = start(api, seq, {"args": ["after"]})
    assert api.get(f"/instance/{iid}/output").content == b"ok after"
    assert wait_ended(api, iid)["status"] == "completed"


PLAIN = "def run(context, input, word='x'):\n    return 'ok ' + word\n"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 and not IN_CI, reason="children change user only as root"
)

# Helpers of hostile sequences: what an attempt came to ("ok", "denied", "absent", ...).
ATTEMPT = """
import json, os, signal, socket, sys
def attempt(action):
    try:
        result = action()
        return "ok" if result is None else result
    except FileNotFoundError:
        return "absent"
    except PermissionError:
        return "denied"
    except OSError as exc:
        return type(exc).__name__
def read(path):
    with open(path, "rb") as f:
        return "ok: " + f.read(40).decode("latin-1")
def redis_tcp(port):
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"PING\\r\\n")
        return "answered: " + s.recv(64).decode("latin-1")
"""


@dataclass
class PrivateRedis:
    """A redis-server of our own on a free port: restarting it harms nobody else."""

    port: int
    folder: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.folder / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self.answers, timeout=10, what="redis-server to answer")

    def answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if not Path(REDIS_SERVER).exists():
        if IN_CI:
            pytest.fail(f"{REDIS_SERVER} is not installed (apt-get install redis-server)")
        pytest.skip(f"{REDIS_SERVER} is not installed (apt-get install redis-server)")
    folder = tmp_path / "redis"
    folder.mkdir()
    server = PrivateRedis(port_outside_the_ephemeral_range(), folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()  # its log stays in tmp_path, for a failed drill


def port_outside_the_ephemeral_range() -> int:
    """A free port the kernel never picks as a client's source port.

    While the server is down, clients retry connecting; with a port in the ephemeral range one
    retry can pick that very port as its source and connect to itself, and then it "talks to
    Redis" through a socket that echoes its own commands. Real Redis ports (6379) are safe.
    """
    low, _high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def rss_tree(pid: int) -> int:
    """Resident memory of a process and its descendants, in bytes."""
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total
    return 0


def rss(pid: int) -> int:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).memory_info().rss
    return 0


def poll(predicate, timeout: float, interval: float = 0.2) -> bool:
    """Like wait_for, but answers False on timeout instead of failing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
