"""POST start → first output byte at a client reading /output, for a trivial Python sequence.

Baseline, same run: a bare `python -c` started as a subprocess, until its first stdout byte.
Target: median ≤ 30 ms (below a bare interpreter start: only a preloaded, forking runtime can).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from typing import Any

from bench.common import (
    bare_python_argv,
    median,
    ms,
    percentile,
    print_table,
    running_hub,
    write_result,
)

TARGET_SECONDS = 0.030
TRIVIAL = """
def run(context, input):
    return "hello\\n"
"""


def bare_python_start() -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(bare_python_argv("print('hello')"), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.read(1)
    elapsed = time.perf_counter() - t0
    proc.stdout.read()
    proc.wait()
    return elapsed


def hub_start(runs: int, warmup: int = 3) -> dict[str, Any]:
    """Hub samples, each right after a bare-interpreter sample: on a shared machine whose load
    moves by the minute, both see the same conditions and their ratio means something."""
    with running_hub("start_latency") as hub:
        seq = hub.upload(TRIVIAL)
        totals, posts, bare = [], [], []
        cpu_before = hub.cpu_seconds()
        with hub.client() as api:
            for i in range(warmup + runs):
                bare_s = bare_python_start()
                t0 = time.perf_counter()
                response = api.post(f"/sequence/{seq}/start", json={})
                t_post = time.perf_counter()
                response.raise_for_status()
                iid = response.json()["id"]
                with api.stream("GET", f"/instance/{iid}/output") as out:
                    chunks = out.iter_raw()
                    first = next(chunks)
                    t1 = time.perf_counter()
                    rest = first + b"".join(chunks)
                if rest != b"hello\n":
                    raise RuntimeError(f"unexpected output {rest!r}")
                if i >= warmup:
                    totals.append(t1 - t0)
                    posts.append(t_post - t0)
                    bare.append(bare_s)
        cpu_after = hub.cpu_seconds()
        cpu_ms = {k: (cpu_after[k] - cpu_before[k]) * 1000 / (warmup + runs) for k in cpu_after}
        return {"totals": totals, "posts": posts, "bare": bare, "cpu_ms": cpu_ms}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    hub = hub_start(args.runs)
    bare = hub["bare"]
    result = {
        "target_s": TARGET_SECONDS,
        "median_s": median(hub["totals"]),
        "p90_s": percentile(hub["totals"], 90),
        "post_start_median_s": median(hub["posts"]),
        "baseline_bare_python_median_s": median(bare),
        "runs": args.runs,
        "cpu_ms_per_start_and_read": hub["cpu_ms"],
        "samples_s": hub["totals"],
    }
    result["ratio_to_baseline"] = result["median_s"] / result["baseline_bare_python_median_s"]
    result["met"] = result["median_s"] <= TARGET_SECONDS
    print_table(
        "start → first output byte (trivial Python sequence)",
        [
            ("hub median", ms(result["median_s"])),
            ("hub p90", ms(result["p90_s"])),
            ("  of which POST start (median)", ms(result["post_start_median_s"])),
            (
                "bare `python -c` to first byte (median)",
                ms(result["baseline_bare_python_median_s"]),
            ),
            ("ratio hub / bare python", f"{result['ratio_to_baseline']:.2f}"),
            (
                "CPU per start + read: web / worker / instance",
                " / ".join(f"{hub['cpu_ms'][k]:.1f}" for k in ("web", "worker", "instances"))
                + " ms",
            ),
            ("target", f"≤ {ms(TARGET_SECONDS)}: {'met' if result['met'] else 'NOT met'}"),
        ],
    )
    write_result("start_latency", result)
    return result


if __name__ == "__main__":
    main()
