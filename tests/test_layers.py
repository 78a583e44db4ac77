"""Layers only look down (docs/architecture.md): the import contracts of pyproject.toml hold.

`make lint` checks them too; here they fail the suite as well, so a change that imports upward
is caught by whoever runs only the tests.
"""

import subprocess
import sys

from tests.conftest import ROOT


def test_the_import_contracts_hold() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports; exit(lint_imports())"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
