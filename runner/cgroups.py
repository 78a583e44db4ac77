"""A cgroup per instance, for `limits.cpu` and `limits.pids`, where the worker may make them.

cgroup v2 (one hierarchy with the cpu and pids controllers enabled) or v1 (a hierarchy per
controller, as on machines with v1 controllers beside an empty v2 mount); only a worker running
as root can make groups in either. The worker makes the groups before the fork, the child joins
them before it drops its privileges, and the worker removes them once every process of the
instance is gone. Without a cgroup for a limit the start is refused: a limit that is asked for
and silently not applied is worse than a clear no.

The groups are `<hierarchy>/sequence-hub/<hub id>/<instance id>`: a folder per hub, because
the hierarchy is the machine's and an instance id is only unique within a hub (a client may
choose it), so two hubs on one machine would otherwise share a group and overwrite each
other's limits. An instance's group is always made afresh: one left by an earlier instance
of the same id is removed when empty, and the start refused while it still holds processes.

Standard library only at import: the fork server's children import this module (they only
join the folders they are given; the hub id is read by the worker, in `base_for`).
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
    """This hub's folder for `controller`, where this worker makes the instances' groups
    (`<hierarchy>/sequence-hub/<hub id>`), or None where it cannot."""
    if os.geteuid() != 0:
        return None
    hub = hub_folder()
    v2 = ROOT / "cgroup.controllers"
    with contextlib.suppress(OSError):
        if controller in v2.read_text().split():
            base = _v2_base(controller, ROOT / GROUP / hub)
            if base is not None:
                return base
    v1 = ROOT / controller
    if (v1 / "cgroup.procs").exists():
        base = v1 / GROUP / hub
        with contextlib.suppress(OSError):
            base.mkdir(parents=True, exist_ok=True)
            return base
    return None


def hub_folder() -> str:
    """The name of this hub's folder: its id (`sequences.live.hub_id`, letters, digits, '-'
    and '_' only), which the worker read from its settings or database as it started."""
    # Imported here, not at the top: the fork server's children import this module and must
    # not pull Django in; only the worker calls this.
    from sequences import live

    return live.hub_id()


def _v2_base(controller: str, base: Path) -> Path | None:
    # cgroup v2 passes a controller down only where each level enables it for its children:
    # sequence-hub for the hubs' folders, and the hub's folder for its instances' groups.
    for folder in (base.parent, base):
        folder.mkdir(exist_ok=True)
        control = folder / "cgroup.subtree_control"
        with contextlib.suppress(OSError):
            control.write_text(f"+{controller}")
        if controller not in control.read_text().split():
            return None
    return base


def create(iid: str, limits: dict[str, object]) -> list[str]:
    """The folders of the instance's groups with the limits written; [] when none is asked."""
    wanted = {"cpu": limits.get("cpu"), "pids": limits.get("pids")}
    if not any(value is not None for value in wanted.values()):
        return []
    # The id names a folder: nothing that could climb out of the hub's (the web checks
    # instanceId the same way; this is the last line).
    if not iid or iid in (".", "..") or not all(c.isalnum() or c in "-_." for c in iid):
        raise CgroupError(f"{iid!r} cannot name a cgroup")
    made: list[str] = []
    try:
        for controller, value in wanted.items():
            if value is None:
                continue
            folder = _new_group(controller, iid)
            made.append(str(folder))
            _write_limit(folder, controller, value)
    except BaseException:
        remove(made)
        raise
    return made


def _new_group(controller: str, iid: str) -> Path:
    base = _base(controller)
    try:
        return _make_fresh(base / iid)
    except FileNotFoundError:
        # Not made again here: the children's Landlock rule (launch.sandbox_config) holds the
        # folder the worker started with, not its name, so they could not join a new one.
        raise CgroupError(
            f"{base} was removed while this worker runs: start the worker again"
        ) from None


def _base(controller: str) -> Path:
    base = base_for(controller)
    if base is None:
        raise CgroupError(
            f"limits.{controller} needs a cgroup, and this worker cannot make one "
            "(it runs as root on a machine with the controller: docs/operations.md)"
        )
    return base


def _make_fresh(folder: Path) -> Path:
    """Make the instance's group; one already there is never taken over, as its limits and
    its processes would then be counted with the new instance's."""
    try:
        folder.mkdir()
        return folder
    except FileExistsError:
        pass
    # Left by an earlier instance of this id: its worker died before removing it, or its
    # last process was still dying. A group without processes is removed (rmdir refuses one
    # that has any); one with some refuses the start, rather than share it.
    try:
        folder.rmdir()
        folder.mkdir()
        return folder
    except OSError as exc:
        raise CgroupError(
            f"the cgroup {folder} of an earlier instance with this id is still in use "
            f"({exc.strerror}): start it again once that instance's processes are gone, "
            "or with another instanceId"
        ) from None


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
