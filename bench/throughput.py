"""A Python sequence yielding 1 000 000 short lines (one per item), read through /output.

End to end: from POST start to the last byte at the client. Baseline, same run: the same
generator in a bare subprocess writing to a pipe this process reads (no hub at all).
Target: ≥ 1 000 000 lines/s end to end (median of the runs).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from typing import Any

from bench.common import bare_python_argv, median, print_table, running_hub, write_result

TARGET_LINES_PER_SECOND = 1_000_000
GENERATOR = """
def lines(n):
    for i in range(n):
        yield f"{i}\\n"
"""
SEQUENCE = (
    GENERATOR
    + """

def run(context, input, n=1000000):
    return lines(n)
"""
)
BARE = (
    GENERATOR
    + """
import sys
write = sys.stdout.write
for line in lines({n}):
    write(line)
"""
)


def count_lines(chunks: Any) -> tuple[int, int]:
    lines = size = 0
    for chunk in chunks:
        lines += chunk.count(b"\n")
        size += len(chunk)
    return lines, size


def bare_run(n: int) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(bare_python_argv(BARE.replace("{n}", str(n))), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    lines, _ = count_lines(iter(lambda: proc.stdout.read1(1 << 20), b""))  # type: ignore[union-attr]
    proc.wait()
    elapsed = time.perf_counter() - t0
    if lines != n:
        raise RuntimeError(f"bare run printed {lines} lines, not {n}")
    return elapsed


def hub_runs(n: int, runs: int) -> list[dict[str, float]]:
    samples = []
    with running_hub("throughput") as hub:
        seq = hub.upload(SEQUENCE)
        with hub.client(timeout=120) as api:
            for _ in range(runs):
                t0 = time.perf_counter()
                response = api.post(f"/sequence/{seq}/start", json={"args": [n]})
                response.raise_for_status()
                iid = response.json()["id"]
                with api.stream("GET", f"/instance/{iid}/output") as out:
                    chunks = out.iter_raw()
                    first = next(chunks)
                    t_first = time.perf_counter()
                    lines, size = count_lines(chunks)
                    lines += first.count(b"\n")
                t1 = time.perf_counter()
                if lines != n:
                    raise RuntimeError(f"read {lines} lines, not {n}")
                samples.append(
                    {
                        "total_s": t1 - t0,
                        "first_byte_s": t_first - t0,
                        "stream_s": t1 - t_first,
                        "bytes": size + len(first),
                    }
                )
    return samples


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    n = args.lines
    bare = [bare_run(n) for _ in range(args.runs)]
    samples = hub_runs(n, args.runs)
    total = median([s["total_s"] for s in samples])
    stream = median([s["stream_s"] for s in samples])
    result = {
        "target_lines_per_s": TARGET_LINES_PER_SECOND,
        "lines": n,
        "runs": args.runs,
        "median_total_s": total,
        "lines_per_s": n / total,
        "streaming_lines_per_s": n / stream,
        "median_first_byte_s": median([s["first_byte_s"] for s in samples]),
        "baseline_bare_pipe_s": median(bare),
        "baseline_lines_per_s": n / median(bare),
        "samples": samples,
    }
    result["ratio_to_baseline"] = result["lines_per_s"] / result["baseline_lines_per_s"]
    result["met"] = result["lines_per_s"] >= TARGET_LINES_PER_SECOND
    print_table(
        f"{n:,} lines through /output, end to end (POST start → last byte)",
        [
            ("hub lines/s (median run)", f"{result['lines_per_s']:,.0f}"),
            ("hub total time", f"{total:.3f} s"),
            ("  first byte after", f"{result['median_first_byte_s'] * 1000:.1f} ms"),
            ("  lines/s from first byte", f"{result['streaming_lines_per_s']:,.0f}"),
            ("bare subprocess → pipe lines/s", f"{result['baseline_lines_per_s']:,.0f}"),
            ("ratio hub / bare", f"{result['ratio_to_baseline']:.2f}"),
            ("target", f"≥ {TARGET_LINES_PER_SECOND:,}/s: {'met' if result['met'] else 'NOT met'}"),
        ],
    )
    write_result("throughput", result)
    return result


if __name__ == "__main__":
    main()
