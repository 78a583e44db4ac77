"""From an Instance row to a launch spec (runner/PROTOCOL.md) and a running child."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import site
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from runner import cgroups, isolation, landlock
from runner.lent import lent_library
from runner.packagecache import ensure_unpacked
from runner.places import cache_root, children_root, library_root, node_runtime, run_root
from sequences.models import Instance
from sequences.services import tcp_services

log = logging.getLogger(__name__)


ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def workdir_for(iid: str) -> Path:
    """The instance's folder: always a direct child of run/, whatever the id says."""
    if not ID_PATTERN.fullmatch(iid):
        raise ValueError(f"instance id {iid!r} is not 1 to 64 letters, digits, '-' or '_'")
    return run_root() / iid


# Whether children get a user of their own rests on the permissions of the standard library
# and the data folder up to /: a stat of every folder above them, ~5 % of a start's time on
# the supervisor's loop when made for each. Decided again at most this often, so that an
# operator who opens them up is obeyed within seconds without a restart.
RUN_AS_SECONDS = 5.0
_run_as: tuple[float, tuple[str, Path], dict[str, Any] | None] | None = None


def run_as() -> dict[str, Any] | None:
    global _run_as
    now, key = time.monotonic(), (settings.HUB_RUN_AS, settings.HUB_DATA_DIR)
    if _run_as is not None and _run_as[1] == key and now - _run_as[0] < RUN_AS_SECONDS:
        user = _run_as[2]
    else:
        user = isolation.run_as_for(settings.HUB_RUN_AS, children_root())
        _run_as = (now, key, user)
    if as_root(user):
        _warn_as_root()
    return dict(user) if user is not None else None


ROOT_REFUSED = (
    "sequence code would run as root, and a root worker never lets it: HUB_RUN_AS=none or a "
    "user of id 0, or no interpreter that other users may run (docs/operations.md, "
    "Isolation). Set HUB_RUN_AS=auto or an ordinary user's name"
)


def as_root(user: dict[str, Any] | None) -> bool:
    """Whether a child with this `run_as` would be uid 0. Refused: uid 0 without capabilities
    still owns root's files, and may chmod, chown back or set attributes on them, which
    Landlock does not govern (a setuid shell would be one chmod away)."""
    if user is None:
        return os.geteuid() == 0
    return not user.get("lease") and int(user["uid"]) == 0


@functools.cache
def _warn_as_root() -> None:
    log.error("every start will be refused: %s", ROOT_REFUSED)


SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@functools.cache
def child_path() -> str:
    """The system's folders, and Node's where it is elsewhere: not the worker's own PATH,
    which names the hub's folders (a virtual environment, a user's tool folders)."""
    folders = SYSTEM_PATH.split(":")
    node = shutil.which("node")
    if node and os.path.dirname(node) not in folders:
        folders.append(os.path.dirname(node))
    return ":".join(folders)


def child_env(iid: str, package_dir: Path, workdir: Path) -> dict[str, str]:
    """A clean environment: nothing of the hub's settings or secrets reaches user code."""
    return {
        "PATH": child_path(),
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        "HUB_INSTANCE_ID": iid,
        "SEQUENCE_PATH": str(package_dir),
        "INSTANCE_ID": iid,
    }


def build_spec(instance: Instance, mode: str = "sequence", extra: dict | None = None) -> dict:
    seq = instance.sequence
    if seq is None:
        raise ValueError("the instance's sequence was deleted")
    user = run_as()
    if as_root(user):
        raise ValueError(ROOT_REFUSED)
    package_dir = ensure_unpacked(seq)
    workdir = workdir_for(instance.id)
    limits = dict(instance.limits or {})
    limits.setdefault("nofile", 4096)
    if seq.language == "node":
        limits = node_limits(limits)
    spec: dict[str, Any] = {
        "instance_id": instance.id,
        "mode": mode,
        "package_dir": str(package_dir),
        "main": seq.main,
        "args": instance.args,
        "app_config": instance.app_config,
        "workdir": str(workdir),
        "env": child_env(instance.id, package_dir, workdir),
        "limits": limits,
        "package": seq.config,
        "language": seq.language,
        "run_as": user,
        "isolate_network": settings.HUB_SANDBOX_NETWORK == "isolated",
        "nice": settings.HUB_CHILD_NICE,
    }
    library = python_library()
    if seq.language == "python" and library is not None:
        spec["python_path"] = [str(library)]
    spec.update(extra or {})
    return spec


@functools.cache
def python_library() -> Path | None:
    """The folder of the library lent to Python sequences (runner/lent.py)."""
    return lent_library(library_root())


def node_limits(limits: dict[str, Any]) -> dict[str, Any]:
    """V8 reserves ~700 MB of address space before running any JavaScript, so an RLIMIT_AS
    memory cap kills Node at start: Node's memory limit is its heap size flag instead."""
    limits = dict(limits)
    memory = limits.pop("memory", None)
    if memory:
        limits["node_heap_mb"] = int(memory)
    return limits


