"""Who sequence code runs as, so it cannot read the hub's files (docs/operations.md, Isolation).

A worker running as root forks each child as a user id of its own, taken from a range no
account uses: the hub's database, secret key, package storage and other instances' folders are
closed to it by plain file permissions. A worker running as an ordinary user cannot change
user; its children run as that user, isolated only by their clean environment.

Standard library only: the fork server's children import this module.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

PR_SET_DUMPABLE = 4
CLONE_NEWNET = 0x40000000


def uid_for(iid: str, base: int, count: int) -> int:
    """A user id for one instance: stable, spread over `count` ids from `base`.

    Two live instances share one only by a hash collision (about 1 in `count` per pair).
    """
    digest = hashlib.sha256(iid.encode()).digest()
    return base + int.from_bytes(digest[:8], "big") % count


def run_as_for(iid: str, mode: str, base: int, count: int, data_dir: Path) -> dict[str, int] | None:
    """`{"uid", "gid"}` for the child, or None to leave it as the worker's user.

    mode: "auto" (an id per instance when root, where that can work), "none", or a user name
    for every child. "auto" keeps the worker's user when another user could not run the child:
    the standard library or the data folder (under /root, a private /tmp folder) closed to it.
    """
    if mode == "none" or os.geteuid() != 0:
        return None
    if mode == "auto":
        if not (readable_by_others(stdlib_of(runtime_python())) and passable(data_dir)):
            return None
        uid = uid_for(iid, base, count)
        return {"uid": uid, "gid": uid}
    user = pwd.getpwnam(mode)
    return {"uid": user.pw_uid, "gid": user.pw_gid}


def readable_by_others(path: Path) -> bool:
    """Whether a user with no special rights can reach `path` and list it."""
    path = path.resolve()
    try:
        for folder in [*reversed(path.parents), path]:
            if not os.stat(folder).st_mode & stat.S_IXOTH:
                return False
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False


def passable(folder: Path) -> bool:
    """Whether a user with no special rights can pass through `folder` and all above it."""
    folder = folder.resolve()
    try:
        return all(os.stat(f).st_mode & stat.S_IXOTH for f in [*folder.parents, folder])
    except OSError:
        return False


@functools.cache
def stdlib_of(python: str) -> Path:
    if Path(python).resolve() == Path(sys.executable).resolve():
        import sysconfig

        return Path(sysconfig.get_path("stdlib"))
    out = subprocess.run(
        [python, "-S", "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return Path(out.stdout.strip())


@functools.cache
def runtime_python() -> str:
    """The interpreter for the fork server.

    This one, unless children change user and this one's standard library is closed to them
    (a pyenv build under /root, say): then a system interpreter of the same version whose
    standard library anyone may read. The runtime imports only the standard library, and a
    package's compiled extensions need the same minor version, which both have.
    """
    mine = sys.executable
    if os.geteuid() != 0 or os.environ.get("HUB_RUN_AS", "auto") != "auto":
        return mine
    if readable_by_others(stdlib_of(mine)):
        return mine
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in sorted(glob.glob(f"/usr/bin/python{version}")) + sorted(
        glob.glob(f"/usr/local/bin/python{version}")
    ):
        try:
            if readable_by_others(stdlib_of(candidate)):
                return candidate
        except (OSError, subprocess.SubprocessError):
            continue
    return mine


def own_workdir(workdir: str, run_as: dict[str, Any]) -> None:
    """The instance's folder belongs to its user, and to nobody else."""
    os.chown(workdir, int(run_as["uid"]), int(run_as["gid"]))
    os.chmod(workdir, 0o700)


def drop_privileges(run_as: dict[str, Any]) -> None:
    """Become the instance's user for good (the child of a root fork server)."""
    os.setgroups([])
    os.setgid(int(run_as["gid"]))
    os.setuid(int(run_as["uid"]))
    # Changing user made the process non-dumpable, which hands /proc/self/fd to root; the
    # runtime and subprocess read it. The new user owns nothing a dump could leak.
    _libc().prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)


def isolate_network() -> None:
    """An empty network namespace: no route to Redis, the database or anything else."""
    if _libc().unshare(CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"unshare(CLONE_NEWNET) failed: {os.strerror(errno)}")


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)
