"""The fork server (runner/forkserver.py): a real zygote forking real children."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from core.protocol import Exit, Message
from runner.forkserver import REPO_ROOT, ForkServer, SpawnError, make_child_fds
from tests.conftest import IN_CI
from tests.runner.harness import Child, Harness, make_spec, started_fork_server, write_package

pytestmark = pytest.mark.asyncio(loop_scope="module")

PYTHON = sys.executable
SLEEPER = "import asyncio\nasync def run(context, input):\n    await asyncio.sleep(3600)\n"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server() -> AsyncIterator[ForkServer]:
    async with started_fork_server() as fork_server:
        yield fork_server


@pytest_asyncio.fixture(loop_scope="module")
async def harness(server: ForkServer) -> AsyncIterator[Harness]:
    test_harness = Harness(server)
    yield test_harness
    test_harness.close()


async def run_exec(harness: Harness, tmp_path: Path, argv: list[str], **spec: Any) -> Child:
    """Execs argv with no input and waits for the end."""
    child = await harness.start_exec(argv, make_spec(tmp_path, **spec))
    await child.end_input()
    await child.end_stdin()
    await child.wait_exit()
    return child


async def test_exit_codes_are_reported_for_forked_and_execed_children(
    harness: Harness, tmp_path: Path
) -> None:
    package_dir = write_package(tmp_path, "def run(context, input):\n    return 'ok'\n")
    child = await harness.start(make_spec(package_dir))
    await child.end_input()
    assert await child.wait_exit() == 0
    execed = await run_exec(harness, tmp_path, ["sh", "-c", "exit 7"])
    assert execed.exit_code == 7


async def test_death_by_signal_is_reported_as_128_plus_the_signal(
    harness: Harness, tmp_path: Path
) -> None:
    child = await run_exec(harness, tmp_path, ["sh", "-c", "kill -TERM $$"])
    assert child.exit_code == 128 + signal.SIGTERM


async def test_exec_child_gets_the_seven_descriptors_the_spec_and_a_clean_env(
    harness: Harness, tmp_path: Path
) -> None:
    probe = textwrap.dedent(
        """
        import json, os, sys
        fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
        print(json.dumps({
            "fds": fds,
            "launch": json.loads(os.environ["HUB_LAUNCH"]),
            "env": sorted(os.environ),
            "cwd": os.getcwd(),
            "session": [os.getpid(), os.getsid(0), os.getpgid(0)],
        }))
        os.write(4, b"on output")
        os.write(6, b"on log")
        """
    )
    child = await run_exec(
        harness,
        tmp_path,
        [PYTHON, "-S", "-c", probe],
        env={"PATH": os.defpath, "LC_ALL": "C.UTF-8", "ONLY": "1"},
        workdir=tmp_path / "new/dir",
    )
    assert child.exit_code == 0, child.stderr
    seen = json.loads(child.stdout)
    # 0..6, plus the one /proc/self/fd itself was listed through.
    assert seen["fds"][:7] == list(range(7)) and len(seen["fds"]) == 8
    assert seen["launch"]["workdir"] == str(tmp_path / "new/dir") == seen["cwd"]
    assert seen["env"] == ["HUB_LAUNCH", "LC_ALL", "ONLY", "PATH"]
    pid, sid, pgid = seen["session"]
    assert pid == sid == pgid == child.pid
    assert child.output == b"on output" and child.log == b"on log"


async def test_limits_become_rlimits_with_data_not_address_space_for_exec(
    harness: Harness, tmp_path: Path
) -> None:
    probe = (
        "import resource as r; print(*(r.getrlimit(getattr(r, 'RLIMIT_' + name))[0]"
        " for name in ('AS', 'DATA', 'NOFILE')))"
    )
    child = await run_exec(
        harness, tmp_path, [PYTHON, "-S", "-c", probe], limits={"memory": 300, "nofile": 50}
    )
    address_space, data, nofile = (int(word) for word in child.stdout.split())
    assert (data, nofile) == (300 << 20, 50)
    assert address_space == resource.getrlimit(resource.RLIMIT_AS)[0]  # left alone


@pytest.mark.skipif(not shutil.which("node") and not IN_CI, reason="node is not installed")
async def test_node_starts_under_a_memory_limit(harness: Harness, tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node is not None
    child = await run_exec(
        harness, tmp_path, [node, "-e", "console.log('node ok')"], limits={"memory": 128}
    )
    assert (child.exit_code, child.stdout) == (0, b"node ok\n"), child.stderr


async def test_exec_of_a_missing_program_exits_127(harness: Harness, tmp_path: Path) -> None:
    child = await run_exec(harness, tmp_path, ["/no/such/program"])
    assert child.exit_code == Exit.EXEC_FAILED
    assert b"cannot exec /no/such/program" in child.stderr


async def test_a_workdir_that_cannot_be_made_exits_20(harness: Harness, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    child = await run_exec(harness, tmp_path, ["true"], workdir=tmp_path / "file/sub")
    assert child.exit_code == Exit.LAUNCH_FAILED
    assert b"NotADirectoryError" in child.stderr


async def test_concurrent_spawns_get_distinct_pids_and_every_exit(
    harness: Harness, tmp_path: Path
) -> None:
    package_dir = write_package(tmp_path, "def run(context, input, n):\n    return f'{n}'\n")
    children = await asyncio.gather(
        *(harness.start(make_spec(package_dir, args=[n])) for n in range(20))
    )
    assert len({child.pid for child in children}) == 20
    for child in children:
        await child.end_input()
    codes = [await child.wait_exit() for child in children]
    assert codes == [0] * 20
    assert [child.output for child in children] == [str(n).encode() for n in range(20)]


async def test_spawn_returns_quickly(server: ForkServer) -> None:
    spec = make_spec(Path("/nonexistent"), workdir=Path("/tmp"))
    timings = []
    for _ in range(10):
        child_fds, ends = make_child_fds()
        started = time.perf_counter()
        await server.spawn(spec, child_fds)
        timings.append(time.perf_counter() - started)
        for fd in child_fds:
            os.close(fd)
        ends.close()  # the child exits 21 on its own: its main is missing
    assert statistics.median(timings) < 0.2  # generous: a few ms on an idle machine


async def test_wrong_number_of_descriptors_is_refused(server: ForkServer) -> None:
    with pytest.raises(ValueError, match="7 descriptors"):
        await server.spawn({}, [0, 1, 2])


async def test_make_child_fds_gives_seven_child_ends_and_close_on_exec_parent_ends() -> None:
    child_fds, ends = make_child_fds()
    try:
        assert len(child_fds) == 7 and len(set(child_fds)) == 7
        parent_fds = [ends.stdin, ends.input, ends.control.fileno(), *ends.readers().values()]
        assert not any(os.get_inheritable(fd) for fd in parent_fds)
        os.write(child_fds[4], b"x")
        assert os.read(ends.output, 1) == b"x"
        os.write(ends.input, b"y")
        assert os.read(child_fds[5], 1) == b"y"
    finally:
        for fd in child_fds:
            os.close(fd)
        ends.close()


# ---------------------------------------------------------------------------------------------
# Death: the zygote's, its parent's
# ---------------------------------------------------------------------------------------------


async def test_zygote_death_kills_its_children_and_reports_them(tmp_path: Path) -> None:
    package_dir = write_package(tmp_path, SLEEPER)
    async with started_fork_server() as own:
        harness = Harness(own)
        child = await harness.start(make_spec(package_dir))
        await child.wait_message(Message.PING)
        assert own.pid is not None
        os.kill(own.pid, signal.SIGKILL)
        assert await child.wait_exit() == Exit.KILLED
        await child.wait_until(lambda: not _alive(child.pid), 5, "the child to die")
        with pytest.raises(SpawnError):
            await harness.start(make_spec(package_dir))
        harness.close()


async def test_close_kills_the_children(tmp_path: Path) -> None:
    package_dir = write_package(tmp_path, SLEEPER)
    own = ForkServer()
    await own.start()
    harness = Harness(own)
    child = await harness.start(make_spec(package_dir))
    await child.wait_message(Message.PING)
    await own.close()
    assert await child.wait_exit() == Exit.KILLED
    await child.wait_until(lambda: not _alive(child.pid), 5, "the child to die")
    harness.close()


async def test_zygote_and_children_die_with_the_zygotes_parent(tmp_path: Path) -> None:
    package_dir = write_package(tmp_path, SLEEPER)
    parent_code = textwrap.dedent(
        f"""
        import asyncio, json, sys
        from runner.forkserver import ForkServer, make_child_fds

        async def main():
            server = ForkServer()
            await server.start()
            child_fds, ends = make_child_fds()
            spec = {{"package_dir": {str(package_dir)!r}, "workdir": {str(tmp_path)!r}}}
            pid = await server.spawn(spec, child_fds)
            print(json.dumps([server.pid, pid]), flush=True)
            await asyncio.sleep(3600)

        asyncio.run(main())
        """
    )
    parent = subprocess.Popen(
        [PYTHON, "-c", parent_code], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        zygote, child = json.loads(parent.stdout.readline())
        assert _alive(zygote) and _alive(child)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while (_alive(zygote) or _alive(child)) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not _alive(zygote) and not _alive(child)


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
