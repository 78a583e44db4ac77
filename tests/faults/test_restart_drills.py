"""Pieces of the hub restart while instances print numbered lines, and nothing is lost.

Each drill restarts a server of its own, never the machine's: PostgreSQL (a private cluster made
with initdb), Redis (a private redis-server, also frozen with SIGSTOP to play a partition) and
the web (daphne). Every one is stopped and its folder removed even when the drill fails.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    IN_CI,
    ROOT,
    ProcessHandle,
    free_port,
    hub_env,
    start_web,
    start_worker,
    stop_process,
    wait_for,
)
from tests.faults.conftest import PrivateRedis, info, start, wait_ended
from tests.packaging import python_package, upload

# Prints `line N` for N = 1..upto, `every` seconds apart, then returns.
NUMBERED = """
import asyncio
async def run(context, input, upto='50', every='0.1'):
    for n in range(1, int(upto) + 1):
        print("line", n, flush=True)
        await asyncio.sleep(float(every))
    return "done"
"""


def numbers(text: str) -> list[int]:
    """The N of each complete `line N` line."""
    whole = text[: text.rfind("\n") + 1]
    return [int(line.split()[1]) for line in whole.splitlines() if line.startswith("line ")]


class Follower(threading.Thread):
    """Reads an instance's stdout over HTTP from the start, on a connection of its own."""

    def __init__(self, base_url: str, headers: dict[str, str], iid: str) -> None:
        super().__init__(daemon=True)
        self.base_url, self.headers, self.iid = base_url, headers, iid
        self.text = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with (
                httpx.Client(base_url=self.base_url, headers=self.headers) as client,
                client.stream("GET", f"/instance/{self.iid}/stdout", timeout=60) as stream,
            ):
                for piece in stream.iter_text():
                    self.text += piece
        except BaseException as exc:  # reported by the drill
            self.error = exc

    def seen(self) -> list[int]:
        return numbers(self.text)


# -- a private PostgreSQL --------------------------------------------------------------------


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of our own on a free port, run as the `postgres` user (initdb
    refuses root): stopping it harms nobody else."""

    bin: Path
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/hub"

    def _run(self, *argv: str, timeout: float = 60) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*as_postgres, *argv],
            check=True,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.folder / "data"),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        )
        self.start()
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "hub")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} "
            "-c fsync=off -c max_connections=200"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.folder / "data"),
            "-l",
            str(self.folder / "postgres.log"),
            "-o",
            options,
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends every session (as a restart does); `immediate` is a crash."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", mode, "stop")


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    pg_bin = postgres_bin()
    if pg_bin is None:
        message = "PostgreSQL's server binaries are not installed (apt-get install postgresql)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    # Not under pytest's tmp_path: the postgres user must be able to enter the folder.
    folder = Path(tempfile.mkdtemp(prefix="hub-drill-pg-"))
    folder.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    server = PrivatePostgres(pg_bin, folder, free_port())
    try:
        server.init()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class StandaloneHub:
    """A web and a worker on a database and a queue of their own."""

    api: httpx.Client
    web: ProcessHandle
    worker: ProcessHandle
    env: dict[str, str]


@pytest.fixture
def standalone_hub(tmp_path: Path) -> Iterator:
    """Makes hubs whose database is not the suite's: its tables are made with hub_init and its
    admin's token with hub_token, as an operator would."""
    made: list[StandaloneHub] = []

    def make(**env: str) -> StandaloneHub:
        env = {"HUB_QUEUE": f"drill-{uuid.uuid4().hex[:6]}", **env}
        full = hub_env(**env)
        manage = [sys.executable, "manage.py"]
        subprocess.run([*manage, "hub_init"], cwd=ROOT, env=full, check=True, timeout=180,
                       stdout=subprocess.DEVNULL)
        token = subprocess.run(
            [*manage, "hub_token", "admin", "--name", "drill"],
            cwd=ROOT,
            env=full,
            check=True,
            timeout=60,
            capture_output=True,
            text=True,
        ).stdout.strip()
        worker = start_worker(tmp_path, "worker", **env)
        web = start_web(tmp_path, free_port(), **env)
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{web.port}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        hub = StandaloneHub(api, web, worker, env)
        made.append(hub)
        return hub

    yield make
    for hub in made:
        hub.api.close()
        stop_process(hub.web.proc)
        stop_process(hub.worker.proc)


def test_a_postgresql_restart_mid_stream(private_postgres: PrivatePostgres, standalone_hub):
    """PostgreSQL stops for a few seconds while instances print numbered lines: the worker's
    batched writer holds what it could not write and writes it when the database is back.
    Every line ends up in the database once and in order, each instance ends with the right
    status (one of them ended while the database was away), and the web answers errors while
    the database is down and works again after."""
    hub = standalone_hub(DATABASE_URL=private_postgres.url)
    seq = upload(hub.api, python_package(NUMBERED))
    short = start(hub.api, seq, {"args": ["30", "0.05"]})  # ends while the database is away
    longs = [start(hub.api, seq, {"args": ["120", "0.05"]}) for _ in range(3)]  # ~6 s
    followers = {iid: Follower(str(hub.api.base_url), dict(hub.api.headers), iid)
                 for iid in (short, *longs)}
    for follower in followers.values():
        follower.start()
    wait_for(lambda: all(len(f.seen()) >= 5 for f in followers.values()), timeout=30,
             what="lines before the stop")

    private_postgres.stop("fast")  # every session ends, as in a restart
    down_at = time.monotonic()
    # While it is away the web answers, with an error, and promptly.
    answered = hub.api.get(f"/instance/{short}", timeout=30)
    assert answered.status_code == 503, answered.text
    assert answered.json()["code"] == "DATABASE_UNAVAILABLE"
    assert time.monotonic() - down_at < 8
    time.sleep(max(0.0, 4 - (time.monotonic() - down_at)))
    private_postgres.start()

    for iid in (short, *longs):
        data = wait_ended(hub.api, iid, timeout=60)
        assert data["status"] == "completed", data
        assert data["terminated"]["exitcode"] == 0, data
        stored = hub.api.get(f"/instance/{iid}/stdout").text  # ended: read from the database
        expected = list(range(1, 31 if iid == short else 121))
        assert numbers(stored) == expected, f"{iid}: lines lost or repeated in the database"
        assert hub.api.get(f"/instance/{iid}/output").text == "done"
    # Live readers that followed through the outage saw every line once.
    for iid, follower in followers.items():
        follower.join(timeout=30)
        assert not follower.is_alive() and follower.error is None, (iid, follower.error)
        assert follower.seen() == list(range(1, 31 if iid == short else 121))
    # The worker goes on taking starts.
    after = start(hub.api, seq, {"args": ["3", "0.01"]})
    assert wait_ended(hub.api, after)["status"] == "completed"
