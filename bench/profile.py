"""Where the time goes: py-spy samples the web and worker processes while a workload runs.

    python -m bench.profile start_rate     # many short starts
    python -m bench.profile start_latency  # one start at a time
    python -m bench.profile throughput     # 1M lines through /output

Writes collapsed stacks (flamegraph.pl / speedscope input) to bench/results/profile-<workload>-
<process>.txt and prints, per process, the functions holding the most samples (self and total).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import BIN, RESULTS, running_hub


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(BIN / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is needed: .venv/bin/pip install py-spy")
    return found


def record(pid: int, out: Path, idle: bool, subprocesses: bool = True) -> subprocess.Popen:
    """py-spy on `pid` (and its descendants with `subprocesses`: not with hundreds of
    instances running, whose sampling would take the cores being measured)."""
    argv = [
        _py_spy(),
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--rate",
        "250",
        *(["--subprocesses"] if subprocesses else []),
        # Without it py-spy stops the process for every sample: at 250 Hz on a loaded machine
        # that slowed the web it measured (a profiled 1 000-instance run lagged by seconds).
        "--nonblocking",
        "--threads",
        "-o",
        str(out),
    ]
    if idle:
        argv.append("--idle")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Leaves where a thread waits: py-spy cannot always tell a thread blocked in C from a busy one.
IDLE_LEAVES = (
    "_worker (concurrent/futures/thread.py:81)",
    "select (selectors.py",
    "Condition.wait",
    "DbWriter._run (runner/dbwriter.py",
    "_wait_for_tstate_lock",
    "SimpleQueue.get",
    "Queue.get",
    "poll (",
    "Event.wait",
)


def top(path: Path, limit: int = 25) -> list[str]:
    """Functions by self and total samples (busy ones only) from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        if any(idle in stack.rsplit(";", 1)[-1] for idle in IDLE_LEAVES):
            continue
        samples += count
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[-1] if " (" in f else f
            for f in stack.split(";")
        ]
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    lines = [f"{samples} busy samples"]
    lines += [f"  self {n * 100 / samples:5.1f}%  {f}" for f, n in own.most_common(limit)]
    lines += [f"  total {n * 100 / samples:5.1f}%  {f}" for f, n in total.most_common(limit * 2)]
    return lines


def workload(name: str, hub: Any) -> None:
    if name == "start_rate":
        from bench.start_rate import SHORT, _drive

        seq = hub.upload(SHORT)
        asyncio.run(_drive(hub, seq, 16, 8.0, 3000))
    elif name == "start_latency":
        from bench.start_latency import TRIVIAL

        seq = hub.upload(TRIVIAL)
        with hub.client() as api:
            for _ in range(60):
                iid = api.post(f"/sequence/{seq}/start", json={}).json()["id"]
                api.get(f"/instance/{iid}/output")
    elif name == "throughput":
        from bench.throughput import SEQUENCE

        seq = hub.upload(SEQUENCE)
        with hub.client(timeout=120) as api:
            for _ in range(3):
                iid = api.post(f"/sequence/{seq}/start", json={"args": [1_000_000]}).json()["id"]
                with api.stream("GET", f"/instance/{iid}/output") as out:
                    for _chunk in out.iter_raw():
                        pass
    else:
        raise SystemExit(f"unknown workload {name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("workload", choices=["start_rate", "start_latency", "throughput"])
    parser.add_argument("--idle", action="store_true", help="count waiting too (wall time)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with running_hub(f"profile-{args.workload}") as hub:
        outs = {which: RESULTS / f"profile-{args.workload}-{which}.txt" for which in hub.procs}
        spies = [record(hub.procs[w].pid, outs[w], args.idle) for w in hub.procs]
        time.sleep(1.0)
        try:
            workload(args.workload, hub)
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)
            for spy in spies:
                spy.wait(30)
    for which, path in outs.items():
        print(f"\n== {which} ({path.name})")
        if path.exists():
            print("\n".join(top(path)))


if __name__ == "__main__":
    main()
