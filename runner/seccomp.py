"""A seccomp filter for the fork server and every child: the sockets Landlock does not see.

Landlock closes TCP ports, but on kernels with Multipath TCP enabled an MPTCP socket
(`socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP)`) connects to the same services unchecked; and
up to its ABI 7 Landlock does not govern connecting to a Unix socket by path (a PostgreSQL
socket with `trust` or `peer`, or, when children share the worker's user id, the hub's Redis
socket). So:

* `socket(AF_UNIX, ...)` fails with EACCES (`socketpair`, which Python and Node use for their
  own plumbing, still works; no path can be reached);
* `socket(AF_INET or AF_INET6, ..., IPPROTO_MPTCP)` fails with EACCES;
* io_uring fails with ENOSYS (its operations do not go through this filter; libuv and others
  fall back to plain system calls);
* `prlimit64` on another process, and `setpriority` of anything but itself, fail with EPERM
  (a child sharing the worker's user id could otherwise set the worker's limits or priority);
* system calls of another architecture (32-bit ones on x86_64, x32) fail with ENOSYS, so none
  of the above has a second door.

Installed once in the fork server (filters are inherited across fork and exec, and cannot be
removed), so it costs a start nothing. Standard library only.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import platform
import struct

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
LD_W_ABS = 0x20
JEQ = 0x15
JGE = 0x35
RET = 0x06
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
IPPROTO_MPTCP = 262
X32_BIT = 0x40000000

# machine: (audit architecture, socket, io_uring_setup, io_uring_enter, io_uring_register)
ARCHES = {
    "x86_64": (0xC000003E, 41, 425, 426, 427),
    "aarch64": (0xC00000B7, 198, 425, 426, 427),
}
# machine: (prlimit64, setpriority)
TARGETED = {"x86_64": (302, 141), "aarch64": (261, 140)}
# struct seccomp_data: nr (int), arch (u32), instruction_pointer (u64), args[6] (u64); the
# low half of an argument (little-endian machines only, as both above are).
NR, ARCH, ARG0, ARG1, ARG2 = 0, 4, 16, 24, 32


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


@functools.cache
def program() -> bytes | None:
    """The filter for this machine's architecture, or None where it is not known."""
    arch = ARCHES.get(platform.machine())
    if arch is None:
        return None
    audit, socket_nr, *uring = arch
    prlimit_nr, setpriority_nr = TARGETED[platform.machine()]
    eacces, enosys = RET_ERRNO | errno.EACCES, RET_ERRNO | errno.ENOSYS
    eperm = RET_ERRNO | errno.EPERM
    code = [
        _insn(LD_W_ABS, ARCH),
        _insn(JEQ, audit, 1, 0),  # 1
        _insn(RET, enosys),  # 2: another architecture's system calls
        _insn(LD_W_ABS, NR),  # 3
        _insn(JGE, X32_BIT, 0, 1),  # 4
        _insn(RET, enosys),  # 5: x32
        _insn(JEQ, uring[0], 2, 0),  # 6 -> 9
        _insn(JEQ, uring[1], 1, 0),  # 7 -> 9
        _insn(JEQ, uring[2], 0, 1),  # 8 -> 9 / 10
        _insn(RET, enosys),  # 9: io_uring
        # Limits and priority of another process: Landlock scopes signals, not these, and a
        # child sharing the worker's user id could set the worker's RLIMIT_CPU (the kernel
        # then kills it) or renice it. Only the child's own (pid 0) pass.
        _insn(JEQ, prlimit_nr, 0, 4),  # 10 -> 11 / 15
        _insn(LD_W_ABS, ARG0),  # 11: prlimit64(pid, ...)
        _insn(JEQ, 0, 1, 0),  # 12 -> 14 / 13
        _insn(RET, eperm),  # 13
        _insn(RET, RET_ALLOW),  # 14
        _insn(JEQ, setpriority_nr, 0, 6),  # 15 -> 16 / 22
        _insn(LD_W_ABS, ARG0),  # 16: setpriority(which, who, prio): PRIO_PROCESS (0) only,
        _insn(JEQ, 0, 0, 2),  # 17 -> 18 / 20   (PRIO_PGRP and PRIO_USER reach others)
        _insn(LD_W_ABS, ARG1),  # 18: and who = 0, itself
        _insn(JEQ, 0, 1, 0),  # 19 -> 21 / 20
        _insn(RET, eperm),  # 20
        _insn(RET, RET_ALLOW),  # 21
        _insn(JEQ, socket_nr, 1, 0),  # 22 -> 24
        _insn(RET, RET_ALLOW),  # 23
        _insn(LD_W_ABS, ARG0),  # 24: socket(domain, type, protocol)
        _insn(JEQ, AF_UNIX, 4, 0),  # 25 -> 30
        _insn(JEQ, AF_INET, 1, 0),  # 26 -> 28
        _insn(JEQ, AF_INET6, 0, 3),  # 27 -> 28 / 31
        _insn(LD_W_ABS, ARG2),  # 28
        _insn(JEQ, IPPROTO_MPTCP, 0, 1),  # 29 -> 30 / 31
        _insn(RET, eacces),  # 30
        _insn(RET, RET_ALLOW),  # 31
    ]
    return b"".join(code)


def install() -> bool:
    """Filter this process and all it will fork or exec. False where the architecture is
    unknown; OSError where the kernel refuses."""
    code = program()
    if code is None:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _Fprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter refused: {errno.errorcode.get(err, err)}")
    return True
