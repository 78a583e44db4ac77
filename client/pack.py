"""`si seq pack`: a directory into a package (tar.gz), checked the way the hub will check it.

The hub validates uploads anyway; checking here saves a round trip and names the file to fix.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from client.siignore import IgnoreRules


class PackError(Exception):
    """The directory cannot become a package; the message says why."""


@dataclass
class PackResult:
    path: Path
    config: dict[str, Any]
    files: list[str] = field(default_factory=list)
    size: int = 0


def default_output(directory: Path) -> Path:
    """`DIR.tar.gz`, beside the directory."""
    directory = directory.resolve()
    return directory.parent / f"{directory.name}.tar.gz"


def read_package_json(directory: Path) -> dict[str, Any]:
    """package.json of a directory, checked: it exists, parses to an object, and `main` names a
    file inside the directory (`resolve_main`)."""
    path = directory / "package.json"
    if not path.is_file():
        raise PackError(f"{path} not found: a package needs package.json at its root")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PackError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise PackError(f"{path} must hold a JSON object")
    resolve_main(directory, config)
    return config


# How `main` names a file, as the hub resolves it (sequences/packages.py, MAIN_SUFFIXES and
# resolve_main): Node's require() for Node packages, the path or the path + ".py" for Python.
# The client cannot import the hub, so tests/client/test_pack.py runs both on the same packages.
MAIN_SUFFIXES = {"node": ("", ".js", ".json", ".mjs", ".cjs"), "python": ("", ".py")}
_LANGUAGE_OF_SUFFIX = {".py": "python", ".js": "node", ".mjs": "node", ".cjs": "node"}


def resolve_main(directory: Path, config: dict[str, Any]) -> str:
    """The file `main` names, relative to `directory` (posix), or PackError."""
    where = directory / "package.json"
    main = config.get("main")
    if not isinstance(main, str) or not main.strip():
        raise PackError(f'{where}: "main" must be the path of the program file, e.g. "main.py"')
    parts = [part for part in main.split("/") if part not in ("", ".")]
    if main.startswith("/") or "\\" in main:
        raise PackError(f'{where}: "main" ({main}) must be relative to the package, with "/"')
    if ".." in parts:
        raise PackError(f'{where}: "main" ({main}) may not use ".."')
    if not parts or main.endswith("/"):
        raise PackError(f'{where}: "main" ({main}) is a folder, not a file')
    root = directory.resolve()
    engines = config.get("engines") or {}
    relative = "/".join(parts)
    if "python3" in engines:
        languages: tuple[str, ...] = ("python",)
    elif "node" in engines:
        languages = ("node",)
    elif _is_file(root, relative):
        if PurePosixPath(relative).suffix not in _LANGUAGE_OF_SUFFIX:
            raise PackError(
                f'{where}: cannot tell how to run "main" ({main}): add engines.python3 or '
                "engines.node, or use a .py or .js main"
            )
        return relative
    else:
        languages = ("node", "python")  # STH runs a package without engines.python3 in Node
    for language in languages:
        found = _resolve_as(root, relative, MAIN_SUFFIXES[language], language == "node")
        if found is not None:
            return found
    raise PackError(f'{where}: "main" ({main}) names no file in {directory}')


def _resolve_as(root: Path, relative: str, suffixes: tuple[str, ...], node: bool) -> str | None:
    def as_file(path: str, ends: tuple[str, ...] = suffixes) -> str | None:
        return next((path + end for end in ends if _is_file(root, path + end)), None)

    found = as_file(relative)
    if found is not None or not node or not (root / relative).is_dir():
        return found
    inner = _folder_main(root, relative)
    if inner is not None:
        found = as_file(inner) or as_file(f"{inner}/index", suffixes[1:])
    return found or as_file(f"{relative}/index", suffixes[1:])


def _is_file(root: Path, relative: str) -> bool:
    # A regular file, not a link: the hub refuses a main that is a symlink.
    try:
        return stat.S_ISREG((root / relative).lstat().st_mode)
    except OSError:
        return False


def _folder_main(root: Path, folder: str) -> str | None:
    """The "main" of `folder`/package.json joined to `folder`, if usable and inside."""
    if not _is_file(root, f"{folder}/package.json"):
        return None
    try:
        inner = json.loads((root / folder / "package.json").read_text(encoding="utf-8"))["main"]
    except (ValueError, UnicodeDecodeError, TypeError, KeyError, OSError):
        return None
    if not isinstance(inner, str) or len(inner) > 1024:
        return None
    parts = [part for part in inner.split("/") if part not in ("", ".")]
    if not parts or ".." in parts or "\\" in inner:
        return None
    return "/".join([folder, *parts])


def package_files(directory: Path, rules: IgnoreRules, skip: Path | None = None) -> list[str]:
    """Root-relative posix paths to pack, sorted, directories included, ignored ones left out
    (and not entered)."""
    root = directory.resolve()
    found: list[str] = []
    for current, dirs, files in os.walk(root):
        base = Path(current).relative_to(root)
        kept = []
        for name in sorted(dirs):
            rel = (base / name).as_posix()
            if rules.ignored(rel, is_dir=True):
                continue
            if (Path(current) / name).is_symlink():
                found.append(rel)  # a link to a directory is packed as a link, not followed
                continue
            kept.append(name)
            found.append(rel)
        dirs[:] = kept
        for name in sorted(files):
            rel = (base / name).as_posix()
            full = Path(current) / name
            if (skip is not None and full.resolve() == skip) or rules.ignored(rel):
                continue
            found.append(rel)
    return sorted(found)


def _check_link(root: Path, rel: str) -> None:
    full = root / rel
    if not full.resolve().is_relative_to(root):
        raise PackError(f"{rel} is a link to {os.readlink(full)}, outside the package")


def _write(root: Path, names: list[str], out: BinaryIO) -> None:
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for rel in names:
            full = root / rel
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                _check_link(root, rel)
            elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                continue  # sockets, fifos, devices have no place in a package
            info = tar.gettarinfo(str(full), arcname=rel)
            # Who packed it is nobody's business and would only make archives differ.
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with full.open("rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)


def _prepare(directory: Path | str, skip: Path | None = None) -> tuple[Path, dict, list[str]]:
    root = Path(directory).resolve()
    if not root.is_dir():
        raise PackError(f"{directory} is not a directory")
    config = read_package_json(root)
    rules = IgnoreRules.of_dir(root)
    if rules.excluded("package.json"):
        raise PackError(".siignore leaves out package.json")
    main = resolve_main(root, config)
    if rules.excluded(main):
        raise PackError(f'.siignore leaves out "main" ({main})')
    return root, config, package_files(root, rules, skip)


def pack(directory: Path | str, output: Path | str | None = None) -> PackResult:
    """Check `directory` and write it as a tar.gz to `output` (default `DIR.tar.gz`)."""
    target = Path(output).resolve() if output else default_output(Path(directory))
    root, config, names = _prepare(directory, skip=target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with partial.open("wb") as out:
            _write(root, names, out)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return PackResult(target, config, names, target.stat().st_size)


def pack_to_bytes(directory: Path | str) -> bytes:
    """Check `directory` and return it packed, without writing a file."""
    root, _config, names = _prepare(directory)
    buffer = io.BytesIO()
    _write(root, names, buffer)
    return buffer.getvalue()
