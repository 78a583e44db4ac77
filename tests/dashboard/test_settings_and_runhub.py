"""Settings come from the environment and only read; `hub_init` makes what they read;
`manage.py runhub` (what `make run` starts) works whole."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from dashboard.processes import web_argv
from tests.conftest import BIN, ROOT, free_port, ready_data_dir, wait_for
from tests.packaging import python_package

SHOW = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({'db': s.DATABASES['default']['ENGINE'], 'name': str(s.DATABASES"
    "['default']['NAME']), 'redis': s.REDIS_URL, 'embedded': s.HUB_EMBEDDED_REDIS, "
    "'anon': s.HUB_ANONYMOUS_ROLE, 'retention': s.HUB_INSTANCE_RETENTION, "
    "'port': s.HUB_PORT, 'key': s.SECRET_KEY, 'max': s.HUB_MAX_INSTANCES}))"
)


def clean_env(data_dir, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HUB_", "DATABASE_URL", "REDIS_URL", "SECRET_KEY"))
    }
    env.update(DJANGO_SETTINGS_MODULE="dashboard.settings", HUB_DATA_DIR=str(data_dir), **extra)
    return env


def run_in(data_dir, argv: list[str], **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv,
        cwd=ROOT,
        env=clean_env(data_dir, **extra),
        capture_output=True,
        text=True,
        timeout=60,
    )


def settings_in(data_dir, **extra: str) -> dict:
    """Settings as a process reads them from `data_dir`, readied as `hub_init` readies it."""
    ready_data_dir(clean_env(data_dir, **extra))
    out = run_in(data_dir, [sys.executable, "-c", SHOW], **extra)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@dataclass
class RunHub:
    """`manage.py runhub` (what `make run` starts) in a data folder of its own."""

    proc: subprocess.Popen
    url: str
    log: Path
    env: dict[str, str]

    def token(self) -> str:
        return subprocess.run(
            [sys.executable, "manage.py", "hub_token", "admin"],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()

    def api(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(
            base_url=self.url + "/api/v1",
            timeout=timeout,
            headers={"Authorization": f"Bearer {self.token()}"},
        )


def launch_runhub(data_dir: Path, password: str) -> RunHub:
    """Migrate, then start runhub; returns once it printed its URL (daphne may not answer yet).
    The caller stops it."""
    port = free_port()
    env = clean_env(data_dir, HUB_ADMIN_PASSWORD=password, HUB_PORT=str(port))
    manage = [sys.executable, "manage.py"]
    subprocess.run(
        [*manage, "migrate", "--noinput"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    log = data_dir / "runhub.log"
    proc = subprocess.Popen(
        [*manage, "runhub"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    hub = RunHub(proc, f"http://localhost:{port}", log, env)
    try:
        wait_for(lambda: f"running at {hub.url}/" in log.read_text(), timeout=60, what="the URL")
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return hub


def stop_runhub(hub: RunHub) -> None:
    """Ctrl-C, as a person stops `make run`; it must stop within 40 s."""
    hub.proc.send_signal(signal.SIGINT)
    try:
        hub.proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(hub.proc.pid, signal.SIGKILL)
        pytest.fail("runhub did not stop on Ctrl-C")


def test_defaults_are_sqlite_under_the_data_dir_and_an_embedded_redis(tmp_path):
    found = settings_in(tmp_path)
    assert found["db"] == "django.db.backends.sqlite3"
    assert found["name"] == str(tmp_path / "hub.sqlite3")
    assert found["embedded"] is True
    password = (tmp_path / "redis" / "password").read_text().strip()
    assert len(password) == 64
    assert found["redis"] == f"unix://:{password}@{tmp_path / 'redis' / 'redis.sock'}?db=0"
    assert found["anon"] == "none"
    assert found["retention"] == 86400
    assert found["port"] == 8000


def test_the_embedded_redis_password_and_socket_folder_are_the_hubs_alone(tmp_path):
    first = settings_in(tmp_path)["redis"]
    assert settings_in(tmp_path)["redis"] == first  # kept, like the secret key
    assert (tmp_path / "redis").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "redis" / "password").stat().st_mode & 0o777 == 0o600


def test_an_unauthenticated_local_redis_is_not_used_unless_named(tmp_path):
    # The suite's Redis on 127.0.0.1:6379 answers without a password: sequence code could use
    # it too, so settings no longer pick it up by themselves.
    found = settings_in(tmp_path)
    assert found["embedded"] is True
    assert found["redis"].startswith("unix://:")
    named = settings_in(tmp_path, REDIS_URL="redis://127.0.0.1:6379/0")
    assert named["redis"] == "redis://127.0.0.1:6379/0"
    assert named["embedded"] is False


def test_the_secret_key_is_generated_once_and_kept(tmp_path):
    first = settings_in(tmp_path)["key"]
    assert len(first) > 40
    assert settings_in(tmp_path)["key"] == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_environment_overrides_every_default(tmp_path):
    found = settings_in(
        tmp_path,
        DATABASE_URL="postgres://u:p@db.example:5433/hub",
        REDIS_URL="redis://cache.example:6380/2",
        HUB_ANONYMOUS_ROLE="operator",
        HUB_INSTANCE_RETENTION="15m",
        HUB_PORT="9001",
        SECRET_KEY="k" * 50,
        HUB_MAX_INSTANCES="7",
    )
    assert found["db"] == "django.db.backends.postgresql"
    assert found["name"] == "hub"
    assert found["redis"] == "redis://cache.example:6380/2"
    assert found["anon"] == "operator"
    assert found["retention"] == 900
    assert found["port"] == 9001
    assert found["key"] == "k" * 50
    assert found["max"] == 7


def test_reading_settings_writes_nothing(tmp_path):
    data_dir = tmp_path / "data"
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print([str(p) for p in s.HUB_MISSING_SECRETS])"
    )
    out = run_in(data_dir, [sys.executable, "-c", code])
    assert out.returncode == 0, out.stderr
    assert not data_dir.exists()
    missing = [str(data_dir / "secret_key"), str(data_dir / "redis" / "password")]
    assert out.stdout.strip().splitlines()[-1] == repr(missing)


def test_the_web_refuses_to_start_without_the_secrets_hub_init_makes(tmp_path):
    """Not a key of its own, which the workers would not share: it stops, saying what to run."""
    out = run_in(tmp_path, web_argv(BIN, "127.0.0.1", free_port()))
    assert out.returncode != 0
    assert f"{tmp_path / 'secret_key'} and {tmp_path / 'redis' / 'password'} not there" in (
        out.stderr
    )
    assert "manage.py hub_init" in out.stderr
    assert not (tmp_path / "secret_key").exists()


def test_an_unreadable_secret_key_stops_every_process(tmp_path):
    (tmp_path / "secret_key").mkdir()  # unreadable even by root
    out = run_in(tmp_path, [sys.executable, "-c", SHOW])
    assert out.returncode != 0
    assert f"{tmp_path / 'secret_key'} cannot be read" in out.stderr


def test_the_api_handler_is_built_without_changing_settings(monkeypatch):
    from django.conf import LazySettings

    from dashboard.api_handler import ApiHandler
    from dashboard.middleware import ApiHeadersMiddleware

    changed: list[str] = []
    monkeypatch.setattr(LazySettings, "__setattr__", lambda self, name, _: changed.append(name))
    handler = ApiHandler()
    assert changed == []
    assert isinstance(handler._middleware_chain.__wrapped__, ApiHeadersMiddleware)


def test_a_bad_anonymous_role_stops_the_hub_with_a_clear_error(tmp_path):
    out = run_in(tmp_path, [sys.executable, "-c", SHOW], HUB_ANONYMOUS_ROLE="root")
    assert out.returncode != 0
    assert "HUB_ANONYMOUS_ROLE must be one of" in out.stderr


def test_runhub_starts_everything_with_an_embedded_redis_and_runs_an_upload(tmp_path):
    """What `make run` does on a machine with no Redis: one command, then upload and run."""
    hub = launch_runhub(tmp_path, "smoke-pass-1")
    try:
        text = hub.log.read_text()
        assert "Created the admin account: user admin" in text
        assert "embedded Redis" in text
        assert "WARNING" not in text  # SQLite and the embedded Redis: nothing exposed
        wait_for(lambda: _answers(hub.url), timeout=30, what="daphne")
        _check_the_embedded_redis_is_closed(tmp_path)
        with hub.api() as api:
            code = "def run(context, input, n):\n    return f'smoke {n}'\n"
            seq = api.post("/sequence", content=python_package(code)).json()["id"]
            iid = api.post(f"/sequence/{seq}/start", json={"args": [42]}).json()["id"]
            assert api.get(f"/instance/{iid}/output").content == b"smoke 42"
        # Beat's schedule (a shelve of pickles) is the hub's alone, not 0644.
        wait_for(lambda: list(tmp_path.glob("celerybeat-schedule*")), what="beat's schedule")
        for path in tmp_path.glob("celerybeat-schedule*"):
            assert path.stat().st_mode & 0o777 == 0o600, path
    finally:
        stop_runhub(hub)
    assert "Sequence Hub stopped." in hub.log.read_text()
    time.sleep(0.2)
    sock = tmp_path / "redis" / "redis.sock"
    assert not sock.exists() or _no_redis(sock)


def _check_the_embedded_redis_is_closed(data_dir) -> None:
    """A password, a socket only the hub's user may open, and the password on no command line."""
    import redis

    sock = data_dir / "redis" / "redis.sock"
    password = (data_dir / "redis" / "password").read_text().strip()
    assert (data_dir / "redis").stat().st_mode & 0o777 == 0o700
    assert sock.stat().st_mode & 0o777 == 0o700
    assert (data_dir / "redis" / "redis.conf").stat().st_mode & 0o777 == 0o600
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(unix_socket_path=str(sock)).ping()
    client = redis.Redis(unix_socket_path=str(sock), password=password)
    assert client.ping()
    pid = client.info("server")["process_id"]
    client.close()
    # Every process may read another's command line: the password is not on it.
    assert password.encode() not in (Path("/proc") / str(pid) / "cmdline").read_bytes()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/login/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _no_redis(sock) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(sock))
        except OSError:
            return True
    return False


