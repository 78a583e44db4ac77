"""What every benchmark shares: a private hub (daphne + Celery worker), a token, packages, tables.

Each benchmark boots its own hub on a scratch SQLite database and data directory under
`var/bench/`, on the machine's Redis (127.0.0.1:6379) with a queue of its own, so it neither
sees nor disturbs a hub that is already running. Everything listens on loopback only and is
stopped when the `with` block ends.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tarfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dashboard.processes import stop_process, web_argv, worker_argv

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
VAR = ROOT / "var" / "bench"
RESULTS = ROOT / "bench" / "results"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


# -- numbers -----------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# -- reporting ---------------------------------------------------------------------------------


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n{title}")
    print("-" * (width + 3 + max(len(v) for _, v in rows)))
    for name, value in rows:
        print(f"{name.ljust(width)} | {value}")


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"bench": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), **data}
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nwritten: {path.relative_to(ROOT)}")
    return path


# -- packages ----------------------------------------------------------------------------------


def python_package(code: str, name: str = "bench-seq") -> bytes:
    """A tar.gz of a Python sequence whose main.py is `code` (dedented)."""
    members = {
        "package.json": json.dumps(
            {"name": name, "version": "1.0.0", "main": "main.py", "engines": {"python3": "3.11"}}
        ),
        "main.py": textwrap.dedent(code),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for member, content in members.items():
            data = content.encode()
            info = tarfile.TarInfo(member)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# -- the hub -----------------------------------------------------------------------------------


@dataclass
class Hub:
    name: str
    data_dir: Path
    env: dict[str, str]
    port: int
    token: str = ""
    session_cookie: str = ""
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return self.url + "/api/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.api, headers=self.headers, timeout=timeout)

    def async_client(self, timeout: float = 60, connections: int = 100) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(
            base_url=self.api, headers=self.headers, timeout=timeout, limits=limits
        )

    def upload(self, code: str) -> str:
        with self.client() as api:
            response = api.post(
                "/sequence",
                content=python_package(code),
                headers={"Content-Type": "application/octet-stream"},
            )
            response.raise_for_status()
            return response.json()["id"]

    @property
    def worker_pid(self) -> int:
        return self.procs["worker"].pid

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by the web, the worker, and the worker's descendants (the fork
        server and the instances it forked and reaped): a load-independent cost measure."""
        import psutil

        def own(proc: psutil.Process) -> float:
            times = proc.cpu_times()
            return times.user + times.system

        result = {"web": own(psutil.Process(self.procs["web"].pid)), "worker": 0.0}
        children = 0.0
        for which in self.worker_procs:
            worker = psutil.Process(self.procs[which].pid)
            result["worker"] += own(worker)
            for child in worker.children(recursive=True):
                try:
                    times = child.cpu_times()
                    children += times.user + times.system + times.children_user
                    children += times.children_system
                except psutil.Error:
                    pass
        result["instances"] = children
        return result

    @property
    def worker_procs(self) -> list[str]:
        """The names in `procs` of the hub's workers (one unless `running_hub(workers=N)`)."""
        return [which for which in self.procs if which.startswith("worker")]

    def log_tail(self, which: str, size: int = 3000) -> str:
        path = self.data_dir / f"{which}.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _hub_env(data_dir: Path, queue: str, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="dashboard.settings",
        HUB_DATA_DIR=str(data_dir),
        # BENCH_DATABASE_URL: a PostgreSQL database of the bench's own, as a hub of many
        # instances runs on; SQLite in the bench's folder otherwise.
        DATABASE_URL=os.environ.get("BENCH_DATABASE_URL")
        or f"sqlite:///{data_dir / 'hub.sqlite3'}",
        REDIS_URL=REDIS_URL,
        HUB_QUEUE=queue,
        HUB_REDIS_PREFIX=f"bench-{queue}",
        SECRET_KEY=secrets.token_urlsafe(40),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        # The hub's code comes from this checkout (a worktree too), not from where the
        # editable install points.
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
    )
    env.update(extra)
    return env


def _django_setup(env: dict[str, str]) -> None:
    """Point this process's Django at the bench database (once per process: settings are read
    at setup, so a second hub in the same process would need a new process)."""
    import django
    from django.conf import settings

    if settings.configured:
        raise RuntimeError("one bench hub per process: Django is already set up")
    for key in (
        "DJANGO_SETTINGS_MODULE",
        "HUB_DATA_DIR",
        "DATABASE_URL",
        "REDIS_URL",
        "HUB_QUEUE",
        "HUB_REDIS_PREFIX",
        "SECRET_KEY",
        "ALLOWED_HOSTS",
        "LOG_LEVEL",
    ):
        os.environ[key] = env[key]
    sys.path.insert(0, str(ROOT))
    django.setup()


