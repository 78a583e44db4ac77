"""Every benchmark, one after another, each in its own process (each boots its own hub), then
one summary table against the targets. `make bench` runs this; results land in bench/results/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.common import RESULTS, ROOT, print_table, write_result

# (module, how its result reads in the summary)
BENCHES: list[tuple[str, str]] = [
    ("start_latency", "start → first output byte (median)"),
    ("throughput", "1M lines through /output"),
    ("concurrency", "concurrent instances, line latency"),
    ("ws_latency", "line → WebSocket client (p99)"),
    ("start_rate", "starts per second"),
    ("memory", "memory per idle instance"),
    ("topic_throughput", "lines producer → topic → client, latency p99"),
]


def headline(name: str, r: dict) -> tuple[str, str]:
    """(result, target) in words for one benchmark's JSON."""
    if name == "start_latency":
        return (
            f"{r['median_s'] * 1000:.1f} ms "
            f"(bare python {r['baseline_bare_python_median_s'] * 1000:.1f} ms)",
            "≤ 30 ms",
        )
    if name == "throughput":
        return (
            f"{r['lines_per_s']:,.0f} lines/s (bare pipe {r['baseline_lines_per_s']:,.0f})",
            "≥ 1,000,000 lines/s",
        )
    if name == "concurrency":
        lat = r["latency"]
        return (
            f"{r['started']} started, {r['healthy']} healthy, p99 {lat['p99_s'] * 1000:.0f} ms, "
            f"max {lat['max_s'] * 1000:.0f} ms",
            "≥ 500, healthy, ≤ 100 ms",
        )
    if name == "ws_latency":
        return (f"p99 {r['p99_s'] * 1000:.1f} ms via {r['mode']}", "p99 ≤ 50 ms")
    if name == "start_rate":
        return (f"{r['starts_per_s']:.0f}/s, {r['completed']}/{r['started']} completed", "≥ 200/s")
    if name == "memory":
        return (
            f"{r['per_instance_mib']:.2f} MiB (bare python USS "
            f"{r['baseline_bare_python_uss_mib']:.2f} MiB)",
            "≤ 5 MiB",
        )
    if name == "topic_throughput":
        return (
            f"{r['lines_per_s']:,.0f} lines/s (raw Redis {r['baseline_lines_per_s']:,.0f}), "
            f"p99 {r['p99_s'] * 1000:.1f} ms (raw {r['baseline_p99_s'] * 1000:.1f} ms)",
            "≥ 1,000,000 lines/s, p99 < 50 ms",
        )
    return ("?", "?")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="run only these benchmarks")
    args = parser.parse_args(argv)
    chosen = [(n, t) for n, t in BENCHES if not args.only or n in args.only]
    summary: dict[str, dict] = {}
    rows = []
    for name, title in chosen:
        t0 = time.monotonic()
        # A process each: a benchmark sets up Django for its own scratch database.
        code = subprocess.call([sys.executable, "-m", f"bench.{name}"], cwd=ROOT)
        path = RESULTS / f"{name}.json"
        if code != 0 or not path.exists():
            rows.append((title, f"FAILED (exit {code})"))
            summary[name] = {"failed": True, "exit": code}
            continue
        result = json.loads(path.read_text())
        value, target = headline(name, result)
        met = "met" if result.get("met") else "NOT met"
        rows.append((title, f"{value} | target {target}: {met}"))
        summary[name] = {
            "met": bool(result.get("met")),
            "value": value,
            "target": target,
            "seconds": time.monotonic() - t0,
        }
    print_table("summary", rows)
    write_result("summary", {"benches": summary})
    # A target not met is a result, not an error: only a benchmark that crashed fails the run.
    return 1 if any(s.get("failed") for s in summary.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