def node_argv(node: str, limits: dict[str, Any]) -> list[str]:
    argv = [node]
    if limits.get("node_heap_mb"):
        argv.append(f"--max-old-space-size={limits['node_heap_mb']}")
    return [*argv, str(node_runtime())]


def exec_argv(spec: dict) -> list[str] | None:
    """Node packages exec the Node runtime; Python packages are forked from the zygote."""
    if spec.get("language") != "node":
        return None
    node = shutil.which("node")
    if node is None:
        raise FileNotFoundError("node was not found on PATH: install Node.js to run JS sequences")
    return node_argv(node, spec.get("limits", {}))


def service_ports() -> list[int]:
    """TCP ports of the hub's own services (Redis, broker, database) and
    HUB_SANDBOX_CLOSED_PORTS: children may not connect to them, on any address."""
    ports = {service.port for service in tcp_services()}
    return sorted(ports | set(settings.HUB_SANDBOX_CLOSED_PORTS))


def sandbox_config() -> dict[str, Any] | None:
    """What the fork server confines its children with (runner/landlock.py), or None."""
    if not settings.HUB_SANDBOX:
        return None
    hidden = [str(settings.BASE_DIR), sys.prefix, str(settings.HUB_DATA_DIR)]
    # The hub's own packages, wherever pip put them: in a container image they are in the
    # system interpreter's site-packages, inside the standard library folder children read.
    hidden += site_packages()
    if settings.HUB_STORAGE_DIR is not None:  # a package folder outside the data folder
        hidden.append(str(settings.HUB_STORAGE_DIR))
    files = [str(node_runtime())]
    library = python_library()
    if library is not None:
        files.append(str(library))  # read only; why a copy and not site-packages: runner/lent.py
    rules = isolation.sandbox_rules(isolation.runtime_python(), hidden, files)
    config: dict[str, Any] = {"rules": rules, "ports": [], "shared": None}
    if (run_as() or {}).get("lease"):
        # One layer for all children (user ids keep them apart): the instances' folders, the
        # unpacked packages, the cgroups they join, and the hub's service ports closed.
        shared = [(str(run_root()), landlock.fs_rights()), (str(cache_root()), landlock.READ)]
        for controller in ("cpu", "pids"):
            base = cgroups.base_for(controller)
            if base is not None:
                rights = landlock.READ_FILE | landlock.WRITE_FILE | landlock.TRUNCATE
                shared.append((str(base), rights))
        config.update(shared=shared, ports=service_ports())
    return config


def site_packages() -> list[str]:
    """The folders this interpreter imports installed packages from (Django, redis, the hub)."""
    paths = sysconfig.get_paths()
    found = [paths["purelib"], paths["platlib"], *site.getsitepackages()]
    with contextlib.suppress(AttributeError):
        found.append(site.getusersitepackages())
    return list(dict.fromkeys(found))


def sandbox_report(config: dict[str, Any] | None) -> dict[str, Any]:
    """What confines this worker's children, for its row (the overview warns from it)."""
    user = run_as()
    return {
        "summary": sandbox_summary(config),
        "landlock": landlock.abi() if config is not None else 0,
        "closed_ports": config["ports"] if config is not None and landlock.abi() >= 4 else [],
        "user": "worker" if user is None else "lease" if user.get("lease") else user["uid"],
        "network": settings.HUB_SANDBOX_NETWORK,
        "cgroups": [c for c in ("cpu", "pids") if cgroups.base_for(c) is not None],
    }


def sandbox_summary(config: dict[str, Any] | None) -> str:
    """One line for the worker's log: which layers of the sandbox this worker has."""
    parts = []
    abi = landlock.abi()
    if config is None:
        parts.append("Landlock OFF (HUB_SANDBOX=false)")
    elif not abi:
        parts.append("Landlock MISSING (kernel without it): children can read the hub's files")
    else:
        ports = ", ".join(map(str, config["ports"])) or "none"
        if not config["shared"]:
            net = "service ports NOT closed (children share a user id)"
        else:
            net = "closed ports " + ports if abi >= 4 else "ports NOT closed (Landlock < 4)"
        parts.append(
            f"Landlock ABI {abi} (files; {net}; signals {'scoped' if abi >= 6 else 'NOT scoped'})"
        )
    user = run_as()
    if as_root(user):
        parts.append("children would run as root: every start is REFUSED (HUB_RUN_AS)")
    elif user is None:
        parts.append("children run as the worker's user")
    elif user.get("lease"):
        parts.append("a user id per instance")
    else:
        parts.append(f"children run as uid {user['uid']}")
    limits = [c for c in ("cpu", "pids") if cgroups.base_for(c) is not None]
    parts.append(
        f"cgroups for {', '.join(limits)}" if limits else "no cgroups (limits.cpu, .pids refused)"
    )
    parts.append(f"network {settings.HUB_SANDBOX_NETWORK}")
    return "sandbox: " + "; ".join(parts)


def python_executable() -> str:
    return sys.executable
