"""The sandbox when the worker is an ordinary user: its children keep its user id, so file
permissions protect nothing between them and the hub. Landlock does: the hub's files, the
checkout, the worker's environment and signals are out of reach, and a daemon left behind is
killed when its instance ends. (The hub's service ports are not closed in this mode: each child
has a Landlock layer of its own, and a port rule set would cost each ~25 ms; see
runner/landlock.py. The hub's Redis and database need passwords, and the overview says so.)

Played at the fork-server level (the part that confines children), as the user `nobody`, by
tests/faults/unprivileged_probe.py: a whole worker would need the hub's interpreter and
virtual environment readable by that user, which a checkout under /root is not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from runner import landlock
from tests.conftest import IN_CI

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
