"""A cgroup per instance, for `limits.cpu` and `limits.pids`, where the worker may make them.

cgroup v2 (one hierarchy with the cpu and pids controllers enabled) or v1 (a hierarchy per
controller, as on machines with v1 controllers beside an empty v2 mount); only a worker running
as root can make groups in either. The worker makes the groups before the fork, the child joins
them before it drops its privileges, and the worker removes them once every process of the
instance is gone. Without a cgroup for a limit the start is refused: a limit that is asked for
and silently not applied is worse than a clear no.

Standard library only: the fork server's children import this module.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
GROUP = "sequence-hub"
CPU_PERIOD_US = 100_000


class CgroupError(RuntimeError):
    pass


@functools.cache
def base_for(controller: str) -> Path | None:
    """Where this worker makes groups for `controller`, or None where it cannot."""
    if os.geteuid() != 0:
        return None
    v2 = ROOT / "cgroup.controllers"
    with contextlib.suppress(OSError):
        if controller in v2.read_text().split():
            base = ROOT / GROUP
            base.mkdir(exist_ok=True)
            # Controllers must be enabled for the children of our group too.
            control = base / "cgroup.subtree_control"
            with contextlib.suppress(OSError):
                control.write_text(f"+{controller}")
            if controller in control.read_text().split():
                return base
    v1 = ROOT / controller
    if (v1 / "cgroup.procs").exists():
        base = v1 / GROUP
        with contextlib.suppress(OSError):
            base.mkdir(exist_ok=True)
            return base
    return None


def create(iid: str, limits: dict[str, object]) -> list[str]:
    """The folders of the instance's groups with the limits written; [] when none is asked."""
    wanted = {"cpu": limits.get("cpu"), "pids": limits.get("pids")}
    made: list[str] = []
    try:
        for controller, value in wanted.items():
            if value is None:
                continue
            base = base_for(controller)
            if base is None:
                raise CgroupError(
                    f"limits.{controller} needs a cgroup, and this worker cannot make one "
                    "(it runs as root on a machine with the controller: docs/operations.md)"
                )
            folder = base / iid
            folder.mkdir(exist_ok=True)
            made.append(str(folder))
            _write_limit(folder, controller, value)
    except BaseException:
        remove(made)
        raise
    return made


def _write_limit(folder: Path, controller: str, value: object) -> None:
    if controller == "pids":
        (folder / "pids.max").write_text(str(int(value)))  # type: ignore[call-overload]
        return
    quota = max(1000, int(float(value) * CPU_PERIOD_US))  # type: ignore[arg-type]
    if (folder / "cpu.max").exists():
        (folder / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
    else:
        (folder / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        (folder / "cpu.cfs_quota_us").write_text(str(quota))


def join(folders: list[str]) -> None:
    """Move this process into the groups (the child, still root, before running any code)."""
    for folder in folders:
        fd = os.open(os.path.join(folder, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)


def remove(folders: list[str]) -> None:
    """Remove the groups; called once their processes are gone (a group with any left
    stays, and is tried again the next time the worker removes groups)."""
    for folder in folders:
        with contextlib.suppress(OSError):
            os.rmdir(folder)
