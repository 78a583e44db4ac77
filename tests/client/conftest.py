"""Fixtures of the client tests: a HostClient on the live hub, the `si` CLI as a subprocess, and
a second hub that admits anonymous clients (for Scramjet's own clients)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from client import HostClient
from tests.conftest import (
    BIN,
    ROOT,
    Hub,
    Person,
    free_port,
    start_web,
    start_worker,
    stop_process,
    wait_for,
    web_url,
)
from tests.packaging import python_package

LIFECYCLE_DIR = ROOT / "examples" / "lifecycle"

FOREVER = """
import asyncio
async def run(context, input):
    async def on_stop(timeout, can_keep_alive):
        print("stop handler", timeout, can_keep_alive, flush=True)
    context.set_stop_handler(on_stop)
    while True:
        yield "tick\\n"
        await asyncio.sleep(0.05)
"""

ECHO = """
async def run(context, input):
    async for line in input:
        yield "echo:" + line
"""

EVENTS = """
import asyncio
async def run(context, input):
    done = asyncio.Event()
    def on_ping(message):
        context.emit("pong", {"got": message})
        done.set()
    context.on("ping", on_ping)
    context.emit("ready", "yes")
    await asyncio.wait_for(done.wait(), 30)
    return "bye"
"""


def package(code: str) -> bytes:
    return python_package(textwrap.dedent(code))


@pytest.fixture
def host(hub: Hub, people: dict[str, Person]) -> Iterator[HostClient]:
    """An admin's client; given the hub's address without /api/v1, as people type it."""
    with HostClient(hub.url, token=people["admin"].token) as client:
        yield client


def si_command() -> list[str]:
    """The installed `si` console script, or the module when the project is not installed."""
    script = BIN / "si"
    return [str(script)] if script.exists() else [sys.executable, "-m", "client.cli"]


class Si:
    """Runs `si` as a subprocess with its own config dir and settings in the environment."""

    def __init__(self, config_dir: Path, api_url: str, token: str | None) -> None:
        self.config_dir = config_dir
        self.env = dict(os.environ)
        self.env.pop("SI_API_URL", None)
        self.env.pop("SI_TOKEN", None)
        self.env.update(
            SI_CONFIG_PATH=str(config_dir / "hub.json"),
            SI_API_URL=api_url,
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
        )
        if token:
            self.env["SI_TOKEN"] = token

    def __call__(
        self,
        *args: str,
        input: bytes | None = None,
        timeout: float = 90,
        check: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [*si_command(), *args],
            input=input,
            capture_output=True,
            timeout=timeout,
            cwd=self.config_dir,
            env={**self.env, **(extra_env or {})},
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"si {' '.join(args)} exited {result.returncode}: "
                f"{result.stderr.decode(errors='replace')}"
            )
        return result

    def popen(self, *args: str) -> subprocess.Popen:
        """Start `si` without waiting (for commands that follow a stream)."""
        return subprocess.Popen(
            [*si_command(), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.config_dir,
            env=self.env,
        )


def wait_connected(pid: int, url: str, count: int = 1, timeout: float = 30) -> None:
    """Wait until process `pid` holds `count` connections to the hub at `url`, plus a moment
    for the hub to register the readers: events emitted after that reach them."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])

    def connected() -> bool:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            raise AssertionError(f"process {pid} ended before connecting") from None
        live = [
            c
            for c in conns
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
        ]
        return len(live) >= count

    wait_for(connected, timeout=timeout, what=f"{count} connection(s) to {url}")
    time.sleep(0.5)


def make_si(config_dir: Path, api_url: str, token: str | None) -> Si:
    config_dir.mkdir(parents=True, exist_ok=True)
    return Si(config_dir, api_url, token)


@pytest.fixture
def si(tmp_path: Path, hub: Hub, people: dict[str, Person]) -> Si:
    """`si` as a subprocess with its own config dir, pointed at the hub as an admin."""
    return make_si(tmp_path, hub.api, people["admin"].token)


@pytest.fixture(scope="session")
def anon_hub(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[Hub]:
    """A second hub (daphne + worker) on the same database with HUB_ANONYMOUS_ROLE=admin, as a
    single-user STH is: Scramjet's clients send no token."""
    tmp = tmp_path_factory.mktemp("anon-hub")
    with django_db_blocker.unblock():
        worker = start_worker(tmp, name="anon-worker", HUB_ANONYMOUS_ROLE="admin")
        web = start_web(tmp, free_port(), HUB_ANONYMOUS_ROLE="admin")
    try:
        yield Hub(url=web_url(web), web=web, worker=worker)
    finally:
        stop_process(web.proc)
        stop_process(worker.proc)
