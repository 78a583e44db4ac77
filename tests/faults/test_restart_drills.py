"""Pieces of the hub restart while instances print numbered lines, and nothing is lost.

Each drill restarts a server of its own, never the machine's: PostgreSQL (a private cluster made
with initdb), Redis (a private redis-server, also frozen with SIGSTOP to play a partition) and
the web (daphne). Every one is stopped and its folder removed even when the drill fails.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
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
        subprocess.run(
            [*manage, "hub_init"],
            cwd=ROOT,
            env=full,
            check=True,
            timeout=180,
            stdout=subprocess.DEVNULL,
        )
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
    followers = {
        iid: Follower(str(hub.api.base_url), dict(hub.api.headers), iid) for iid in (short, *longs)
    }
    for follower in followers.values():
        follower.start()
    wait_for(
        lambda: all(len(f.seen()) >= 5 for f in followers.values()),
        timeout=30,
        what="lines before the stop",
    )

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


# -- Redis restarted, or frozen ---------------------------------------------------------------

# Prints `line N` and emits the event `tick` with N, `every` seconds apart.
TICKING = """
import asyncio
async def run(context, input, upto='50', every='0.1'):
    for n in range(1, int(upto) + 1):
        print("line", n, flush=True)
        context.emit("tick", n)
        await asyncio.sleep(float(every))
    return "done"
