"""Sequence code cannot read the hub's secrets, database, package storage or another instance's
folder, and its environment carries none of the hub's variables.

The file-permission half needs a worker running as root (children then run as a user id of their
own: runner/isolation.py); as an ordinary user the worker cannot change user, and those checks
are skipped. The environment check holds either way.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import BIN, wait_for
from tests.faults.conftest import ATTEMPT, FOREVER, needs_root, start, wait_ended
from tests.packaging import python_package, upload

pytestmark = pytest.mark.django_db(transaction=True)

PROBE = (
    ATTEMPT
    + """
def write(path):
    with open(path, "ab") as f:
        f.write(b"x")
def connect(port):
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
def run(context, input, reads, lists, writes, ports):
    import sqlite3, xml.dom.minidom  # the standard library stays importable
    mine = os.path.join(os.environ["HOME"], "mine.txt")  # the working folder is the package's
    with open(mine, "w") as f:
        f.write("own folder")
    result = {
        "read": {p: attempt(lambda p=p: read(p)) for p in reads},
        "list": {p: attempt(lambda p=p: os.listdir(p)) for p in lists},
        "write": {p: attempt(lambda p=p: write(p)) for p in writes},
        "connect": {str(p): attempt(lambda p=p: connect(p)) for p in ports},
        "own": open(mine).read(),
        "env": dict(os.environ),
        "uid": os.getuid(),
        "cwd": os.getcwd(),
    }
    return json.dumps(result)
"""
)

KEEPER = """
import asyncio, os
async def run(context, input):
    with open(os.path.join(os.environ["HOME"], "secret.txt"), "w") as f:
        f.write("only mine")
    print("kept", flush=True)
    while True:
        await asyncio.sleep(1)
"""


@pytest.fixture
def open_data_dir() -> Iterator[Path]:
    """A data folder other users can pass through, wherever the suite's own lives (a clone
    under /root, say, would make 'auto' keep the worker's user: nothing to test then)."""
    folder = Path(tempfile.mkdtemp(prefix="hub-isolation-", dir="/tmp"))
    folder.chmod(0o711)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def isolated_hub(private_hub, data_dir: Path, **worker_env: str):
    # No SECRET_KEY: the hub makes and keeps its own in the data folder (API tokens are plain
    # hashes, so the suite's tokens still work).
    env = {"HUB_DATA_DIR": str(data_dir), "SECRET_KEY": ""}
    return private_hub(web_env=env, worker_env={**env, **worker_env})


HUB_VARIABLES = (
    "SECRET_KEY",
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "HUB_QUEUE",
    "HUB_ID",
)


def probe(api, seq: str, **targets: list) -> dict:
    body = {
        "args": [
            targets.get("reads", []),
            targets.get("lists", []),
            targets.get("writes", []),
            targets.get("ports", []),
        ]
    }
    iid = start(api, seq, body)
    raw = api.get(f"/instance/{iid}/output", timeout=60).text
    data = wait_ended(api, iid)
    assert data["status"] == "completed", (data, api.get(f"/instance/{iid}/stderr").text)
    return json.loads(raw)


def test_the_environment_carries_no_hub_variable(private_hub):
    hub = private_hub()
    result = probe(hub.api, upload(hub.api, python_package(PROBE)))
    env = result["env"]
    for name in HUB_VARIABLES:
        assert name not in env, name
    assert {k for k in env if k.startswith(("HUB_", "DJANGO", "CELERY"))} == {"HUB_INSTANCE_ID"}
    assert result["own"] == "own folder"
    # PATH names the system's folders, not the worker's (its virtual environment, /root's).
    assert str(BIN) not in env["PATH"] and "/root" not in env["PATH"], env["PATH"]
    assert "/usr/bin" in env["PATH"].split(":")


