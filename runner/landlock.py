"""Landlock (Linux 5.13+, unprivileged): what a child may open, connect to and signal.

What a child may do: read and execute only the system's folders, its interpreter and packages;
write only the instances' folders and a few devices; signal, trace (`/proc/<pid>/environ`,
`mem`) and reach abstract Unix sockets of no process outside the layer: not the hub's. Made with
the three Landlock system calls through ctypes, in one of two ways:

* children with a user id each (a root worker): the fork server restricts itself once, at
  boot, and every child shares that layer, which also closes the TCP ports of the hub's own
  services (Redis, the database). User ids keep the children apart from each other.
* children sharing a user id (a worker that is not root): each child adds a layer of its own,
  allowing only its own folder and package, so that siblings are kept apart too. The ports
  are not closed in this mode (see `restrict_all` for why): the services need passwords.

Standard library only: the fork server's children import this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import struct
from collections.abc import Iterable

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446  # x86_64 and arm64 alike
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH, RULE_NET_PORT = 1, 2
PR_SET_NO_NEW_PRIVS = 38

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
TRUNCATE = 1 << 14
IOCTL_DEV = 1 << 15
CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

# Every filesystem right each ABI knows: a right the layer does not handle stays allowed.
_FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ = EXECUTE | READ_FILE | READ_DIR


class LandlockError(OSError):
    pass


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _syscall(number: int, *args: object) -> int:
    result = _libc().syscall(ctypes.c_long(number), *args)
    if result < 0:
        errno = ctypes.get_errno()
        raise LandlockError(errno, f"landlock syscall {number}: {os.strerror(errno)}")
    return int(result)


@functools.cache
def abi() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is missing or disabled."""
    try:
        return _syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), CREATE_RULESET_VERSION)
    except (LandlockError, AttributeError):
        return 0


def fs_rights() -> int:
    version = abi()
    best = max(v for v in _FS_RIGHTS_BY_ABI if v <= version) if version else 0
    return _FS_RIGHTS_BY_ABI.get(best, 0)


def _ruleset(fs: int, net: int, scoped: int) -> int:
    version = abi()
    if version >= 6:
        attr = struct.pack("=QQQ", fs, net, scoped)
    elif version >= 4:
        attr = struct.pack("=QQ", fs, net)
    else:
        attr = struct.pack("=Q", fs)
    buf = ctypes.create_string_buffer(attr, len(attr))
    return _syscall(SYS_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)), 0)


def _restrict(ruleset: int) -> None:
    _libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    _syscall(SYS_RESTRICT_SELF, ruleset, 0)


def restrict_all(rules: Iterable[tuple[str, int]], ports: Iterable[int]) -> bool:
    """One layer for this process and everything it will fork: `rules` (path, rights) on the
    file system, no TCP connection to `ports`, signals and abstract sockets scoped.

    Used by the fork server when every child runs as a user id of its own: the children
    share this one domain (no copy per child), and user ids keep them apart from each other.
    Landlock's network rules are an allow-list of ports, so the layer holds a rule for each
    of the other 65 000-odd ports: built once here, it would cost every child ~25 ms and
    ~4.5 MiB of kernel memory if each made a domain of its own on top of it.
    False when the kernel has no Landlock (nothing is restricted then).
    """
    handled = fs_rights()
    if not handled:
        return False
    closed = {int(p) for p in ports}
    net = CONNECT_TCP if closed and abi() >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi() >= 6 else 0
    ruleset = _ruleset(handled, net, scoped)
    try:
        _add_paths(ruleset, handled, open_paths(rules), close=True)
        if net:
            attr = ctypes.create_string_buffer(16)
            for port in range(65536):
                if port not in closed:
                    struct.pack_into("=QQ", attr, 0, CONNECT_TCP, port)
                    _syscall(SYS_ADD_RULE, ruleset, RULE_NET_PORT, attr, 0)
        _restrict(ruleset)
    finally:
        os.close(ruleset)
    return True


def _add_paths(ruleset: int, handled: int, rules: list[tuple[int, int]], close: bool) -> None:
    attr = ctypes.create_string_buffer(12)
    try:
        for fd, rights in rules:
            struct.pack_into("=Qi", attr, 0, rights & handled, fd)
            _syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, attr, 0)
    finally:
        if close:
            for fd, _rights in rules:
                with contextlib.suppress(OSError):
                    os.close(fd)


def open_paths(rules: Iterable[tuple[str, int]]) -> list[tuple[int, int]]:
    """(O_PATH descriptor, rights) for each existing path, opened once in the fork server and
    inherited by every child; missing paths are skipped. Descriptors sit high (>= 100), out
    of the way of the seven a child is given."""
    opened = []
    for path, rights in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        high = _dup_high(fd)
        os.close(fd)
        if not os.path.isdir(f"/proc/self/fd/{high}"):
            rights &= FILE_RIGHTS
        opened.append((high, rights))
    return opened


def _dup_high(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100)


def confine(preopened: list[tuple[int, int]], extra: Iterable[tuple[str, int]]) -> bool:
    """Add this process's own layer: the pre-opened rules plus `extra` (its package and
    folder), signals and abstract sockets scoped to its own tree. For children that share a
    user id (the worker's, or HUB_RUN_AS=<user>): the layer keeps them apart. ~0.5 ms.
    False when the kernel has no Landlock."""
    handled = fs_rights()
    if not handled:
        return False
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi() >= 6 else 0
    ruleset = _ruleset(handled, 0, scoped)
    try:
        own = []
        for path, rights in extra:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            own.append((fd, rights if os.path.isdir(path) else rights & FILE_RIGHTS))
        _add_paths(ruleset, handled, own, close=True)
        _add_paths(ruleset, handled, preopened, close=False)
        _restrict(ruleset)
    finally:
        os.close(ruleset)
    return True


def allowed_roots(roots: Iterable[str], forbidden: Iterable[str]) -> list[str]:
    """`roots`, with any that contains a forbidden path replaced by its entries (recursively),
    leaving out the forbidden paths: Landlock can only allow, never carve a hole out."""
    hidden = [os.path.realpath(p) for p in forbidden]
    result: list[str] = []

    def walk(path: str) -> None:
        real = os.path.realpath(path)
        if any(real == h for h in hidden):
            return
        if not any(h.startswith(real.rstrip("/") + "/") for h in hidden):
            result.append(path)
            return
        with contextlib.suppress(OSError):
            for entry in sorted(os.listdir(real)):
                walk(os.path.join(real, entry))

    for root in roots:
        if os.path.lexists(root):
            walk(root)
    return result
