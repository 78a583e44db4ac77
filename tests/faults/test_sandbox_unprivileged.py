"""The sandbox when the worker is an ordinary user: its children keep its user id, so file
permissions protect nothing between them and the hub. Landlock does: the hub's files, the
checkout, the worker's environment and signals are out of reach, and a daemon left behind is
killed when its instance ends. (The hub's service ports are not closed in this mode: each child
has a Landlock layer of its own, and a port rule set would cost each ~25 ms; see
runner/landlock.py. The hub's Redis and database need passwords, and the overview says so.)

Played twice as the user `nobody`: at the fork-server level (the part that confines
children), by tests/faults/unprivileged_probe.py, with a daemon left behind and an isolated
network; and as a whole hub (web and worker run as `nobody` with the system's Python 3.11, since
the checkout's interpreter lives under /root, closed to that user) driven through the API.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
import tempfile
import uuid
from pathlib import Path

import httpx
import pytest
from django.db import connection

from dashboard.processes import stop_process, web_argv, worker_argv
from runner import landlock
from tests.conftest import IN_CI, free_port, hub_env, wait_for
from tests.faults.conftest import ATTEMPT, start, wait_ended
from tests.packaging import python_package, upload

ROOT = Path(__file__).resolve().parent.parent.parent
PYTHON = "/usr/bin/python3.11"
NOBODY = 65534


@pytest.mark.skipif(
    (os.geteuid() != 0 or not Path(PYTHON).exists()) and not IN_CI,
    reason="needs root to become nobody, and a system Python 3.11",
)
def test_an_unprivileged_workers_children_are_confined():
    assert landlock.abi() >= 6, "this machine's kernel should have Landlock ABI 6+"
    work = Path(tempfile.mkdtemp(prefix="hub-unprivileged-", dir="/tmp"))
    try:
        os.chown(work, NOBODY, NOBODY)
        result = subprocess.run(
            [PYTHON, "-m", "tests.faults.unprivileged_probe", str(work)],
            cwd=ROOT,
            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)},
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert data["code"] == 0, data["stderr"]
    report = data["report"]
    assert report["uid"] == data["me"] == NOBODY  # the same user as its "worker"
    assert report == {
        "uid": NOBODY,
        "secret": "denied",  # the worker's own 0600 file, same user: Landlock
        "checkout": "denied",
        "environ": "denied",  # ptrace of a process outside its domain
        "signal": "denied",  # signals scoped to its own tree
        "open_port": "ok",
        "tmp": "denied",
    }
    assert data["orphans_left"] == [] and data["orphans_left_isolated"] == [], data
    isolated = data["isolated"]
    assert isinstance(isolated, dict), isolated  # else: the child's stderr
    assert isolated["uid"] == NOBODY and isolated["open_port"] != "ok", isolated


# -- A whole hub run as an ordinary user ----------------------------------------------------

HOSTILE = (
    ATTEMPT
    + """
def importable(name):
    try:
        __import__(name)
        return "ok"
    except ImportError:
        return "absent"
def run(context, input, data_dir, worker_pid):
    mine = os.environ["HOME"]
    return json.dumps({
        "uid": os.getuid(),
        "data_dir": attempt(lambda: os.listdir(data_dir)),
        "run_folder": attempt(lambda: os.listdir(os.path.dirname(mine))),
        "own_folder": attempt(lambda: open(os.path.join(mine, "x"), "w").close()),
        "checkout": attempt(lambda: read(CHECKOUT + "/dashboard/settings.py")),
        "django": importable("django"),
        "environ": attempt(lambda: read(f"/proc/{worker_pid}/environ")),
        "signal": attempt(lambda: os.kill(worker_pid, 0)),
        "unix_socket": attempt(lambda: socket.socket(socket.AF_UNIX).close()),
        # The worker shares this user id: its limits and priority are the next door.
        "worker_rlimit": attempt(lambda: __import__("resource").prlimit(worker_pid, 0, (1, 1))),
        "worker_nice": attempt(lambda: os.setpriority(os.PRIO_PROCESS, worker_pid, 19)),
        "users_nice": attempt(lambda: os.setpriority(os.PRIO_USER, 0, 19)),
        "own_nice": attempt(lambda: os.setpriority(os.PRIO_PROCESS, 0, 19)),
    })
