"""`si seq pack` and `.siignore`, without a hub."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from client.pack import PackError, default_output, pack, pack_to_bytes, resolve_main
from client.siignore import IgnoreRules
from sequences.packages import PackageError, inspect_package


def names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return sorted(m.name for m in tar.getmembers())


def make(root: Path, files: dict[str, str], package: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    meta = package if package is not None else {"name": "p", "version": "1.0.0", "main": "main.py"}
    (root / "package.json").write_text(json.dumps(meta))
    files = {"main.py": "def run(context, input):\n    return None\n", **files}
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("pattern", "path", "is_dir", "ignored"),
    [
        ("*.pyc", "a.pyc", False, True),
        ("*.pyc", "deep/er/a.pyc", False, True),
        ("*.pyc", "a.py", False, False),
        ("build/", "build", True, True),
        ("build/", "build", False, False),  # a trailing slash matches directories only
        ("build/", "src/build", True, True),
        ("/build", "src/build", True, False),  # anchored to the root
        ("/build", "build", False, True),
        ("docs/*.md", "docs/a.md", False, True),
        ("docs/*.md", "x/docs/a.md", False, False),  # a middle slash anchors too
        ("docs/*.md", "docs/sub/a.md", False, False),  # * does not cross directories
        ("**/cache", "a/b/cache", True, True),
        ("**/cache", "cache", True, True),
        ("logs/**", "logs/a/b.txt", False, True),
        ("a/**/b", "a/b", False, True),
        ("a/**/b", "a/x/y/b", False, True),
        ("file?.txt", "file1.txt", False, True),
        ("file?.txt", "file10.txt", False, False),
        ("[abc].txt", "b.txt", False, True),
        ("[!abc].txt", "b.txt", False, False),
        ("[!abc].txt", "d.txt", False, True),
        ("\\#hash", "#hash", False, True),
        ("# comment", "# comment", False, False),
        ("", "anything", False, False),
    ],
)
def test_siignore_patterns(pattern: str, path: str, is_dir: bool, ignored: bool) -> None:
    assert IgnoreRules.parse(pattern).ignored(path, is_dir) is ignored


def test_siignore_last_match_wins_and_negation() -> None:
    rules = IgnoreRules.parse("*.log\n!keep.log\n")
    assert rules.ignored("a.log")
    assert not rules.ignored("keep.log")
    assert IgnoreRules.parse("!keep.log\n*.log\n").ignored("keep.log")


def test_siignore_excluded_follows_ignored_directories() -> None:
    rules = IgnoreRules.parse("data/\n!data/keep.txt\n")
    # As in git: a file inside an ignored directory cannot be re-included.
    assert rules.excluded("data/keep.txt")
    assert not rules.excluded("other/keep.txt")


def test_pack_writes_dir_tar_gz_beside_the_directory(tmp_path: Path) -> None:
    root = make(tmp_path / "hello", {"lib/util.py": "X = 1\n"})
    result = pack(root)
    assert result.path == tmp_path / "hello.tar.gz" == default_output(root)
    assert names(result.path.read_bytes()) == ["lib", "lib/util.py", "main.py", "package.json"]
    assert result.config["main"] == "main.py"
    assert result.size == result.path.stat().st_size


def test_pack_honours_siignore_and_never_packs_its_own_output(tmp_path: Path) -> None:
    root = make(
        tmp_path / "p",
        {
            ".siignore": "# comment\n*.log\n__pycache__/\n/secret.txt\n!important.log\n",
            "a.log": "x",
            "important.log": "y",
            "secret.txt": "s",
            "sub/secret.txt": "t",
            "__pycache__/m.pyc": "c",
            "sub/__pycache__/n.pyc": "d",
        },
    )
    result = pack(root, root / "out.tar.gz")
    got = names(result.path.read_bytes())
    assert got == [".siignore", "important.log", "main.py", "package.json", "sub", "sub/secret.txt"]
    assert result.files == got


def test_pack_to_bytes_is_the_same_content(tmp_path: Path) -> None:
    root = make(tmp_path / "p", {"data/x.txt": "1"})
    assert names(pack_to_bytes(root)) == ["data", "data/x.txt", "main.py", "package.json"]


def test_pack_keeps_modes_and_hides_the_owner(tmp_path: Path) -> None:
    root = make(tmp_path / "p", {"run.sh": "#!/bin/sh\n"})
    os.chmod(root / "run.sh", 0o755)
    with tarfile.open(fileobj=io.BytesIO(pack_to_bytes(root)), mode="r:gz") as tar:
        member = tar.getmember("run.sh")
    assert member.mode & 0o777 == 0o755
    assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")


@pytest.mark.parametrize(
    ("package", "files", "message"),
    [
        (None, {}, "package.json not found"),
        ("{not json", {}, "is not valid JSON"),
        ("[1, 2]", {}, "must hold a JSON object"),
        ({"name": "x"}, {}, '"main" must be'),
        ({"main": 7}, {}, '"main" must be'),
        ({"main": "/etc/passwd"}, {}, "must be relative"),
        ({"main": "../outside.py"}, {}, 'may not use ".."'),
        ({"main": "missing.py"}, {}, "names no file"),
        ({"main": "lib"}, {"lib/a.py": ""}, "names no file"),
        ({"main": "run.sh"}, {"run.sh": ""}, "cannot tell how to run"),
        ({"main": "main.py"}, {".siignore": "*.py\n"}, 'leaves out "main"'),
        ({"main": "main.py"}, {".siignore": "package.json\n"}, "leaves out package.json"),
    ],
)
def test_pack_refuses_what_the_hub_would_refuse(tmp_path: Path, package, files, message) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (tmp_path / "outside.py").write_text("")
    (root / "main.py").write_text("")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    if package is not None:
        text = package if isinstance(package, str) else json.dumps(package)
        (root / "package.json").write_text(text)
    with pytest.raises(PackError, match=message):
        pack(root)
    assert not (tmp_path / "p.tar.gz").exists()


def test_pack_refuses_links_leaving_the_package_and_non_directories(tmp_path: Path) -> None:
    root = make(tmp_path / "p", {})
    (root / "inside").symlink_to("main.py")
    assert "inside" in names(pack_to_bytes(root))
    (root / "escape").symlink_to("/etc/hostname")
    with pytest.raises(PackError, match="outside the package"):
        pack_to_bytes(root)
    with pytest.raises(PackError, match="is not a directory"):
        pack(root / "main.py")


NODE = {"engines": {"node": ">=18"}}
PYTHON = {"engines": {"python3": "3.11"}}


@pytest.mark.parametrize(
    ("config", "files", "resolved"),
    [
        # Node's require(): the path, then .js, .json (then .mjs, .cjs: beyond Node).
        ({"main": "index"}, ["index.js"], "index.js"),
        ({"main": "./index", **NODE}, ["index.js"], "index.js"),
        ({"main": "index"}, ["index.json", "index.js"], "index.js"),
        ({"main": "index", **NODE}, ["index.json"], "index.json"),
        ({"main": "index"}, ["index.mjs"], "index.mjs"),
        ({"main": "index"}, ["index.cjs"], "index.cjs"),
        ({"main": "index.js"}, ["index.js", "index.js.js"], "index.js"),
        # A folder: its package.json's main (a file, or a folder's index), else its index.
        ({"main": "lib"}, ["lib/package.json:start", "lib/start.js"], "lib/start.js"),
        ({"main": "lib"}, ["lib/package.json:dist", "lib/dist/index.js"], "lib/dist/index.js"),
        ({"main": "lib", **NODE}, ["lib/index.js"], "lib/index.js"),
        ({"main": "lib"}, ["lib/package.json:gone.js", "lib/index.js"], "lib/index.js"),
        ({"main": "lib"}, ["lib/package.json:../up.js", "up.js", "lib/index.js"], "lib/index.js"),
        ({"main": "lib"}, ["lib/package.json:start"], None),
        ({"main": "./lib/"}, ["lib/index.js"], None),
        # Python: the path, then + ".py"; no folders. Without engines, Node's rule first.
        ({"main": "main", **PYTHON}, ["main.py"], "main.py"),
        ({"main": "main"}, ["main.py"], "main.py"),
        ({"main": "src/app"}, ["src/app.py"], "src/app.py"),
        ({"main": "index"}, ["index.py", "index.js"], "index.js"),
        ({"main": "app", **PYTHON}, ["app/__init__.py"], None),
        ({"main": "main", **PYTHON}, ["main.js"], None),
        # Refused alike.
        ({"main": "run.sh"}, ["run.sh"], None),
        ({"main": "lib/../main.py"}, ["main.py"], None),
        ({"main": "missing"}, ["main.py"], None),
    ],
)
def test_main_resolves_the_same_in_si_seq_pack_and_on_the_hub(
    tmp_path: Path, config: dict, files: list[str], resolved: str | None
) -> None:
    """The client cannot import the hub's rule (sequences/packages.py:resolve_main): both run
    on the same folder, packed as it is."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "package.json").write_text(json.dumps({"name": "p", **config}))
    for entry in files:
        rel, _, inner_main = entry.partition(":")
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"main": inner_main}) if inner_main else "x")
    try:
        by_client: str | None = resolve_main(root, config)
    except PackError:
        by_client = None
    archive = tmp_path / "p.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="p")
    try:
        by_hub: str | None = inspect_package(archive, max_files=100, max_bytes=1 << 20).main
    except PackageError:
        by_hub = None
    assert by_client == by_hub == resolved
