"""A root worker never hands root's powers to sequence code.

Children of a root worker run as user ids of their own (runner/isolation.py). Two cases used
to leave them root with every capability: HUB_RUN_AS=none, and a data folder other users
cannot pass through (a checkout under /root), where a child of its own user id could not reach
its folder. Now the folders children need move to a place of the hub's own
(runner/places.py), a root worker refuses any start that would run as uid 0, and a child that
is root anyway drops every capability before user code runs.
In a container image the hub's packages sit in the interpreter's site-packages, inside the
standard library folder children read: they are hidden too.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from dashboard.processes import stop_process
from runner import isolation, launch, places
from runner.tasks import SUPERVISOR_FAILED
from tests.conftest import start_worker
from tests.faults.conftest import needs_root, wait_ended
from tests.packaging import python_package, upload

POWERS = """
def run(context, input):
    return "it ran"
"""


@needs_root
@pytest.mark.django_db(transaction=True)
def test_a_root_worker_refuses_to_run_sequence_code_as_root(private_hub):
    """uid 0 without capabilities still owns root's files: it could chmod /bin/bash setuid,
    which Landlock does not govern. So HUB_RUN_AS=none on a root worker refuses every start,
    saying why, and runs nothing."""
    hub = private_hub(worker_env={"HUB_RUN_AS": "none"})
    seq = upload(hub.api, python_package(POWERS))
    answer = hub.api.post(f"/sequence/{seq}/start", json={})
    assert answer.status_code == 400, answer.text
    assert "would run as root" in answer.json()["error"] and "HUB_RUN_AS" in answer.json()["error"]
    iid = hub.api.get(f"/sequence/{seq}/instances").json()[0]
    ended = wait_ended(hub.api, iid)
    assert ended["status"] == "errored", ended
    assert hub.api.get(f"/instance/{iid}/output").content == b""


@needs_root
def test_a_child_left_root_has_no_capabilities():
    """The second lock, in the fork server: a child that is still uid 0 when its code would
    run (the worker refuses to get there) holds no capability, now or after an exec."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running pytest's exit handlers
        try:
            os.close(read)
            isolation.drop_capabilities()
            status = dict(
                line.split(":\t", 1)
                for line in Path("/proc/self/status").read_text().splitlines()
                if ":\t" in line
            )
            try:
                os.setuid(4321)
                setuid = "ok"
            except PermissionError:
                setuid = "denied"
            report = {k: status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb")}
            os.write(write, json.dumps({**report, "setuid": setuid}).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        report = json.loads(pipe.read())
    os.waitpid(pid, 0)
    zero = "0000000000000000"
    assert report == {
        "CapEff": zero,
        "CapPrm": zero,
        "CapBnd": zero,
        "CapAmb": zero,
        "setuid": "denied",
    }, report


def closed_folder(path: Path) -> Path:
    """A folder only its owner may enter (as a checkout under /root is)."""
    path.mkdir(mode=0o700)
    path.chmod(0o700)  # mkdir's mode is masked by the umask
    return path


@needs_root
def test_a_closed_data_folder_moves_the_childrens_folders_not_their_user(tmp_path, request):
    data = closed_folder(tmp_path / "private") / "data"
    data.mkdir()
    # Where the relocated folders go must itself be passable: /tmp is, pytest's folder not.
    outside = Path(tempfile.mkdtemp(prefix="hub-children-", dir="/tmp"))
    outside.chmod(0o711)
    request.addfinalizer(lambda: shutil.rmtree(outside, ignore_errors=True))
    base = outside / "children"
    root = places._children_root(data, None, base, 0, "auto")
    assert root.parent == base and root != data
    for folder in (base, root):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o711, folder
    assert isolation.passable(root)
    # Children then get a user id of their own, as with an open data folder.
    if isolation.readable_by_others(isolation.stdlib_of(isolation.runtime_python())):
        assert isolation.run_as_for("auto", root) == {"lease": True}
    # An open data folder, a worker that is not root, or HUB_RUN_AS=none: the data folder.
    open_data = outside / "open"
    open_data.mkdir(mode=0o711)
    open_data.chmod(0o711)
    assert places._children_root(open_data, None, base, 0, "auto") == open_data
    assert places._children_root(data, None, base, 1000, "auto") == data
    assert places._children_root(data, None, base, 0, "none") == data
    # A folder on the way that another user made, or may write to, is refused: what the
    # children's root holds runs in every instance.
    planted = outside / "planted"
    planted.mkdir()
    os.chown(planted, 4321, 4321)
    with pytest.raises(ValueError, match="not root's"):
        places._children_root(data, None, planted, 0, "auto")
    open_to_all = outside / "open-to-all"
    open_to_all.mkdir()
    open_to_all.chmod(0o777)
    with pytest.raises(ValueError, match="writable by others"):
        places._children_root(data, None, open_to_all, 0, "auto")
    link = outside / "link"
    link.symlink_to(outside / "open")
    with pytest.raises(ValueError, match="not a plain folder"):
        places._children_root(data, link / "x", base, 0, "auto")
    # HUB_CHILDREN_DIR names it outright.
    chosen = outside / "chosen" / "here"
    assert places._children_root(data, chosen, base, 0, "auto") == chosen
    assert stat.S_IMODE(chosen.stat().st_mode) == 0o711


def test_the_hubs_installed_packages_are_hidden_from_children():
    """No Landlock rule reaches a folder the hub imports installed packages from (in an image:
    /usr/local/lib/python3.X/site-packages, inside the standard library folder)."""
    config = launch.sandbox_config()
    assert config is not None
    hidden = [os.path.realpath(p) for p in launch.site_packages()]
    for path, _rights in config["rules"]:
        real = os.path.realpath(path)
        for folder in hidden:
            assert not (folder + "/").startswith(real.rstrip("/") + "/"), (path, folder)


@needs_root
def test_the_node_runtime_is_copied_where_children_can_read_it(tmp_path, monkeypatch):
    source = closed_folder(tmp_path / "checkout") / "node_runtime.js"
    source.write_text("// the runtime\n")
    children = tmp_path / "children"
    monkeypatch.setattr(places, "NODE_RUNTIME", source)
    monkeypatch.setattr(places, "children_root", lambda: children)
    places.node_runtime.cache_clear()
    try:
        copy = places.node_runtime()
    finally:
        places.node_runtime.cache_clear()
    assert copy != source and copy.parent == children / "lib"
    assert copy.read_text() == "// the runtime\n"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o444
    assert Path(copy).parent.stat().st_mode & stat.S_IXOTH


@needs_root
@pytest.mark.django_db(transaction=True)
def test_a_worker_with_an_unsafe_childrens_folder_stops_saying_why(tmp_path, request):
    """A children's folder other users may write to would let them plant what every instance
    runs: the worker does not serve on without its supervisor, it stops with the reason."""
    open_to_all = Path(tempfile.mkdtemp(prefix="hub-unsafe-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(open_to_all, ignore_errors=True))
    open_to_all.chmod(0o777)
    worker = start_worker(tmp_path, "unsafe", HUB_CHILDREN_DIR=str(open_to_all / "children"))
    try:
        assert worker.proc.wait(timeout=60) == SUPERVISOR_FAILED
    finally:
        stop_process(worker.proc)
    assert f"{open_to_all} (on the way to HUB_CHILDREN_ROOT) is writable by others" in (
        worker.log.read_text(errors="replace")
    )