@needs_root
def test_sequence_code_cannot_read_the_hubs_files_or_another_instance(
    private_hub, open_data_dir: Path
):
    hub = isolated_hub(private_hub, open_data_dir)
    data_dir = open_data_dir
    keeper = start(hub.api, upload(hub.api, python_package(KEEPER)))
    wait_for(lambda: b"kept" in _peek(hub.api, keeper), what="the keeper's file")
    neighbour = data_dir / "run" / keeper / "secret.txt"
    assert neighbour.read_text() == "only mine"  # it is there: the refusal below is permissions
    seq = upload(hub.api, python_package(PROBE))
    package = next((data_dir / "storage" / "packages").glob("*.tar.gz"))
    # SQLite's file; PostgreSQL's files are its own (and `NAME` is a database name there).
    database = Path(settings.DATABASES["default"]["NAME"])
    db_files = [str(database)] if database.is_absolute() else []
    secret = data_dir / "secret_key"
    assert secret.is_file()  # the hub made it: there is something to refuse
    worker_environ = f"/proc/{hub.workers[0].proc.pid}/environ"
    unpacked = next(p for p in (data_dir / "cache").iterdir() if (p / "main.py").exists())
    result = probe(
        hub.api,
        seq,
        reads=[str(secret), *db_files, str(package), str(neighbour), worker_environ],
        lists=[str(data_dir), str(data_dir / "run"), str(data_dir / "storage")],
        writes=[str(unpacked / "main.py"), *db_files, str(neighbour)],
    )
    for kind in ("read", "list", "write"):
        for path, outcome in result[kind].items():
            assert outcome in {"denied", "absent"}, (kind, path, outcome)
    assert result["uid"] != 0
    folder = (data_dir / "run" / keeper).stat()
    assert folder.st_mode & 0o777 == 0o700 and folder.st_uid not in (0, result["uid"])
    hub.api.post(f"/instance/{keeper}/_kill", json={})
    wait_ended(hub.api, keeper)


def _peek(api, iid: str) -> bytes:
    """What stdout holds so far, without following it."""
    with api.stream("GET", f"/instance/{iid}/stdout", timeout=10) as stream:
        for piece in stream.iter_raw():
            return piece
    return b""


@needs_root
def test_hub_files_are_closed_to_other_users(private_hub, open_data_dir: Path):
    hub = isolated_hub(private_hub, open_data_dir)
    iid = start(hub.api, upload(hub.api, python_package(FOREVER)))  # makes run/ and cache/
    data_dir = open_data_dir
    database = Path(settings.DATABASES["default"]["NAME"])
    assert data_dir.stat().st_mode & 0o777 == 0o711
    assert (data_dir / "run").stat().st_mode & 0o777 == 0o711
    assert (data_dir / "storage").stat().st_mode & 0o077 == 0
    if database.is_file():  # SQLite; PostgreSQL keeps its files to itself
        assert database.stat().st_mode & 0o077 == 0
    assert (data_dir / "secret_key").stat().st_mode & 0o077 == 0
    # Unpacked packages: anyone may read them (children run as other users), nobody else write.
    for unpacked in (data_dir / "cache").iterdir():
        if unpacked.is_dir() and not unpacked.name.startswith("."):
            for path in [unpacked, *unpacked.rglob("*")]:
                assert path.stat().st_mode & 0o022 == 0, path
    hub.api.post(f"/instance/{iid}/_kill", json={})
    wait_ended(hub.api, iid)


def test_host_network_keeps_the_network_but_not_the_hubs_services(private_hub):
    """In the default network mode a sequence reaches other services (here the hub's own web
    port) but cannot open a TCP connection to the port of the hub's Redis: Landlock."""
    redis_port = int(settings.REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    hub = private_hub()
    seq = upload(hub.api, python_package(PROBE))
    reached = probe(hub.api, seq, ports=[redis_port, hub.web.port])["connect"]
    assert reached == {str(redis_port): "denied", str(hub.web.port): "ok"}


@needs_root
def test_the_isolated_network_takes_the_network_away(private_hub):
    sandboxed = private_hub(worker_env={"HUB_SANDBOX_NETWORK": "isolated"})
    seq = upload(sandboxed.api, python_package(PROBE))
    port = sandboxed.web.port
    assert probe(sandboxed.api, seq, ports=[port])["connect"][str(port)] != "ok"


@needs_root
def test_run_as_modes(tmp_path):
    from runner import isolation

    data_dir = Path(tempfile.gettempdir())
    assert isolation.run_as_for("auto", data_dir) == {"lease": True}
    assert isolation.run_as_for("none", data_dir) is None
    assert isolation.run_as_for("nobody", data_dir) == {"uid": 65534, "gid": 65534}
    # A data folder other users cannot reach: the child keeps the worker's user (and works).
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    (closed / "data").mkdir()
    assert isolation.run_as_for("auto", closed / "data") is None


@needs_root
def test_a_leased_uid_is_never_held_twice(tmp_path):
    """Whatever ids clients choose, two live instances never share a user id: ids are leased
    from a registry (an flock per id), not derived from the instance id."""
    from runner import isolation

    leases = [isolation.lease_uid(5000, 4, tmp_path) for _ in range(4)]
    assert sorted(lease.uid for lease in leases) == [5000, 5001, 5002, 5003]
    with pytest.raises(RuntimeError, match="no free user id"):
        isolation.lease_uid(5000, 4, tmp_path)
    leases[2].release()
    again = isolation.lease_uid(5000, 4, tmp_path)
    assert again.uid == leases[2].uid
