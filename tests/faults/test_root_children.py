"""A root worker never hands root's powers to sequence code.

Children of a root worker run as user ids of their own (runner/isolation.py). Two cases used
to leave them root with every capability: HUB_RUN_AS=none, and a data folder other users
cannot pass through (a checkout under /root), where a child of its own user id could not reach
its folder. Now the folders children need move to a place of the hub's own
(runner/places.py), and a child that stays root drops every capability before user code runs.
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

from runner import isolation, launch, places
from tests.faults.conftest import ATTEMPT, needs_root, start, wait_ended
from tests.packaging import python_package, upload

POWERS = """
def run(context, input):
    status = dict(
        line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines()
        if ":\\t" in line
    )
    return json.dumps({
        "uid": os.getuid(),
        "effective": status["CapEff"].strip(),
        "bounding": status["CapBnd"].strip(),
        "setuid": attempt(lambda: os.setuid(4321)),
        "chown": attempt(lambda: os.chown(os.environ["HOME"], 4321, 4321)),
    })
"""


@needs_root
@pytest.mark.django_db(transaction=True)
def test_a_child_that_stays_root_has_no_capabilities(private_hub):
    hub = private_hub(worker_env={"HUB_RUN_AS": "none"})
    iid = start(hub.api, upload(hub.api, python_package(ATTEMPT + POWERS)), {})
    result = json.loads(hub.api.get(f"/instance/{iid}/output", timeout=60).text)
    assert wait_ended(hub.api, iid)["status"] == "completed"
    assert result["uid"] == 0  # as asked: the worker's user
    assert result["effective"] == result["bounding"] == "0000000000000000", result
    assert result["setuid"] == result["chown"] == "denied", result


@needs_root
def test_a_closed_data_folder_moves_the_childrens_folders_not_their_user(tmp_path, request):
    closed = tmp_path / "private"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    data = closed / "data"
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
    closed = tmp_path / "checkout"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    source = closed / "node_runtime.js"
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
