"""The runnable examples of docs/client.md, each run as a program against a live hub."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Live tests: a hub under load (CI runs the whole suite on one machine) can be slow.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


def examples() -> list[str]:
    text = (ROOT / "docs" / "client.md").read_text(encoding="utf-8")
    return re.findall(r"<!-- runnable -->\n```python\n(.*?)```", text, re.S)


def test_the_guide_has_its_examples() -> None:
    assert len(examples()) == 5


@pytest.mark.parametrize("index", range(5))
def test_docs_example_runs(index: int, hub, people) -> None:
    env = {
        **os.environ,
        "HUB_URL": hub.url,
        "HUB_TOKEN": people["admin"].token,
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", examples()[index]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    printed = done.stdout.decode()
    expected = {
        0: ["3000", "3009", "completed", "'exitcode': 0"],
        1: ["True", "{'got': {'n': 1}}", "echo:one\necho:two"],
        2: ["404 NOT_FOUND Sequence no-such-sequence not found", "422 INVALID_CONFIG"],
        3: ["'type': 'Completed'", "slew Success", "expose Success", "Unhandled", "{'type': 'Ok'}"],
        4: ["['0', '1', '2']", "['100', '101', '102']", "['200', '201', '202']"],
    }[index]
    for fragment in expected:
        assert fragment in printed, (fragment, printed)