"""


class Collector(threading.Thread):
    """Reads one streaming GET to its end, on a connection of its own; the text, or the error."""

    def __init__(self, api: httpx.Client, path: str, timeout: float = 60) -> None:
        super().__init__(daemon=True)
        self.api, self.path, self.timeout = api, path, timeout
        self.text = ""
        self.status: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with (
                httpx.Client(base_url=self.api.base_url, headers=self.api.headers) as client,
                client.stream("GET", self.path, timeout=self.timeout) as stream,
            ):
                self.status = stream.status_code
                for piece in stream.iter_text():
                    self.text += piece
        except BaseException as exc:  # reported by the drill
            self.error = exc

    def lines(self) -> list[str]:
        return self.text[: self.text.rfind("\n") + 1].splitlines()


def test_a_redis_restart_with_every_kind_of_reader(private_hub, private_redis: PrivateRedis):
    """Redis is killed (nothing kept) and started again 4 s later while readers follow: an
    instance's stdout and its events, the host log and a topic. Each resumes after the restart
    without a repeat, and the ones of an instance end when it does; the last event is answered
    from the database while Redis is away, and a `once` asked then gets the next one after."""
    env = {"REDIS_URL": private_redis.url}
    hub = private_hub(web_env=env, worker_env=env)
    seq = upload(hub.api, python_package(TICKING))
    iid = start(hub.api, seq, {"args": ["100", "0.1"]})  # ~10 s
    assert hub.api.post("/topics", json={"id": "drill", "content-type": "text/plain"}).is_success
    readers = {
        "stdout": Collector(hub.api, f"/instance/{iid}/stdout"),
        "events": Collector(hub.api, f"/instance/{iid}/events/tick"),
        "log": Collector(hub.api, "/log"),
        "topic": Collector(hub.api, "/topic/drill"),
    }
    for reader in readers.values():
        reader.start()
    wait_for(
        lambda: len(numbers(readers["stdout"].text)) >= 5 and readers["events"].lines(),
        timeout=20,
        what="lines and events before the restart",
    )
    assert hub.api.post("/topic/drill", content=b"before\n").is_success
    wait_for(lambda: "before" in readers["topic"].text, timeout=10, what="the topic's first line")

    assert private_redis.proc is not None
    private_redis.proc.kill()  # no goodbye, nothing kept
    private_redis.proc.wait()
    private_redis.proc = None
    down_at = time.monotonic()
    # The last event comes from the database; a `once` waits for Redis.
    last = hub.api.get(f"/instance/{iid}/event/tick", timeout=15)
    assert last.status_code == 200 and last.json() >= 5, last.text
    once = Collector(hub.api, f"/instance/{iid}/once/tick")
    once.start()
    time.sleep(max(0.0, 4 - (time.monotonic() - down_at)))
    assert info(hub.api, iid)["status"] == "running"
    private_redis.start()
    ticked_after = hub.api.get(f"/instance/{iid}/event/tick").json()

    once.join(timeout=20)
    assert once.error is None and once.status == 200, (once.error, once.text)
    assert int(once.text) >= last.json()  # an event emitted after it asked
    assert hub.api.post("/topic/drill", content=b"after\n").is_success
    # An instance started now is in the host log, which its reader follows after the restart.
    plain = upload(hub.api, python_package("def run(context, input):\n    return 'ok'\n"))
    other = start(hub.api, plain)
    wait_for(
        lambda: f"instance {other} started" in readers["log"].text,
        timeout=20,
        what="a host log line after the restart",
    )
    wait_for(lambda: "after" in readers["topic"].text, timeout=20, what="the topic after")
    assert readers["topic"].text.splitlines() == ["before", "after"]

    for name in ("stdout", "events"):
        readers[name].join(timeout=30)
        assert not readers[name].is_alive(), f"the {name} reader hangs"
        assert readers[name].error is None, (name, readers[name].error)
    assert wait_ended(hub.api, iid)["status"] == "completed"
    assert numbers(readers["stdout"].text) == list(range(1, 101))
    ticks = [int(line) for line in readers["events"].lines()]
    assert ticks == sorted(set(ticks)), "events repeated or out of order"
    assert ticks[-1] == 100 and ticked_after in ticks  # it went on after the restart
    # Those emitted while Redis was away came too: the worker's outbox held them. (A margin
    # for the few a kill may take, written to the old Redis and not yet read.)
    during = set(range(last.json() + 5, ticked_after))
    assert during and not during - set(ticks), sorted(during - set(ticks))


def test_a_frozen_redis_does_not_hang_readers(private_hub, private_redis: PrivateRedis):
    """Redis stops answering (SIGSTOP: connections stay open, nothing comes back, as in a
    network partition) for longer than a reader blocks: the reader of an instance that ended
    meanwhile ends, from the database, before Redis answers again; the reader of one that goes
    on resumes once it does. No line is lost or repeated."""
    env = {"REDIS_URL": private_redis.url}
    hub = private_hub(web_env=env, worker_env=env)
    seq = upload(hub.api, python_package(NUMBERED))
    short = start(hub.api, seq, {"args": ["30", "0.1"]})  # ends ~2 s into the freeze
    long = start(hub.api, seq, {"args": ["170", "0.1"]})  # outlives it
    readers = {iid: Collector(hub.api, f"/instance/{iid}/stdout") for iid in (short, long)}
    for reader in readers.values():
        reader.start()
    wait_for(
        lambda: all(len(numbers(r.text)) >= 10 for r in readers.values()),
        timeout=20,
        what="lines before the freeze",
    )
    assert private_redis.proc is not None
    os.kill(private_redis.proc.pid, signal.SIGSTOP)
    try:
        frozen_at = time.monotonic()
        readers[short].join(timeout=17)
        assert not readers[short].is_alive(), "the reader hangs on a frozen Redis"
        assert time.monotonic() - frozen_at < 16
    finally:
        os.kill(private_redis.proc.pid, signal.SIGCONT)
    assert readers[short].error is None, readers[short].error
    assert numbers(readers[short].text) == list(range(1, 31))
    readers[long].join(timeout=30)
    assert not readers[long].is_alive() and readers[long].error is None, readers[long].error
    assert numbers(readers[long].text) == list(range(1, 171))
    assert wait_ended(hub.api, long)["status"] == "completed"


# -- the web restarted ------------------------------------------------------------------------


class ClientFollower(threading.Thread):
    """`InstanceClient.get_lines("stdout")` of the Python client, to the end."""

    def __init__(self, url: str, token: str, iid: str) -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.iid = url, token, iid
        self.lines: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        from client import HostClient

        try:
            with HostClient(self.url, self.token) as host:
                for line in host.get_instance_client(self.iid).get_lines("stdout"):
                    self.lines.append(line)
        except BaseException as exc:  # reported by the drill
            self.error = exc


def test_a_web_restart_while_clients_follow(private_hub, people, tmp_path):
    """The web (daphne) is stopped as a service manager restarts it (SIGTERM) and started again
    while clients follow. A bare HTTP stream breaks; the Python client and `si inst stdout`
    reconnect and resume, every line once; the console's page (a real Chromium running the
    htmx WebSocket extension) sees an abnormal close, reconnects by itself, and heals from the
    snapshot: the instance that ended meanwhile shows completed, with all its lines."""
    from playwright.sync_api import expect, sync_playwright

    from tests.e2e.conftest import chromium

    browser_path = chromium()
    if browser_path is None:
        message = "no Chromium: `apt-get install chromium` or `python -m playwright install`"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    hub = private_hub()
    url = f"http://127.0.0.1:{hub.web.port}"
    admin = people["admin"]
    seq = upload(hub.api, python_package(NUMBERED))
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=browser_path, args=["--no-sandbox", "--headless", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.goto(url + "/login/")
            page.fill("input[name=username]", admin.username)
            page.fill("input[name=password]", admin.password)
            page.click("button.primary")
            page.wait_for_url(url + "/")
            short = start(hub.api, seq, {"args": ["40", "0.1"]})  # ends while the web is down
            long = start(hub.api, seq, {"args": ["120", "0.1"]})  # outlives the restart

            bare = Collector(hub.api, f"/instance/{long}/stdout")
            library = ClientFollower(url, admin.token, long)
            cli = subprocess.Popen(
                [sys.executable, "-m", "client.cli", "inst", "stdout", long],
                cwd=ROOT,
                env={
                    **os.environ,
                    "HOME": str(tmp_path),
                    "SI_API_URL": url,
                    "SI_TOKEN": admin.token,
                },
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            cli_out: list[bytes] = []
            cli_reader = threading.Thread(target=lambda: cli_out.extend(cli.stdout), daemon=True)
            cli_reader.start()
            bare.start()
            library.start()
            page.goto(f"{url}/instances/{short}/")
            live = page.locator("[data-live]").first
            expect(live).to_have_class(re.compile("ws-open"))
            page.evaluate(
                """() => { window.closes = [];
                document.addEventListener("htmx:wsClose",
                    e => window.closes.push(e.detail.event.code)); }"""
            )
            wait_for(
                lambda: len(numbers(bare.text)) >= 10 and len(library.lines) and len(cli_out),
                timeout=20,
                what="every client to follow",
            )

            assert info(hub.api, long)["status"] == "running"
            stop_process(hub.web.proc)  # SIGTERM, as systemd or a rolling upgrade does
            down_at = time.monotonic()
            bare.join(timeout=10)
            assert bare.error is not None, "a bare stream cannot outlive its server"
            expect(live).to_have_class(re.compile("ws-closed"))
            # Codes the htmx extension reconnects after (1006: the connection dropped).
            codes = page.evaluate("window.closes")
            assert codes and all(c in (1006, 1011, 1012, 1013) for c in codes), codes
            time.sleep(max(0.0, 5 - (time.monotonic() - down_at)))
            hub.web = start_web(tmp_path, hub.web.port, HUB_QUEUE=hub.queue)

            # The page reconnects by itself and heals from the snapshot.
            expect(live).to_have_class(re.compile("ws-open"), timeout=30_000)
            expect(page.locator("#inst-status [data-status]")).to_have_attribute(
                "data-status", "completed"
            )
            lines = page.locator("#log-stdout-lines")
            expect(lines).to_contain_text("line 40")  # the snapshot's lines follow its status
            shown = lines.inner_text()
            assert numbers(shown + "\n") == list(range(1, 41)), shown
        finally:
            browser.close()

    library.join(timeout=40)
    assert not library.is_alive() and library.error is None, library.error
    assert numbers("\n".join(library.lines) + "\n") == list(range(1, 121))
    assert cli.wait(timeout=40) == 0, cli.stderr.read() if cli.stderr else ""
    cli_reader.join(timeout=10)
    assert numbers(b"".join(cli_out).decode()) == list(range(1, 121))
    assert wait_ended(hub.api, long)["status"] == "completed"


def test_a_redis_restart_under_a_sequencer_events_reader(private_hub, private_redis):
    """A sequencer's events stream, open when Redis is killed, stays open, reports the change
    made after the restart (the database's version check finds it even if no notice came) and
    ends when the sequencer is Killed; `queryFinal` asked during the outage answers after it."""
    from tests.sequences.sequencer_kit import Kit, setup

    env = {"REDIS_URL": private_redis.url}
    hub = private_hub(web_env=env, worker_env=env)
    kit = Kit(hub.api, hub.api)
    try:
        sid = kit.load()["id"]
        run_id = kit.send(sid, "submit", {"commands": [setup("move", sleep=6)]})["runId"]
        reader = Collector(hub.api, f"/sequencer/{sid}/events")
        reader.start()
        wait_for(lambda: '"Running"' in reader.text, timeout=15, what="the events stream")
        final = Collector(hub.api, f"/sequencer/{sid}/queryFinal/{run_id}?timeout=40")

        assert private_redis.proc is not None
        private_redis.proc.kill()
        private_redis.proc.wait()
        private_redis.proc = None
        final.start()  # asked while Redis is away
        time.sleep(3)
        private_redis.start()

        final.join(timeout=45)
        assert final.status == 200 and '"Completed"' in final.text, (final.error, final.text)
        kit.send(sid, "shutdown")
        reader.join(timeout=30)
        assert not reader.is_alive(), "the events stream must end once the sequencer is Killed"
        assert reader.error is None, reader.error
        lines = [json.loads(line) for line in reader.lines()]
        versions = [line["version"] for line in lines]
        assert versions == sorted(set(versions)), "a change twice, or out of order"
        assert lines[-1]["state"] == "Killed"
        assert "Idle" in [line["state"] for line in lines[1:]]  # the run ended meanwhile
    finally:
        kit.cleanup()
