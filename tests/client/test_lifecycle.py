"""The lifecycle walk-through of docs/cli.md, run as written: each `$ si ...` line of the
marked block is a command, and the last one must print exactly what the block shows."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from tests.client.conftest import LIFECYCLE_DIR, make_si
from tests.conftest import ROOT

# Live tests: a hub under load (CI runs the whole suite on one machine) can be slow.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

MARKER = "<!-- lifecycle-flow:"


def documented_flow() -> list[tuple[list[str], list[str]]]:
    """(command, shown output lines) pairs of the marked console block in docs/cli.md."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    after = text[text.index(MARKER) :]
    block = re.search(r"```console\n(.*?)```", after, re.S)
    assert block, "docs/cli.md lost its lifecycle block"
    steps: list[tuple[list[str], list[str]]] = []
    for line in block.group(1).splitlines():
        if line.startswith("$ "):
            steps.append((shlex.split(line[2:]), []))
        else:
            steps[-1][1].append(line)
    return steps


def test_the_docs_show_the_scramjet_flow() -> None:
    commands = [" ".join(cmd) for cmd, _ in documented_flow()]
    assert commands == [
        "si seq pack examples/lifecycle",
        "si seq send -",
        "si seq start - 3000 10",
        "si inst output -",
    ]


def test_lifecycle_flow_as_written(hub, people, tmp_path: Path) -> None:
    # The commands run from a copy of the repository's examples, so the package they write
    # lands in the test's directory.
    shutil.copytree(LIFECYCLE_DIR, tmp_path / "examples" / "lifecycle")
    si = make_si(tmp_path, hub.api, people["admin"].token)
    results = []
    for command, shown in documented_flow():
        assert command[0] == "si"
        result = si(*command[1:])
        results.append(result)
        printed = result.stdout.decode().splitlines()
        assert len(printed) == len(shown), (command, printed, shown)
    packed = results[0].stdout.decode().strip()
    assert packed == str(tmp_path / "examples" / "lifecycle.tar.gz")
    _, shown_output = documented_flow()[-1]
    assert results[-1].stdout.decode().splitlines() == shown_output
    assert shown_output == [str(n) for n in range(3000, 3010)]