def test_runhub_killed_with_sigkill_takes_every_part_of_the_hub_with_it(tmp_path):
    """`kill -9` of `make run`: its web, worker, beat and Redis get SIGTERM from the kernel
    (PR_SET_PDEATHSIG) and stop as on Ctrl-C: nothing of the hub runs on unsupervised, and
    the worker records the end of the instance it ran."""
    import sqlite3

    import psutil

    hub = launch_runhub(tmp_path, "smoke-pass-1")
    try:
        wait_for(lambda: _answers(hub.url), timeout=30, what="daphne")
        parts = psutil.Process(hub.proc.pid).children()
        assert len(parts) == 4, parts  # redis, web, worker, beat
        with hub.api() as api:
            code = "import time\ndef run(context, input):\n    time.sleep(600)\n"
            seq = api.post("/sequence", content=python_package(code)).json()["id"]
            iid = api.post(f"/sequence/{seq}/start", json={}).json()["id"]
            pid = wait_for(lambda: api.get(f"/instance/{iid}").json().get("pid"), what="a pid")
        everything = [*parts, psutil.Process(pid)]
    finally:
        os.kill(hub.proc.pid, signal.SIGKILL)
        hub.proc.wait()
    _gone, alive = psutil.wait_procs(everything, timeout=40)
    if alive:
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        pytest.fail(f"left running after runhub's SIGKILL: {alive}")
    with contextlib.closing(sqlite3.connect(tmp_path / "hub.sqlite3")) as db:
        status, reason = db.execute(
            "select status, reason from sequences_instance where id in (?, ?)",
            (iid, iid.replace("-", "")),
        ).fetchone()
    assert status == "completed" and reason == "Instance killed: worker shutdown"
