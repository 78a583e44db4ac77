"""Shared fixtures: a real hub (daphne + Celery worker subprocesses) on the test database,
users for each role with API tokens, and package builders."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import django
import httpx
import pytest
from django.conf import settings
from django.db import connection

from dashboard.processes import start_redis, stop_process, web_argv, worker_argv

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
QUEUE = f"test-{uuid.uuid4().hex[:8]}"
# In CI a missing tool fails the tests that need it; on a laptop they are skipped, saying why.
IN_CI = bool(os.environ.get("CI"))


def pytest_configure(config: pytest.Config) -> None:
    _before_settings(config)
    django.setup()  # as before this hook when pytest's configuration named the settings
    # A worker left over from `make run` must not take the tests' start requests.
    settings.CELERY_TASK_DEFAULT_QUEUE = QUEUE
    from dashboard.data_dir import prepare_data_dir

    prepare_data_dir()  # what `hub_init` does before a hub starts
    READIED.add(str(settings.HUB_DATA_DIR))
    key_file = settings.SECRET_KEY_FILE
    if key_file is not None and key_file in settings.HUB_MISSING_SECRETS:
        # Settings were read before it was made (the folder's first run): the key the hubs
        # started by the suite read, as the next run will.
        settings.SECRET_KEY = key_file.read_text().strip()
    _retry_flush_on_deadlock()
    if not os.environ.get("PYTEST_XDIST_WORKER") and getattr(config.option, "numprocesses", 0):
        # The processes pytest-xdist starts inherit this environment: without the settings
        # module in it, each reads settings only in its own _before_settings (its data folder,
        # its hub id), not in pytest-django's early read of the controller's.
        os.environ.pop("DJANGO_SETTINGS_MODULE", None)


def _before_settings(config: pytest.Config) -> None:
    """What the suite gives settings before they are read: the Redis REDIS_URL names or, with
    none named, one of the suite's own (so `make test` needs nothing but Python, as `make run`).

    DJANGO_SETTINGS_MODULE is set here rather than in pytest's configuration for this: with it
    there, pytest-django reads settings before any conftest is loaded; without, it sets Django
    up after this hook (its own pytest_configure runs last).

    The suite's hubs share one hub id (HUB_ID, sequences/hubs.py), this run's own: the tests
    empty the database between them, and with it the row a hub would keep its id in.
    """
    os.environ["HUB_ID"] = QUEUE
    xdist = os.environ.get("PYTEST_XDIST_WORKER")
    if xdist:
        # One of several processes running the suite (make test): a data folder of its own
        # (pytest-django gives it a database of its own; its hubs' Redis keys carry its HUB_ID).
        base = Path(os.environ.get("HUB_DATA_DIR") or ROOT / "var")
        os.environ["HUB_DATA_DIR"] = str(base / f"tests-{xdist}")
    if os.environ.get("REDIS_URL"):
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
        return
    if settings.configured:
        raise pytest.UsageError(
            "Settings were read before the suite could start a Redis for them "
            "(DJANGO_SETTINGS_MODULE set outside pytest): unset it, or set REDIS_URL."
        )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    # The tests expect what a REDIS_URL usually names: TCP, no password (the sandbox tests
    # check that children cannot reach its port; the exposure tests, that it is named).
    folder = Path(tempfile.mkdtemp(prefix="hub-tests-redis-"))
    port = free_port()
    redis_server = start_redis(folder, port=port)
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"

    def stop() -> None:
        stop_process(redis_server, timeout=5)
        shutil.rmtree(folder, ignore_errors=True)

    config.add_cleanup(stop)


def _retry_flush_on_deadlock() -> None:
    """Emptying the database between tests races the hub's processes, which keep writing
    (heartbeats, late output): on PostgreSQL the TRUNCATE can lose a deadlock; try it again."""
    from django.db import OperationalError
    from django.db.backends.base.operations import BaseDatabaseOperations

    flush = BaseDatabaseOperations.execute_sql_flush

    def retrying(self: BaseDatabaseOperations, sql_list: list[str]) -> None:
        for attempt in range(5):
            try:
                return flush(self, sql_list)
            except OperationalError as exc:
                if "deadlock" not in str(exc) or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    BaseDatabaseOperations.execute_sql_flush = retrying


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url() -> str:
    """The test database as a URL, for the hub's subprocesses."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    auth = f"{user}:{db['PASSWORD']}" if db.get("PASSWORD") else user
    return (
        f"postgres://{auth}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"
    )


# Data folders readied for the hubs the suite starts (hub_env).
READIED: set[str] = set()


