"""Who sequence code runs as, so it cannot read the hub's files (docs/operations.md, Isolation).

A worker running as root forks each child as a user id of its own, leased from a range no
account uses for as long as the instance lives (never two live instances on one id, whatever id
a client chose): the hub's database, secret key, package storage and other instances' folders
are closed to it by plain file permissions, and when it ends every process left under that id
is killed before the id is handed out again. In every mode, root or not, Landlock
(runner/landlock.py) confines what a child may open, signal and trace.

Standard library (and runner/landlock.py, which is too) only: the fork server's children import
this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import glob
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from runner import landlock

PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
# SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP and SECBIT_NO_CAP_AMBIENT_RAISE on, SECBIT_KEEP_CAPS off,
# each locked (bits 0-7: a setting and its lock, in pairs).
SECUREBITS_LOCKED_NOROOT = 0b1110_1111
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000


# Machine-wide, root's: every hub and worker on the machine leases its children's ids here.
LEASE_DIR = Path("/run/sequence-hub/uids")


class UidLease:
    """One user id held for one live instance: an flock on a file named after it, so that a
    worker that dies (and its children with it) frees its ids without anyone cleaning up."""

    def __init__(self, uid: int, fd: int, path: Path) -> None:
        self.uid, self._fd, self._path = uid, fd, path

    def release(self) -> None:
        """Give the id back (after every process under it was killed)."""
        if self._fd < 0:
            return
        # Unlinked while still locked: a worker that opened the old file re-checks the path.
        with contextlib.suppress(OSError):
            self._path.unlink()
        os.close(self._fd)
        self._fd = -1


def lease_uid(base: int, count: int, folder: Path = LEASE_DIR) -> UidLease:
    """A user id from [base, base + count) that no live instance on this machine holds."""
    if not folder.is_dir():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for _ in range(256):
        lease = try_lease(base + secrets.randbelow(count), folder)
        if lease is not None:
            return lease
    raise RuntimeError(f"no free user id for a child in {base}..{base + count - 1}")


def try_lease(uid: int, folder: Path = LEASE_DIR) -> UidLease | None:
    """That user id, if no live instance holds it (`folder` exists)."""
    path = folder / str(uid)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            return UidLease(uid, fd, path)
    except OSError:
        pass  # held by a live instance, or released and unlinked meanwhile
    os.close(fd)
    return None


SWEEP_CODE = (
    "import os\nfor _ in range(100):\n    try:\n        os.kill(-1, 9)\n"
    "    except OSError:\n        break\n"
)


def sweep_uid_outside(uid: int) -> None:
    """Kill every process of `uid` from a fresh interpreter started as that user: for
    processes of another fork server's Landlock domain (a worker that died), which the
    children of this one may not signal."""
    subprocess.run(
        [runtime_python(), "-S", "-c", SWEEP_CODE],  # one that user may run
        user=uid,
        group=uid,
        extra_groups=[],
        env={},
        cwd="/",
        timeout=30,
        check=False,
    )


def stray_uids(base: int, count: int) -> set[int]:
    """User ids of the children's range that some process runs as (from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                uid = os.stat(f"/proc/{entry}").st_uid
                if base <= uid < base + count:
                    found.add(uid)
    return found


def run_as_for(mode: str, data_dir: Path) -> dict[str, Any] | None:
    """How the child's user is chosen, or None to leave it as the worker's user.

    `{"lease": True}`: a user id of its own, leased by the supervisor at spawn; `{"uid",
    "gid"}`: a fixed user. mode: "auto" (an id per instance when root, where that can work),
    "none", or a user name for every child. "auto" keeps the worker's user when another user
    could not run the child: the standard library or the data folder (under /root, a private
    /tmp folder) closed to it.
    """
    if mode == "none" or os.geteuid() != 0:
        return None
    if mode == "auto":
        if not (readable_by_others(stdlib_of(runtime_python())) and passable(data_dir)):
            return None
        return {"lease": True}
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


SYSTEM_READ: tuple[str, ...] = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_READ += ("/etc", "/opt", "/proc", "/sys", "/run/systemd/resolve", "/run/resolvconf")
# Not /dev/pts nor /dev/tty (an operator's terminal of the same user could be read), nor
# /dev/shm (shared by every instance, never cleaned, and memory outside any limit).
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


def sandbox_rules(python: str, hidden: list[str], files: list[str]) -> list[tuple[str, int]]:
    """The Landlock rules every child shares: read and run the system, the interpreter's
    standard library and `files` (the runtimes); read and write the usual devices. Nothing
    under `hidden` (the checkout, the hub's virtual environment, the data folder), and neither
    /tmp, /dev/shm, /home nor /root: a child's TMPDIR and HOME are its own folder."""
    roots = list(SYSTEM_READ)
    stdlib = stdlib_of(python)
    roots += [str(stdlib), str(Path(os.path.realpath(python)).parent.parent)]
    node = shutil.which("node")
    if node:
        roots.append(str(Path(os.path.realpath(node)).parent.parent))
    roots = [root for root in roots if os.path.realpath(root) != "/"]
    rules = [(path, landlock.READ) for path in landlock.allowed_roots(roots, hidden)]
    rules += [(path, landlock.READ) for path in files]
    device = landlock.READ_FILE | landlock.WRITE_FILE | landlock.TRUNCATE
    rules += [(path, device) for path in DEVICES]
    return list(dict.fromkeys(rules))


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


def drop_capabilities() -> None:
    """For a child that stays root (HUB_RUN_AS=none, or a user id of 0): no capability now or
    after an exec. uid 0 without capabilities still owns root's files, which Landlock hides;
    what it loses is everything else root may do (load modules, change users, mount, trace,
    configure the network, pass file permissions). Raises OSError when it cannot."""
    libc = _libc()
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):  # the bounding set: what an exec could grant back
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            _raise("dropping a capability from the bounding set")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    # Locked: root regains nothing by an exec, and the bits cannot be changed back.
    if libc.prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_NOROOT, 0, 0, 0) != 0:
        _raise("setting the secure bits")
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: all empty, twice
    if libc.capset(header, data) != 0:
        _raise("clearing the capabilities")


def _raise(what: str) -> None:
    errno = ctypes.get_errno()
    raise OSError(errno, f"{what} failed: {os.strerror(errno)}")


def isolate_network() -> None:
    """An empty network namespace: no route to Redis, the database or anything else.

    A worker that is not root makes it inside a user namespace of the child's own, where the
    child keeps its user id (mapped onto itself) and gains nothing outside it."""
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE_NEWNET if uid == 0 else CLONE_NEWNET | CLONE_NEWUSER
    if _libc().unshare(flags) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"unshare of the network namespace failed: {os.strerror(errno)}")
    if flags & CLONE_NEWUSER:
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", f"{uid} {uid} 1"),
            ("gid_map", f"{gid} {gid} 1"),
        ):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)
