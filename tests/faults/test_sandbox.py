"""The hub's threat model, played: each test is an attack a hostile sequence (or someone who
got into the hub's Redis) tries against a real hub, and shows that it fails.

Sequence code is hostile. It runs as a user id of its own when the worker is root (leased for
the life of the instance, runner/isolation.py) and, root or not, under Landlock
(runner/landlock.py): it reads the system and its own package, writes only its own folder,
cannot open a TCP connection to the ports of the hub's Redis and database, and cannot signal or
trace any process outside its own tree. Everything it starts dies with it. Whatever reaches the
hub's Redis anyway is not believed: start requests, control messages, replies and stream ends
carry a MAC (sequences/live.py) and a start is checked field by field against a waiting row.

The non-root half of the model (a hub run as an ordinary user, whose children share its user
id) is played in test_sandbox_unprivileged.py; a root worker's children that stay root, in
test_root_children.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest
from django.conf import settings

from runner import cgroups
from sequences import live
from sequences.errors import HubError
from sequences.instances import MIN_PIDS, clean_limits, start_request
from sequences.models import Instance, Sequencer
from tests.conftest import IN_CI, wait_for
from tests.faults.conftest import ATTEMPT, FOREVER, info, needs_root, start, status, wait_ended
from tests.packaging import package_bytes, python_package, upload
from tests.sequences import sequencer_kit

pytestmark = pytest.mark.django_db(transaction=True)
kit = sequencer_kit.kit  # the fixture


def run_attack(api, code: str, *args, files: dict[str, str] | None = None) -> dict:
    """Run a hostile sequence (main.py, and `files` beside it) to its end; what it reports
    (JSON on its output)."""
    seq = upload(api, python_package(ATTEMPT + code, **(files or {})))
    iid = start(api, seq, {"args": list(args)})
    raw = api.get(f"/instance/{iid}/output", timeout=60).text
    ended = wait_ended(api, iid)
    assert ended["status"] == "completed", (ended, api.get(f"/instance/{iid}/stderr").text)
    return json.loads(raw)


def start_header(iid: str) -> dict:
    """A start request for the instance as the web makes it, with a reply token of its own."""
    instance = Instance.objects.select_related("sequence").get(pk=iid)
    raw = start_request(instance, instance.sequence, uuid.uuid4().hex, 30, "any")
    return live.decode_control("any", raw)[0]


# -- 1. The hub's services ---------------------------------------------------------------


def test_a_sequence_cannot_issue_a_command_to_the_hubs_redis(private_hub):
    """The worker's fork server closed the Redis port to every child: connect() is refused
    by the kernel before a byte leaves (and the data folder's sockets are not reachable)."""
    hub = private_hub()
    port = int(settings.REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    result = run_attack(
        hub.api,
        """
def run(context, input, port):
    return json.dumps({"tcp": attempt(lambda: redis_tcp(port))})
""",
        port,
    )
    assert result == {"tcp": "denied"}


def test_no_side_door_to_the_hubs_services(private_hub):
    """What Landlock does not see, the fork server's seccomp filter refuses: MPTCP sockets
    (which connect to 'closed' TCP ports unchecked), Unix sockets by path (a PostgreSQL socket
    with trust or peer authentication, the embedded Redis's socket), io_uring; and /dev/shm,
    shared by every instance, is not writable. Ordinary sockets still work."""
    hub = private_hub()
    port = int(settings.REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    result = run_attack(
        hub.api,
        """
def run(context, input, port, web):
    def mptcp():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262) as s:
            s.settimeout(2)
            s.connect(("127.0.0.1", port))
            s.sendall(b"PING\\r\\n")
            return "answered: " + s.recv(64).decode("latin-1")
    def unix(path):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
    def uring():
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        params = ctypes.create_string_buffer(120)
        if libc.syscall(425, 8, params) < 0:
            raise OSError(ctypes.get_errno(), "io_uring_setup")
    return json.dumps({
        "mptcp": attempt(mptcp),
        "postgres_socket": attempt(lambda: unix("/var/run/postgresql/.s.PGSQL.5432")),
        "io_uring": attempt(uring),
        "shm": attempt(lambda: open("/dev/shm/planted-by-a-sequence", "w").close()),
        "socketpair": attempt(lambda: [s.close() for s in socket.socketpair()] and None),
        "web": attempt(lambda: socket.create_connection(("127.0.0.1", web), 2).close()),
    })
""",
        port,
        hub.web.port,
    )
    assert result == {
        "mptcp": "denied",
        "postgres_socket": "denied",
        "io_uring": "OSError",  # ENOSYS
        "shm": "denied",
        "socketpair": "ok",
        "web": "ok",
    }


def test_a_sequence_cannot_reach_the_hubs_database(private_hub):
    db = settings.DATABASES["default"]
    hub = private_hub()
    code = """
def run(context, input, path, port):
    out = {}
    if path:
        out["file"] = attempt(lambda: read(path))
    if port:
        out["tcp"] = attempt(lambda: socket.create_connection(("127.0.0.1", port), 2).close())
    return json.dumps(out)
"""
    if db["ENGINE"].endswith("sqlite3"):
        result = run_attack(hub.api, code, str(db["NAME"]), 0)
        assert result == {"file": "denied"}
    else:
        result = run_attack(hub.api, code, "", int(db.get("PORT") or 5432))
        assert result == {"tcp": "denied"}


# -- 2. Forged start requests --------------------------------------------------------------


def test_forged_and_replayed_start_requests_are_dropped(private_hub, tmp_path: Path):
    """Someone with the hub's Redis pushes starts with an id that walks out of run/: unsigned,
    signed with another key, or properly signed but for no waiting row. The worker runs none,
    and the folder the id points at is neither taken over nor deleted."""
    hub = private_hub()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    before = victim.stat()
    queue_key = live.start_key(hub.queue)
    seq = upload(hub.api, python_package(FOREVER))
    # Its package unpacked on the worker: a start then needs nothing from the database.
    first = start(hub.api, seq)
    hub.api.post(f"/instance/{first}/_kill", json={})
    wait_ended(hub.api, first)
    header = dict(start_header(first), id=f"../../../../{victim}".replace("//", "/"))
    client = live.sync_client()
    raw_json = json.dumps(header).encode()
    client.rpush(queue_key, raw_json)  # no MAC at all
    client.rpush(queue_key, b"0" * 32 + b"\n" + raw_json + b"\n")  # a made-up MAC
    # Signed with the hub's key (as if replayed), but the id is not an instance's, nor a name.
    signed = live.encode_control(queue_key, header)
    client.rpush(queue_key, signed)
    ghost = dict(header, id=f"ghost-{uuid.uuid4().hex[:8]}", reply=uuid.uuid4().hex)
    client.rpush(queue_key, live.encode_control(queue_key, ghost))
    answer = client.blpop([live.reply_key(ghost["reply"])], timeout=20)
    assert answer is not None, "the worker did not answer the ghost start"
    reply = live.decode_reply(ghost["reply"], answer[1])
    # Refused at once when the worker needs the row to build the child; when it has all it
    # needs in the request (the package unpacked already), the child is killed as soon as the
    # worker's "starting" update finds no row.
    log_says = ("it has no row", "has no row (not started by the web)")
    assert reply.get("code") == "NOT_FOUND" or reply.get("ok"), reply
    wait_for(lambda: any(s in hub.workers[0].output() for s in log_says), what="the ghost refused")
    wait_for(lambda: client.llen(queue_key) == 0, what="the worker to take every request")
    after = victim.stat()
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)
    assert (victim / "keep.txt").read_text() == "precious"
    ghost_dir = settings.HUB_DATA_DIR / "run" / ghost["id"]
    wait_for(lambda: not ghost_dir.exists(), what="no folder left for the ghost")
    log = hub.workers[0].output()
    assert log.count("that the hub did not write") >= 2, log[-2000:]
    assert "is not 1 to 64 letters" in log


def test_a_replayed_start_runs_nothing_twice(private_hub):
    """A start request signed by the hub, pushed again (someone saw it go by): the first start
    holds its claim, so the copy is dropped (without an answer: the claim holder answers) and
    one process runs."""
    hub = private_hub()
    seq = upload(hub.api, python_package(FOREVER))
    iid = start(hub.api, seq)
    wait_for(lambda: status(hub.api, iid) == "running", what="running")
    queue_key = live.start_key(hub.queue)
    again = start_header(iid)
    client = live.sync_client()
    client.rpush(queue_key, live.encode_control(queue_key, again))
    wait_for(
        lambda: f"dropped a start for {iid}: it was claimed already" in hub.workers[0].output(),
        what="the copy dropped",
    )
    assert client.llen(queue_key) == 0
    assert client.blpop([live.reply_key(again["reply"])], timeout=1) is None
    assert status(hub.api, iid) == "running"
    hub.api.post(f"/instance/{iid}/_kill", json={})
    assert wait_ended(hub.api, iid)["terminated"]["exitcode"] == 137


def test_a_replayed_sequencer_start_runs_nothing_twice(kit):
    """A sequencer's start (kind "script") is claimed like an instance's: a copy pushed again
    is dropped, while the Redis claim is held and, once that claim is gone, because the
    worker runs that process already (on another worker the row claim refuses it). No answer
    goes out for a dropped copy, and the sequencer keeps its one process."""
    loaded = kit.load()
    row = Sequencer.objects.select_related("instance__sequence").get(pk=loaded["id"])
    instance = row.instance
    # The worker records the pid in its next batched write, a few ms after the load answers.
    wait_for(lambda: Instance.objects.get(pk=instance.id).pid is not None, what="the pid recorded")
    before = Instance.objects.get(pk=instance.id)
    queue_key = live.start_key(settings.CELERY_TASK_DEFAULT_QUEUE)
    client = live.sync_client()
    for claim_gone in (False, True):
        if claim_gone:
            client.delete(live.claim_key(instance.id))
        token = uuid.uuid4().hex
        again = start_request(instance, instance.sequence, token, 30, queue_key, row)
        client.rpush(queue_key, again)
        assert client.blpop([live.reply_key(token)], timeout=2) is None
        wait_for(lambda: client.llen(queue_key) == 0, what="the copy popped")
    after = Instance.objects.get(pk=instance.id)
    assert (after.status, after.pid, after.worker) == ("running", before.pid, before.worker)
    assert kit.get(loaded["id"])["state"] == "Idle"


# -- 3. Forged ends and control messages ---------------------------------------------------


def test_forged_ends_and_control_messages_change_nothing(private_hub):
    hub = private_hub()
    iid = start(hub.api, upload(hub.api, python_package(FOREVER)))
    wait_for(lambda: status(hub.api, iid) == "running", what="running")
    worker = info(hub.api, iid)["worker"]
    client = live.sync_client()
    for stream in live.STREAMS:
        key = live.stream_key(iid, stream)
        client.xadd(
            key,
            {
                "eof": 1,
                "status": "completed",
                "exitcode": 0,
                "reason": "forged",
                "ended": time.time(),
                "n": 0,
            },
        )
    ctl = live.control_key(worker)
    client.rpush(ctl, json.dumps({"op": "kill", "id": iid}).encode() + b"\n")
    client.rpush(ctl, b"f" * 32 + b"\n" + json.dumps({"op": "kill", "id": iid}).encode() + b"\n")
    other_worker = live.control_key("someone-else")
    moved = live.encode_control(other_worker, {"op": "kill", "id": iid})
    client.rpush(ctl, moved)  # signed for another list: moved here, not believed
    time.sleep(1.5)
    data = info(hub.api, iid)
    assert data["status"] == "running", data
    # A reader of the live output is not cut off by the forged end.
    with hub.api.stream("GET", f"/instance/{iid}/stdout", timeout=10) as response:
        seen = b""
        for piece in response.iter_raw():
            seen += piece
            if seen.count(b"alive") >= 3:
                break
    assert seen.count(b"alive") >= 3
    assert hub.api.post(f"/instance/{iid}/_kill", json={}).status_code == 202
    assert wait_ended(hub.api, iid)["terminated"]["exitcode"] == 137


# -- 4. Other instances ----------------------------------------------------------------------

NEIGHBOUR = """
import asyncio, json, os
async def run(context, input):
    home = os.environ["HOME"]
    with open(os.path.join(home, "secret.txt"), "w") as f:
        f.write("only mine")
    print(json.dumps({"uid": os.getuid(), "pid": os.getpid(), "home": home}), flush=True)
    while True:
        await asyncio.sleep(1)
"""


def _first_line(api, iid: str) -> dict:
    with api.stream("GET", f"/instance/{iid}/stdout", timeout=20) as response:
        buffer = b""
        for piece in response.iter_raw():
            buffer += piece
            if b"\n" in buffer:
                return json.loads(buffer.split(b"\n", 1)[0])
    raise AssertionError("no first line")


@needs_root
def test_an_instance_cannot_read_signal_or_share_the_uid_of_another(private_hub):
    """Ids chosen by the client used to pick the user id (a hash): now ids are leased, so no
    chosen id makes two live instances share one; and a neighbour can neither read the
    other's folder and environment nor signal it."""
    hub = private_hub()
    seq = upload(hub.api, python_package(NEIGHBOUR))
    victim = start(hub.api, seq, {"instanceId": "victim-a"})
    seen = _first_line(hub.api, victim)
    attacker_code = """
def run(context, input, pid, home):
    return json.dumps({
        "uid": os.getuid(),
        "environ": attempt(lambda: read(f"/proc/{pid}/environ")),
        "file": attempt(lambda: read(home + "/secret.txt")),
        "signal": attempt(lambda: os.kill(pid, signal.SIGKILL)),
    })
"""
    result = run_attack(hub.api, attacker_code, seen["pid"], seen["home"])
    assert result["uid"] not in (0, seen["uid"])
    assert result["environ"] in {"denied"}, result
    assert result["file"] == "denied", result
    assert result["signal"] == "denied", result
    assert status(hub.api, victim) == "running"
    # Many instances with chosen ids: never a shared uid while they live.
    ids = [start(hub.api, seq, {"instanceId": f"pick-{n}"}) for n in range(8)]
    uids = [_first_line(hub.api, iid)["uid"] for iid in ids]
    assert len({*uids, seen["uid"]}) == 9
    for iid in [victim, *ids]:
        hub.api.post(f"/instance/{iid}/_kill", json={})
    for iid in [victim, *ids]:
        wait_ended(hub.api, iid)


# -- 5. Processes that outlive their instance ---------------------------------------------

DAEMON = """
import json, os, time
def run(context, input, then):
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.close(r)
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            for fd in range(0, 8):
                try:
                    os.close(fd)
                except OSError:
                    pass
            while True:
                time.sleep(1)
        os._exit(0)
    os.close(w)
    daemon = int(os.read(r, 32))
    print(json.dumps({"daemon": daemon}), flush=True)
    if then == "wait":
        while True:
            time.sleep(1)
    time.sleep(2)  # the test sees the daemon alive meanwhile
    return "left a daemon"
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("ending", ["completed", "stopped", "killed"])
def test_a_double_forked_daemon_dies_with_its_instance(private_hub, ending: str):
    hub = private_hub()
    seq = upload(hub.api, python_package(DAEMON))
    iid = start(hub.api, seq, {"args": ["return" if ending == "completed" else "wait"]})
    daemon = _first_line(hub.api, iid)["daemon"]
    assert not _gone(daemon)  # it is there: its end below is the hub's doing
    if ending == "stopped":
        hub.api.post(f"/instance/{iid}/_stop", json={"timeout": 500})
    elif ending == "killed":
        hub.api.post(f"/instance/{iid}/_kill", json={})
    wait_ended(hub.api, iid)
    wait_for(lambda: _gone(daemon), timeout=10, what=f"daemon {daemon} to die")


@needs_root
def test_daemons_left_by_a_worker_that_died_are_killed_when_a_worker_starts(private_hub):
    """A worker killed outright cannot clean up: its instances die with their fork server,
    but a daemon that left its instance's tree is reparented to init. The next worker on the
    machine kills every process under a children's user id that no live instance holds."""
    import signal

    from tests.conftest import start_worker
    from tests.faults.conftest import alive

    hub = private_hub()
    seq = upload(hub.api, python_package(DAEMON))
    iid = start(hub.api, seq, {"args": ["wait"]})
    daemon = psutil.Process(_first_line(hub.api, iid)["daemon"])
    assert daemon.uids().real >= settings.HUB_RUN_UID_BASE  # a child's user id, alive
    hub.workers[0].proc.send_signal(signal.SIGKILL)
    hub.workers[0].proc.wait()
    # Orphaned now, under init: nothing of the dead worker is left to kill it. Any worker
    # that starts on this machine kills it (in a full run, another test's may be first).
    folder = hub.workers[0].log.parent
    hub.workers.append(start_worker(folder, "worker-2", HUB_QUEUE=hub.queue))
    wait_for(lambda: not alive(daemon), timeout=30, what=f"daemon {daemon.pid} to be killed")


# -- 6 and 7. The hub's files ---------------------------------------------------------------


def test_a_sequence_reads_none_of_the_hubs_files_and_cannot_import_its_code(private_hub):
    """Not the data folder (secret key, database, packages, Redis password), not the checkout
    (.env, settings), not the hub's virtual environment (Django), not the worker's environment;
    no listing of run/ or cache/; and no shared /tmp."""
    import sys

    import django

    root = settings.BASE_DIR
    targets = {
        "secret_key": str(settings.HUB_DATA_DIR / "secret_key"),
        "settings": str(root / "dashboard" / "settings.py"),
        "env_file": str(root / ".env.example"),
        "django": django.__file__,
        "venv_cfg": str(Path(sys.prefix) / "pyvenv.cfg"),
    }
    hub = private_hub()
    worker_pid = hub.workers[0].proc.pid
    result = run_attack(
        hub.api,
        """
def run(context, input, targets, data_dir, worker_pid, django_dir):
    out = {name: attempt(lambda p=path: read(p)) for name, path in targets.items()}
    out["list_run"] = attempt(lambda: os.listdir(data_dir + "/run") and None)
    out["list_cache"] = attempt(lambda: os.listdir(data_dir + "/cache") and None)
    out["list_tmp"] = attempt(lambda: os.listdir("/tmp") and None)
    out["write_tmp"] = attempt(lambda: open("/tmp/planted-by-a-sequence", "w").close())
    out["worker_environ"] = attempt(lambda: read(f"/proc/{worker_pid}/environ"))
    out["signal_worker"] = attempt(lambda: os.kill(worker_pid, 0))
    sys.path.insert(0, django_dir)
    try:
        import django
        out["import_django"] = "ok"
    except ImportError:
        out["import_django"] = "refused"
    return json.dumps(out)
""",
        targets,
        str(settings.HUB_DATA_DIR),
        worker_pid,
        str(Path(django.__file__).parent.parent),
    )
    assert result.pop("import_django") == "refused"
    for name, outcome in result.items():
        assert outcome in {"denied", "absent"}, (name, outcome)
    assert not Path("/tmp/planted-by-a-sequence").exists()


def test_the_working_folder_is_the_package_and_read_only(private_hub):
    """As on STH, a sequence works in the folder of its main and opens the files beside it by
    relative paths. Every instance of the package shares that folder: none may change it.
    HOME and TMPDIR stay the instance's own folder. Nor may it change the scramjet the hub lends
    every Python sequence."""
    hub = private_hub()
    result = run_attack(
        hub.api,
        """
import tempfile
def write(path, mode="w"):
    with open(path, mode) as f:
        f.write("planted")
def run(context, input):
    import scramjet  # lent by the hub: no __pypackages__ here
    lent = os.path.dirname(scramjet.__file__)
    home = os.environ["HOME"]
    with open("data.json") as f:
        data = json.load(f)
    return json.dumps({
        "data": data,
        "cwd_is_package": os.path.samefile(os.getcwd(), os.environ["SEQUENCE_PATH"]),
        "home_apart": home != os.getcwd() and os.environ["TMPDIR"] == home,
        "create": attempt(lambda: write("planted.txt")),
        "append_main": attempt(lambda: write("main.py", "a")),
        "truncate_data": attempt(lambda: os.truncate("data.json", 0)),
        "mkdir": attempt(lambda: os.mkdir("planted")),
        "remove": attempt(lambda: os.remove("data.json")),
        "rename": attempt(lambda: os.rename("data.json", "moved.json")),
        "sub_create": attempt(lambda: write("lib/planted.txt")),
        "chmod": attempt(lambda: os.chmod("data.json", 0)),
        "lent_create": attempt(lambda: write(os.path.join(lent, "planted.py"))),
        "lent_append": attempt(lambda: write(os.path.join(lent, "streams.py"), "a")),
        "home_write": attempt(lambda: write(os.path.join(home, "mine.txt"))),
        "tempfile": attempt(lambda: tempfile.mkstemp() and None),
    })
""",
        files={"data.json": '{"beside": "main"}', "lib/keep.txt": "kept"},
    )
    assert result.pop("data") == {"beside": "main"}
    assert result.pop("cwd_is_package") is True and result.pop("home_apart") is True
    assert result.pop("home_write") == "ok" and result.pop("tempfile") == "ok"
    chmod = result.pop("chmod")
    # Landlock does not cover chmod: only a user id of its own (a root worker) refuses it.
    assert chmod == "denied" or os.geteuid() != 0, chmod
    for action, outcome in result.items():
        assert outcome == "denied", (action, outcome)


# -- limits ------------------------------------------------------------------------------------

PIDS = """
import json, subprocess, sys
def run(context, input, n):
    started, refused = [], 0
    for _ in range(n):
        try:
            started.append(subprocess.Popen(["sleep", "30"]))
        except OSError:
            refused += 1
    for p in started:
        p.kill()
        p.wait()
    with open("/proc/self/cgroup") as f:
        groups = [line.split(":", 2)[2].strip() for line in f if ":pids:" in line]
    return json.dumps({"started": len(started), "refused": refused, "groups": groups})
"""


@needs_root
def test_limits_pids_and_cpu_are_applied_and_shown(private_hub):
    hub = private_hub()
    seq = upload(hub.api, python_package(PIDS))
    iid = start(hub.api, seq, {"args": [20], "limits": {"pids": 8, "cpu": 0.5, "memory": 256}})
    result = json.loads(hub.api.get(f"/instance/{iid}/output", timeout=60).text)
    assert result["started"] < 8 and result["refused"] > 0, result
    # In this hub's folder: another hub on the machine may run an instance of the same id.
    assert result["groups"] == [f"/sequence-hub/{live.hub_id()}/{iid}"], result
    data = wait_ended(hub.api, iid)
    assert data["limits"] == {"pids": 8, "cpu": 0.5, "memory": 256}
    groups = Path("/sys/fs/cgroup")
    wait_for(lambda: not list(groups.glob(f"*/sequence-hub/*/{iid}")), what="its cgroups removed")


def js_package(code: str) -> bytes:
    meta = {"name": "js-seq", "version": "1.0.0", "main": "index.js", "engines": {"node": ">=18"}}
    return package_bytes({"index.js": code}, package_json=meta)


@needs_root
def test_the_fewest_pids_allowed_start_python_and_node(private_hub):
    """MIN_PIDS is what the runtimes need (sequences/instances.py says how it was found): a
    trivial sequence of each language starts and completes with it, not "can't start new
    thread" (Python, with fewer) nor a start that never ends (Node)."""
    hub = private_hub()
    python = upload(hub.api, python_package("def run(context, input):\n    return 'ok'\n"))
    node = upload(hub.api, js_package("module.exports = async function* () { yield 'ok'; };\n"))
    for seq in (python, node):
        iid = start(hub.api, seq, {"limits": {"pids": MIN_PIDS}})
        assert hub.api.get(f"/instance/{iid}/output", timeout=60).text.strip() == "ok"
        ended = wait_ended(hub.api, iid)
        stderr = hub.api.get(f"/instance/{iid}/stderr").text
        assert ended["status"] == "completed", (ended, stderr)
        assert "thread" not in stderr, stderr


def test_sequence_code_runs_below_the_hub_and_cannot_raise_itself(admin_api):
    """When the cores are busy the web and the worker run first (HUB_CHILD_NICE, 10 by
    default): 2 000 children printing must not hold back the lines the hub carries for them.
    A child cannot take its priority back."""
    result = run_attack(
        admin_api,
        """
def run(context, input):
    return json.dumps({
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "raised": attempt(lambda: os.setpriority(os.PRIO_PROCESS, 0, 0)),
    })
""",
    )
    assert result == {"nice": 10, "raised": "denied"}


@pytest.mark.parametrize(
    "limits, field",
    [
        ({"cpu": 0}, "limits.cpu"),
        ({"cpu": "half"}, "limits.cpu"),
        ({"pids": 0}, "limits.pids"),
        ({"pids": 1.5e9}, "limits.pids"),
        # Once cut to 1 and 256 without a word.
        ({"pids": 8.5}, "limits.pids"),
        ({"pids": 1.5}, "limits.pids"),
        ({"memory": 256.5}, "limits.memory"),
        # Too few for the runtimes to start (MIN_PIDS): they failed or hung instead.
        ({"pids": 1}, "limits.pids"),
        ({"pids": MIN_PIDS - 1}, "limits.pids"),
        ({"memory": True}, "limits.memory"),
        ({"disk": 5}, "limits.disk"),
        ({"gpu": True}, "limits.gpu"),
    ],
)
def test_malformed_limits_are_invalid_config_naming_the_field(admin_api, limits, field):
    seq = upload(admin_api, python_package(FOREVER))
    response = admin_api.post(f"/sequence/{seq}/start", json={"limits": limits})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body.get("code") == "INVALID_CONFIG" or "INVALID_CONFIG" in response.text
    assert field in response.text


@pytest.mark.parametrize("pids", [1, 2, MIN_PIDS - 1])
def test_too_few_pids_are_refused_naming_the_minimum(pids):
    with pytest.raises(HubError) as refused:
        clean_limits({"pids": pids})
    assert refused.value.status == 422 and refused.value.code == "INVALID_CONFIG"
    assert "limits.pids" in refused.value.message
    assert f"from {MIN_PIDS} to" in refused.value.message
    assert f"{MIN_PIDS} is the fewest" in refused.value.message


@pytest.mark.parametrize(
    "limits, field",
    [
        ({"pids": 7.5}, "limits.pids"),
        ({"pids": 64.01}, "limits.pids"),
        ({"memory": 16.5}, "limits.memory"),
    ],
)
def test_fractional_pids_and_memory_are_refused_not_cut(limits, field):
    with pytest.raises(HubError) as refused:
        clean_limits(limits)
    assert refused.value.code == "INVALID_CONFIG" and field in refused.value.message
    assert "whole number" in refused.value.message


def test_whole_limits_are_kept_and_cpu_may_be_a_fraction():
    # 64.0 is whole (JSON does not tell 64 from 64.0 for every client); cpu is a share.
    assert clean_limits({"pids": 64.0, "memory": 256.0, "cpu": 0.25}) == {
        "pids": 64,
        "memory": 256,
        "cpu": 0.25,
    }
    assert clean_limits({"pids": MIN_PIDS}) == {"pids": MIN_PIDS}


# -- cgroups: a folder per hub, a group per instance made afresh ---------------------------------


@pytest.fixture
def fake_cgroups(tmp_path: Path, monkeypatch):
    """A v1 hierarchy for pids and cpu under tmp_path, as root would see it, for hub "hub-a"
    (`hub.id` changes the hub)."""
    for controller in ("pids", "cpu"):
        (tmp_path / controller).mkdir()
        (tmp_path / controller / "cgroup.procs").write_text("")
    hub = type("FakeHub", (), {"id": "hub-a", "root": tmp_path})()
    monkeypatch.setattr(cgroups, "ROOT", tmp_path)
    monkeypatch.setattr(cgroups.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cgroups, "hub_folder", lambda: hub.id)
    cgroups.base_for.cache_clear()
    yield hub
    cgroups.base_for.cache_clear()


def test_each_hub_has_a_folder_of_its_own_for_the_same_instance_id(fake_cgroups):
    made_a = cgroups.create("same-id", {"pids": 16, "cpu": 0.5})
    assert made_a == [
        str(fake_cgroups.root / "cpu/sequence-hub/hub-a/same-id"),
        str(fake_cgroups.root / "pids/sequence-hub/hub-a/same-id"),
    ]
    assert cgroups.base_for("pids") == fake_cgroups.root / "pids/sequence-hub/hub-a"
    # A second hub on the machine: the same client-chosen id, another group, its own limit.
    fake_cgroups.id = "hub-b"
    cgroups.base_for.cache_clear()
    made_b = cgroups.create("same-id", {"pids": 32})
    assert made_b == [str(fake_cgroups.root / "pids/sequence-hub/hub-b/same-id")]
    assert (Path(made_a[1]) / "pids.max").read_text() == "16"
    assert (Path(made_b[0]) / "pids.max").read_text() == "32"


def test_a_group_left_empty_by_an_earlier_instance_is_made_afresh(fake_cgroups):
    base = cgroups.base_for("pids")
    assert base is not None
    (base / "old-id").mkdir()  # empty: no process in it (rmdir succeeds)
    assert cgroups.create("old-id", {"pids": 16}) == [str(base / "old-id")]
    assert (base / "old-id" / "pids.max").read_text() == "16"


def test_a_group_still_in_use_is_not_shared_with_a_new_instance(fake_cgroups):
    base = cgroups.base_for("pids")
    assert base is not None
    (base / "busy-id").mkdir()
    (base / "busy-id" / "pids.max").write_text("9")  # rmdir refuses it, as a group in use
    with pytest.raises(cgroups.CgroupError, match="still in use"):
        cgroups.create("busy-id", {"pids": 16})
    assert (base / "busy-id" / "pids.max").read_text() == "9"  # not taken over, not removed


def test_a_hub_folder_removed_under_a_worker_refuses_the_start_clearly(fake_cgroups):
    base = cgroups.base_for("pids")
    assert base is not None
    base.rmdir()
    with pytest.raises(cgroups.CgroupError, match="start the worker again"):
        cgroups.create("some-id", {"pids": 16})


@pytest.mark.parametrize("iid", ["..", "a/b", ""])
def test_an_instance_id_cannot_name_a_folder_outside_the_hubs(fake_cgroups, iid):
    with pytest.raises(cgroups.CgroupError):
        cgroups.create(iid, {"pids": 16})


@pytest.mark.skipif(
    (os.geteuid() != 0 or not Path("/sys/fs/cgroup/pids/cgroup.procs").exists()) and not IN_CI,
    reason="real v1 pids groups need root and the pids hierarchy (CI has both: fails there)",
)
def test_a_real_group_with_a_process_in_it_refuses_the_start(monkeypatch):
    """On the machine's hierarchy: a group an earlier instance's process still holds is left
    alone; once it is gone, the next start removes the empty group and makes its own."""
    monkeypatch.setattr(cgroups, "hub_folder", lambda: f"test-{uuid.uuid4().hex[:8]}")
    cgroups.base_for.cache_clear()
    base = cgroups.base_for("pids")
    assert base is not None
    iid = "stale-instance"
    sleeper = None
    try:
        (base / iid).mkdir()
        (base / iid / "pids.max").write_text("50")
        sleeper = subprocess.Popen(["sleep", "60"])
        (base / iid / "cgroup.procs").write_text(str(sleeper.pid))
        with pytest.raises(cgroups.CgroupError, match="still in use"):
            cgroups.create(iid, {"pids": 16})
        assert (base / iid / "pids.max").read_text().strip() == "50"
        sleeper.kill()
        sleeper.wait()
        wait_for(lambda: not (base / iid / "cgroup.procs").read_text().strip(), what="empty")
        assert cgroups.create(iid, {"pids": 16}) == [str(base / iid)]
        assert (base / iid / "pids.max").read_text().strip() == "16"
    finally:
        if sleeper is not None and sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        cgroups.remove([str(base / iid)])
        cgroups.remove([str(base)])
        cgroups.base_for.cache_clear()


def test_a_worker_reports_its_sandbox_in_its_row(private_hub):
    """What the overview warns from: each worker's own account of what confines its children."""
    from sequences.models import Worker

    hub = private_hub()
    start(hub.api, upload(hub.api, python_package("def run(context, input):\n    return 1\n")))
    worker = wait_for(
        lambda: Worker.objects.filter(sandbox__has_key="summary").order_by("-started").first(),
        what="a worker row with its sandbox",
    )
    report = worker.sandbox
    assert report["landlock"] >= 6 and report["summary"].startswith("sandbox: Landlock ABI")
    if os.geteuid() == 0:
        port = int(settings.REDIS_URL.rsplit(":", 1)[1].split("/")[0])
        assert report["user"] == "lease" and port in report["closed_ports"]