""".replace("CHECKOUT", repr(str(ROOT)))
)


def _as_nobody(argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.mark.skipif(
    (os.geteuid() != 0 or not Path(PYTHON).exists()) and not IN_CI,
    reason="needs root to become nobody, and a system Python 3.11",
)
@pytest.mark.django_db(transaction=True)
def test_a_hub_run_as_an_ordinary_user_confines_its_children(tmp_path, people):
    """The non-root mode end to end: a web and a worker run as `nobody` on a data folder of
    theirs, with the system's Python 3.11 (the checkout's interpreter lives under /root, closed
    to it) and the virtual environment's packages. A hostile sequence started through the API
    runs as the hub's own user, and Landlock (with seccomp) alone keeps it from the data
    folder, other instances' folders, the checkout, the hub's packages, the worker's
    environment and signals, and Unix sockets."""
    if connection.vendor != "postgresql" and not IN_CI:
        pytest.skip("a hub run as nobody cannot open the suite's SQLite file")
    assert connection.vendor == "postgresql", "CI runs the suite on PostgreSQL"
    data = Path(tempfile.mkdtemp(prefix="hub-nobody-", dir="/tmp"))
    os.chown(data, NOBODY, NOBODY)
    data.chmod(0o700)
    queue = f"nobody-{uuid.uuid4().hex[:6]}"
    env = hub_env(HUB_QUEUE=queue)  # the suite's database, Redis and SECRET_KEY
    env.update(
        HUB_DATA_DIR=str(data),
        HOME=str(data),
        PYTHONPATH=f"{ROOT}{os.pathsep}{sysconfig.get_paths()['purelib']}",
        DJANGO_SETTINGS_MODULE="dashboard.settings",
    )
    worker_cmd = worker_argv(Path("/unused"), queue, 4, "-l", "INFO", "-n", f"{queue}@%h")
    worker = _as_nobody(
        [PYTHON, "-m", "celery", *worker_cmd[1:]], env, tmp_path / "worker.log", data
    )
    port = free_port()
    web_cmd = web_argv(Path("/unused"), "127.0.0.1", port)
    web = _as_nobody([PYTHON, *web_cmd[1:]], env, tmp_path / "web.log", ROOT)
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{port}/api/v1", headers=people["admin"].headers(), timeout=60
    )
    try:
        log = tmp_path / "worker.log"
        wait_for(
            lambda: worker.poll() is None and b" ready." in log.read_bytes(),
            timeout=60,
            what="the worker run as nobody",
        )
        wait_for(lambda: _answers(api, web), timeout=60, what="the web run as nobody to answer")
        seq = upload(api, python_package(HOSTILE))
        iid = start(api, seq, {"args": [str(data), worker.pid]})
        raw = api.get(f"/instance/{iid}/output", timeout=60).text
        ended = wait_ended(api, iid)
        assert ended["status"] == "completed", (ended, api.get(f"/instance/{iid}/stderr").text)
        report = json.loads(raw)
    except BaseException:
        for name in ("worker", "web"):
            text = (tmp_path / f"{name}.log").read_text(errors="replace")
            print(f"--- {name} ---\n", text[-3000:])
        raise
    finally:
        api.close()
        stop_process(web)
        stop_process(worker)
        shutil.rmtree(data, ignore_errors=True)
    assert report == {
        "uid": NOBODY,  # the hub's own user: no user id of its own without root
        "data_dir": "denied",  # the hub's folder, the same user's: Landlock
        "run_folder": "denied",
        "own_folder": "ok",
        "checkout": "denied",
        "django": "absent",  # not importable: the virtual environment is hidden
        "environ": "denied",
        "signal": "denied",
        "unix_socket": "denied",  # seccomp: no Unix socket, so none by path
        "worker_rlimit": "denied",  # seccomp: RLIMIT_CPU of 1 s would have killed the worker
        "worker_nice": "denied",
        "users_nice": "denied",
        "own_nice": "ok",
    }, report


def _answers(api: httpx.Client, web: subprocess.Popen) -> bool:
    assert web.poll() is None, "the web run as nobody exited"
    try:
        return api.get("/version").status_code == 200
    except httpx.HTTPError:
        return False