def _make_admin() -> tuple[str, str]:
    """An admin with an API token and a logged-in session, made through the ORM."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import Group, User
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command

    from accounts.access import ensure_groups
    from accounts.models import ApiToken

    call_command("migrate", verbosity=0, interactive=False)
    ensure_groups()
    user = User.objects.create_user(username="bench-admin", password=secrets.token_hex(12))
    user.groups.add(Group.objects.get(name="admin"))
    _, raw = ApiToken.issue(user, "bench")
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return raw, session.session_key or ""


def _spawn(hub: Hub, which: str, argv: list[str]) -> None:
    log = (hub.data_dir / f"{which}.log").open("wb")
    hub.procs[which] = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=hub.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait(what: str, check: Callable[[], bool], hub: Hub, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for which, proc in hub.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{which} exited early:\n{hub.log_tail(which)}")
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def _worker_ready(count: int = 1) -> bool:
    from django.db import close_old_connections

    from sequences.models import Worker

    close_old_connections()
    return Worker.objects.filter(stopped__isnull=True).count() >= count


def _web_ready(url: str) -> bool:
    try:
        return httpx.get(url + "/login/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def running_hub(
    name: str, worker_threads: int = 16, keep: bool = False, workers: int = 1, **extra_env: str
) -> Iterator[Hub]:
    """A fresh hub for one benchmark: migrate, admin token, worker(s), daphne; stopped after.
    `workers`: how many worker processes serve its queue (`procs` "worker", "worker2", ...)."""
    data_dir = VAR / f"{name}-{os.getpid()}"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    queue = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    env = _hub_env(data_dir, queue, extra_env)
    _django_setup(env)
    hub = Hub(name=name, data_dir=data_dir, env=env, port=free_port())
    hub.token, hub.session_cookie = _make_admin()
    try:
        for index in range(workers):
            _spawn(
                hub,
                "worker" if index == 0 else f"worker{index + 1}",
                worker_argv(
                    BIN,
                    queue,
                    worker_threads,
                    "--without-heartbeat",
                    "-l",
                    "WARNING",
                    "-n",
                    f"{queue}@%h" if index == 0 else f"{queue}-{index + 1}@%h",
                ),
            )
        _spawn(
            hub,
            "web",
            web_argv(BIN, "127.0.0.1", hub.port),
        )
        _wait("the workers' supervisors", lambda: _worker_ready(workers), hub)
        _wait("daphne", lambda: _web_ready(hub.url), hub)
        yield hub
    finally:
        for which in ("web", *hub.worker_procs):
            proc = hub.procs.get(which)
            if proc is not None:
                stop_process(proc)
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)


# -- instances ---------------------------------------------------------------------------------


def start_instance(api: httpx.Client, seq_id: str, args: list[Any] | None = None) -> str:
    response = api.post(f"/sequence/{seq_id}/start", json={"args": args or []})
    if response.status_code != 200:
        raise RuntimeError(f"start answered {response.status_code}: {response.text}")
    return response.json()["id"]


async def astart_instance(
    api: httpx.AsyncClient, seq_id: str, args: list[Any] | None = None
) -> str:
    response = await api.post(f"/sequence/{seq_id}/start", json={"args": args or []})
    if response.status_code != 200:
        raise RuntimeError(f"start answered {response.status_code}: {response.text}")
    return response.json()["id"]


def wait_all_ended(api: httpx.Client, ids: Sequence[str], timeout: float = 60) -> dict[str, str]:
    """Status of each instance once none is live (or at the timeout)."""
    live = {"initializing", "starting", "running", "stopping", "killing"}
    deadline = time.monotonic() + timeout
    statuses: dict[str, str] = {}
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        still = []
        for iid in pending:
            status = api.get(f"/instance/{iid}").json().get("status", "?")
            statuses[iid] = status
            if status in live:
                still.append(iid)
        pending = still
        if pending:
            time.sleep(0.2)
    return statuses


def bare_python_argv(code: str) -> list[str]:
    """The interpreter the hub runs sequences with, started bare: the baseline of a start."""
    return [sys.executable, "-c", code]
