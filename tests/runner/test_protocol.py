"""core/protocol.py is the one table of the child protocol: the Node runtime's copy agrees with
it, and the Python child runtime, preloaded by the fork server, imports nothing but the standard
library and it (a child under Landlock cannot read the hub's source to import more later)."""

from __future__ import annotations

import ast
import re
import sys
from enum import IntEnum
from pathlib import Path

import pytest

from client import calls
from core import protocol
from core.protocol import Exit, Fd, Message

ROOT = Path(__file__).resolve().parents[2]
NODE_RUNTIME = ROOT / "runner" / "node_runtime.js"
# The Node runtime runs sequences only: it has no script-mode messages.
SCRIPT_ONLY = {
    Message.CALL,
    Message.CALL_DONE,
    Message.SCRIPT_LOADED,
    Message.SEQ_REQUEST,
    Message.SEQ_ANSWER,
}
# What a script may import from its package's __pypackages__ (the runtime wraps input in it).
PACKAGE_IMPORTS = {"scramjet.streams"}


def js_table(name: str) -> dict[str, int]:
    """`const NAME = { key: number, ... };` of node_runtime.js, keys in UPPER_SNAKE case."""
    source = NODE_RUNTIME.read_text()
    found = re.search(rf"^const {name} = \{{(.*?)\}};", source, re.MULTILINE | re.DOTALL)
    assert found, f"no table {name} in {NODE_RUNTIME.name}"
    entries = re.findall(r"(\w+):\s*(\d+)", found.group(1))
    assert entries, f"table {name} is empty"
    return {re.sub(r"(?<!^)(?=[A-Z])", "_", key).upper(): int(value) for key, value in entries}


@pytest.mark.parametrize(
    ("table", "enum", "missing"),
    [("FD", Fd, {Fd.STDIN}), ("EXIT", Exit, None), ("MSG", Message, SCRIPT_ONLY)],
)
def test_the_node_runtimes_tables_are_core_protocols(
    table: str, enum: type[IntEnum], missing: set[IntEnum] | None
) -> None:
    js = js_table(table)
    assert {name: enum[name].value for name in js if name in enum.__members__} == js, (
        f"{table} in node_runtime.js names something core.protocol does not"
    )
    if missing is not None:
        assert set(js) == {member.name for member in enum} - {m.name for m in missing}


def test_the_client_lists_the_same_streams() -> None:
    # The client is a program of its own and may not import the hub's core.
    assert calls.STREAMS == protocol.STREAMS


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """Every module a file imports, at any depth (function-level imports too), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}:{node.lineno}: a relative import"
            found.append((node.module or "", node.lineno))
    return found


def is_stdlib(module: str) -> bool:
    return module == "__future__" or module.split(".")[0] in sys.stdlib_module_names


def test_the_python_runtime_imports_only_the_standard_library_and_the_protocol() -> None:
    path = ROOT / "runner" / "python_runtime.py"
    foreign = [
        f"{module} (line {line})"
        for module, line in imported_modules(path)
        if not is_stdlib(module) and module != "core.protocol" and module not in PACKAGE_IMPORTS
    ]
    assert foreign == []


def test_the_protocol_imports_only_the_standard_library() -> None:
    path = ROOT / "core" / "protocol.py"
    assert [m for m, _ in imported_modules(path) if not is_stdlib(m)] == []
