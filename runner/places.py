"""Where the folders that children must reach live: their own folders (run/), unpacked
packages (cache/) and what the worker lends them (lib/: the stream library, the Node runtime).

They live in the data folder, unless the worker is root and the data folder is closed to
other users (a checkout under /root, a private /tmp folder): a child running as a user id of
its own could not pass through to them. Then they live in a folder of this hub's own under
HUB_CHILDREN_ROOT (default /var/lib/sequence-hub), named by a hash of the data folder, so that
children still run as users of their own instead of as root. HUB_CHILDREN_DIR names the folder
outright. Nothing else of the hub is kept there: it holds only what children may read anyway.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import stat
from pathlib import Path

from django.conf import settings

from runner import isolation

NODE_RUNTIME = Path(__file__).resolve().parent / "node_runtime.js"


def children_root() -> Path:
    return _children_root(
        settings.HUB_DATA_DIR,
        settings.HUB_CHILDREN_DIR,
        settings.HUB_CHILDREN_ROOT,
        os.geteuid(),
        settings.HUB_RUN_AS,
    )


@functools.cache
def _children_root(data: Path, chosen: Path | None, base: Path, euid: int, run_as: str) -> Path:
    if chosen is not None:
        root = chosen
    elif euid != 0 or run_as == "none" or isolation.passable(data):
        return data
    else:
        root = base / hashlib.sha256(str(data).encode()).hexdigest()[:16]
    for folder in [*reversed(root.relative_to(root.anchor).parents), root.relative_to(root.anchor)]:
        path = Path(root.anchor) / folder
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o711)
            path.chmod(0o711)  # mkdir's mode is masked by the umask
        _check_safe(path)
    return root


def _check_safe(path: Path) -> None:
    """Refuse a folder on the way to the children's root that someone other than root (or
    the hub's user) could have made or could change: what it holds (packages, the lent
    library, the Node runtime) runs in every instance. Checked after making it, so a folder
    planted in a race by another user is caught too. A world-writable folder is passed only
    when sticky (/tmp): others cannot replace what root made in it, and the next is checked."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ValueError(f"{path} (on the way to HUB_CHILDREN_ROOT) is not a plain folder")
    if info.st_uid not in (0, os.geteuid()):
        raise ValueError(f"{path} (on the way to HUB_CHILDREN_ROOT) is not root's nor the hub's")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        raise ValueError(f"{path} (on the way to HUB_CHILDREN_ROOT) is writable by others")


def _passable_folder(path: Path) -> Path:
    """`path`, made if missing, mode 0711: children pass through to their own entry in it
    but may not list it (from the moment it exists, not from the next time settings load)."""
    if not path.is_dir():
        path.mkdir(mode=0o711, parents=True, exist_ok=True)
        path.chmod(0o711)  # mkdir's mode is masked by the umask
    return path


@functools.cache
def _run_root(root: Path) -> Path:
    run = _passable_folder(root / "run")
    with contextlib.suppress(OSError):
        run.chmod(0o711)  # once a process: also one an older hub made with another mode
    return run


def run_root() -> Path:
    """Instances' folders live here; others may pass through (to their own) but not list it."""
    return _run_root(children_root())


def cache_root() -> Path:
    """Unpacked packages: children pass through to their own package, but may not list it."""
    return _passable_folder(children_root() / "cache")


def library_root() -> Path:
    """What the worker lends children (read only to them)."""
    return children_root() / "lib"


@functools.cache
def node_runtime() -> Path:
    """The Node runtime children run: the checkout's file when other users can read it, else
    a copy beside the lent library (a checkout under /root is closed to a child's user id)."""
    if os.geteuid() != 0 or isolation.readable_by_others(NODE_RUNTIME):
        return NODE_RUNTIME
    data = NODE_RUNTIME.read_bytes()
    folder = _passable_folder(library_root())
    dest = folder / f"node_runtime-{hashlib.sha256(data).hexdigest()[:16]}.js"
    if not dest.is_file():
        staging = folder / f".{dest.name}.{os.getpid()}.partial"
        staging.write_bytes(data)
        staging.chmod(0o444)
        os.replace(staging, dest)  # whole or not at all, for a child starting meanwhile
    return dest
