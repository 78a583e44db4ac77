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
    """package.json of a directory, checked: it exists, parses to an object, and `main` is a
    relative path to a file inside the directory."""
    path = directory / "package.json"
    if not path.is_file():
        raise PackError(f"{path} not found: a package needs package.json at its root")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PackError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise PackError(f"{path} must hold a JSON object")
    main = config.get("main")
    if not isinstance(main, str) or not main.strip():
        raise PackError(f'{path}: "main" must be the path of the program file, e.g. "main.py"')
    rel = PurePosixPath(main)
    if rel.is_absolute():
        raise PackError(f'{path}: "main" ({main}) must be relative to the package')
    target = (directory / rel).resolve()
    if not target.is_relative_to(directory.resolve()):
        raise PackError(f'{path}: "main" ({main}) points outside the package')
    if not target.is_file():
        raise PackError(f'{path}: "main" ({main}) is not a file in {directory}')
    return config


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
    main = PurePosixPath(config["main"]).as_posix().removeprefix("./")
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
