"""Hub memory per idle running instance: supervisor side plus the child's unique memory.

Starts `--instances` idle sequences (they sleep), then measures:
- supervisor side: growth of the worker process's RSS from before the first start to after the
  last, divided by the count (Python objects, transports, buffers, Redis and database work);
- child unique: the mean USS (pages no other process shares) of the instance processes, which is
  what each one really adds on top of the zygote it was forked from.
Baseline, same run: the USS of bare `python -c` interpreters doing the same sleep (what a
non-forking runner would pay per instance, before any hub overhead). Target: ≤ 5 MiB.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from typing import Any

import psutil

from bench.common import (
    bare_python_argv,
    median,
    print_table,
    running_hub,
    start_instance,
    write_result,
)

TARGET_MIB = 5.0
MIB = 1 << 20
IDLE = """
import asyncio


async def run(context, input, seconds=300):
    await asyncio.sleep(seconds)
"""


def uss(pid: int) -> float:
    return psutil.Process(pid).memory_full_info().uss


def instance_pids(worker_pid: int, zygote_cmd: str = "runner.forkserver") -> list[int]:
    """The instance processes: the fork server's children."""
    pids = []
    for child in psutil.Process(worker_pid).children(recursive=False):
        if zygote_cmd in " ".join(child.cmdline()):
            pids.extend(p.pid for p in child.children(recursive=False))
    return pids


def settle(pid: int, seconds: float = 2.0) -> float:
    """RSS once it stops moving (the loop and writer threads have caught up)."""
    time.sleep(seconds)
    return psutil.Process(pid).memory_info().rss


def bare_uss(count: int) -> float:
    procs = [
        subprocess.Popen(bare_python_argv("import time; time.sleep(30)")) for _ in range(count)
    ]
    try:
        time.sleep(1.5)
        return median([uss(p.pid) for p in procs])
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=100)
    args = parser.parse_args(argv)
    baseline = bare_uss(10)
    with running_hub("memory") as hub:
        seq = hub.upload(IDLE)
        with hub.client() as api:
            # One first instance warms up what every later one shares (package cache, clients).
            warm = start_instance(api, seq, [300])
            before = settle(hub.worker_pid)
            ids = [start_instance(api, seq, [300]) for _ in range(args.instances)]
            after = settle(hub.worker_pid)
            pids = instance_pids(hub.worker_pid)
            child_uss = [uss(pid) for pid in pids]
            child_rss = [psutil.Process(pid).memory_info().rss for pid in pids]
            for iid in [warm, *ids]:
                api.post(f"/instance/{iid}/_kill", json={})
    supervisor = (after - before) / args.instances
    child = sum(child_uss) / len(child_uss)
    per_instance = supervisor + child
    result = {
        "target_mib": TARGET_MIB,
        "instances": args.instances,
        "children_found": len(pids),
        "supervisor_mib_per_instance": supervisor / MIB,
        "child_uss_mib_mean": child / MIB,
        "child_rss_mib_mean": sum(child_rss) / len(child_rss) / MIB,
        "per_instance_mib": per_instance / MIB,
        "baseline_bare_python_uss_mib": baseline / MIB,
        "ratio_to_baseline": per_instance / baseline,
        "met": per_instance / MIB <= TARGET_MIB,
    }
    print_table(
        f"memory per idle running instance ({args.instances} instances)",
        [
            (
                "supervisor side (worker RSS growth / n)",
                f"{result['supervisor_mib_per_instance']:.2f} MiB",
            ),
            ("child unique (USS, mean)", f"{result['child_uss_mib_mean']:.2f} MiB"),
            ("  child RSS incl. shared (mean)", f"{result['child_rss_mib_mean']:.2f} MiB"),
            ("per instance", f"{result['per_instance_mib']:.2f} MiB"),
            ("bare `python -c` USS (median)", f"{result['baseline_bare_python_uss_mib']:.2f} MiB"),
            ("ratio hub / bare", f"{result['ratio_to_baseline']:.2f}"),
            ("target", f"≤ {TARGET_MIB} MiB: {'met' if result['met'] else 'NOT met'}"),
        ],
    )
    write_result("memory", result)
    return result


if __name__ == "__main__":
    main()