def hub_env(**extra: str) -> dict[str, str]:
    """The environment of a hub process the suite starts; one on a data folder of its own
    (`HUB_DATA_DIR` in `extra`) finds it readied, as `hub_init` readies one."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        HUB_DATA_DIR=str(settings.HUB_DATA_DIR),
        HUB_QUEUE=QUEUE,
        HUB_ANONYMOUS_ROLE=settings.HUB_ANONYMOUS_ROLE,
        HUB_LOST_AFTER="6",
        SECRET_KEY=settings.SECRET_KEY,
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    if env["HUB_DATA_DIR"] not in READIED:
        ready_data_dir(env)
        READIED.add(env["HUB_DATA_DIR"])
    return env


def ready_data_dir(env: dict[str, str]) -> None:
    """Ready the data folder `env` names as `hub_init` does, in a process of its own (this
    one's settings describe the suite's folder)."""
    code = (
        "import django; django.setup(); from dashboard.data_dir import prepare_data_dir as p; p()"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class ProcessHandle:
    proc: subprocess.Popen
    log: Path
    port: int = 0  # the web's

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_worker(tmp: Path, name: str = "worker", **extra: str) -> ProcessHandle:
    log = tmp / f"{name}.log"
    proc = subprocess.Popen(
        worker_argv(
            BIN,
            extra.get("HUB_QUEUE", QUEUE),
            8,
            "-l",
            "INFO",
            "-n",
            f"{name}-{uuid.uuid4().hex[:6]}@%h",
        ),
        cwd=ROOT,
        env=hub_env(**extra),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return ProcessHandle(proc, log)


def start_web(tmp: Path, port: int, **extra: str) -> ProcessHandle:
    log = tmp / "web.log"
    proc = subprocess.Popen(
        web_argv(BIN, "127.0.0.1", port),
        cwd=ROOT,
        env=hub_env(**extra),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"daphne exited: {log.read_text(errors='replace')[-3000:]}")
        try:
            return httpx.get(url + "/login/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=30, what="daphne to answer")
    return ProcessHandle(proc, log, port)


@dataclass
class Hub:
    url: str
    web: ProcessHandle
    worker: ProcessHandle

    @property
    def api(self) -> str:
        return self.url + "/api/v1"


@pytest.fixture(scope="session")
def hub(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[Hub]:
    """A running hub: daphne and a Celery worker on the test database and the real Redis."""
    tmp = tmp_path_factory.mktemp("hub")
    with django_db_blocker.unblock():
        worker = start_worker(tmp)
        web = start_web(tmp, free_port())
    try:
        yield Hub(url=web_url(web), web=web, worker=worker)
    finally:
        stop_process(web.proc)
        stop_process(worker.proc)


def web_url(handle: ProcessHandle) -> str:
    return f"http://127.0.0.1:{handle.port}"


@dataclass
class Person:
    username: str
    role: str
    token: str
    password: str = "pw-for-tests-1"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@functools.cache
def password_hash() -> str:
    """Hashing is slow on purpose; the tests' users share one hash of their password.

    Made with the hub's own hasher, whatever the test that first asks has set
    PASSWORD_HASHERS to (tests/dashboard uses MD5, which the hubs the tests start refuse)."""
    from django.contrib.auth.hashers import PBKDF2PasswordHasher

    hasher = PBKDF2PasswordHasher()
    return hasher.encode("pw-for-tests-1", hasher.salt())


@pytest.fixture
def people(transactional_db) -> dict[str, Person]:
    """One user per role, each with an API token."""
    from django.contrib.auth.models import Group, User

    from accounts.access import ensure_groups
    from accounts.models import ApiToken

    ensure_groups()
    result = {}
    for role in ("viewer", "operator", "admin"):
        user = User.objects.create(username=f"{role}-user", password=password_hash())
        user.groups.add(Group.objects.get(name=role))
        _, raw = ApiToken.issue(user, "tests")
        result[role] = Person(user.username, role, raw)
    return result


@pytest.fixture
def admin_api(hub: Hub, people: dict[str, Person]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hub.api, headers=people["admin"].headers(), timeout=60) as c:
        yield c


@pytest.fixture
def operator_api(hub: Hub, people: dict[str, Person]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hub.api, headers=people["operator"].headers(), timeout=60) as c:
        yield c


@dataclass
class PrivateHub:
    api: httpx.Client
    web: ProcessHandle
    workers: list[ProcessHandle]
    queue: str


@pytest.fixture
def private_hub(tmp_path, people: dict[str, Person], request) -> Iterator:
    """A web process and workers on a queue of their own, so killing them harms no one else."""
    started: list[PrivateHub] = []

    def make(web_env: dict | None = None, worker_env: dict | None = None) -> PrivateHub:
        queue = f"private-{uuid.uuid4().hex[:6]}"
        worker = start_worker(tmp_path, "worker", HUB_QUEUE=queue, **(worker_env or {}))
        web = start_web(tmp_path, free_port(), HUB_QUEUE=queue, **(web_env or {}))
        port = web.port
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{port}/api/v1",
            headers=people["admin"].headers(),
            timeout=60,
        )
        hub = PrivateHub(api, web, [worker], queue)
        started.append(hub)
        return hub

    yield make
    for hub in started:
        hub.api.close()
        stop_process(hub.web.proc)
        for worker in hub.workers:
            stop_process(worker.proc)
