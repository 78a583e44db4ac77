"""Start requests per second, sustained, for short instances.

`--clients` concurrent API clients start a sequence that prints one line and ends, for
`--seconds` (at most `--max-starts` starts); the rate counts only answered starts (200). Then
every started instance must end `completed`. Baseline, same run: bare `python -c` interpreters
started and waited for, as many in parallel as there are cores, for the same time.
Target: ≥ 200 starts/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
    wait_all_ended,
    write_result,
)

TARGET_PER_SECOND = 200
SHORT = """
def run(context, input):
    return "ok\\n"
"""


async def _drive(
    hub: Any, seq: str, clients: int, seconds: float, max_starts: int
) -> dict[str, Any]:
    ids: list[str] = []
    latencies: list[float] = []
    failures: list[str] = []
    deadline = time.perf_counter() + seconds

    async def client(api: Any) -> None:
        while time.perf_counter() < deadline and len(ids) + len(failures) < max_starts:
            t0 = time.perf_counter()
            response = await api.post(f"/sequence/{seq}/start", json={})
            if response.status_code == 200:
                ids.append(response.json()["id"])
                latencies.append(time.perf_counter() - t0)
            else:
                failures.append(f"{response.status_code} {response.text[:200]}")

    async with hub.async_client(connections=clients) as api:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(api) for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    return {"ids": ids, "latencies": latencies, "failures": failures, "elapsed": elapsed}


def bare_rate(seconds: float) -> float:
    """Bare interpreters started and reaped per second, one per core at a time."""
    procs: list[subprocess.Popen] = []
    done = 0
    argv = bare_python_argv("print('ok')")
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        while len(procs) < (os.cpu_count() or 1):
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL))
        procs.pop(0).wait()
        done += 1
    for proc in procs:
        proc.wait()
    return done / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-starts", type=int, default=5000)
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes serving the hub's queue"
    )
    args = parser.parse_args(argv)
    baseline = bare_rate(min(args.seconds, 5.0))
    with running_hub("start_rate", workers=args.workers) as hub:
        seq = hub.upload(SHORT)
        asyncio.run(_drive(hub, seq, 4, 1.0, 50))  # warm-up: package unpacked, connections open
        cpu_before = hub.cpu_seconds()
        client_before = time.process_time()
        run = asyncio.run(_drive(hub, seq, args.clients, args.seconds, args.max_starts))
        client_ms = (time.process_time() - client_before) * 1000
        time.sleep(0.2)  # the web's batched audit entries of the last starts
        # The web's share ends here: checking every instance's status below costs the web a
        # request each, which is not the starts' work (worker and instances go on until the
        # last instance has ended).
        web_after = hub.cpu_seconds()["web"]
        with hub.client() as api:
            statuses = wait_all_ended(api, run["ids"], timeout=120)
        cpu_after = {**hub.cpu_seconds(), "web": web_after}
    rate = len(run["ids"]) / run["elapsed"]
    starts = max(1, len(run["ids"]))
    cpu_ms = {k: (cpu_after[k] - cpu_before[k]) * 1000 / starts for k in cpu_before}
    # The clients run on the same two cores: their share is CPU the hub could not have.
    cpu_ms["bench_clients"] = client_ms / starts
    completed = sum(1 for s in statuses.values() if s == "completed")
    met = rate >= TARGET_PER_SECOND and completed == len(run["ids"]) and not run["failures"]
    result = {
        "target_per_s": TARGET_PER_SECOND,
        "clients": args.clients,
        "workers": args.workers,
        "seconds": run["elapsed"],
        "started": len(run["ids"]),
        "failures": len(run["failures"]),
        "failure_samples": run["failures"][:5],
        "completed": completed,
        "starts_per_s": rate,
        "start_latency_median_s": median(run["latencies"]),
        "start_latency_p99_s": percentile(run["latencies"], 99),
        "cpu_ms_per_start": cpu_ms,
        "baseline_bare_python_per_s": baseline,
        "ratio_to_baseline": rate / baseline,
        "met": met,
    }
    print_table(
        f"starts per second, {args.clients} clients for {args.seconds:.0f} s, "
        f"{args.workers} worker(s)",
        [
            (
                "hub starts/s",
                f"{rate:.1f} ({len(run['ids'])} starts, {len(run['failures'])} refused/failed)",
            ),
            ("ended completed", f"{completed}/{len(run['ids'])}"),
            (
                "start request median / p99",
                f"{ms(result['start_latency_median_s'])} / {ms(result['start_latency_p99_s'])}",
            ),
            (
                "CPU per start: web / worker / instance",
                f"{cpu_ms['web']:.1f} / {cpu_ms['worker']:.1f} / {cpu_ms['instances']:.1f} ms",
            ),
            ("CPU per start of the bench's own clients", f"{cpu_ms['bench_clients']:.1f} ms"),
            ("load average at the end", " ".join(f"{x:.1f}" for x in os.getloadavg())),
            ("bare `python -c` starts/s (one per core)", f"{baseline:.1f}"),
            ("ratio hub / bare", f"{result['ratio_to_baseline']:.2f}"),
            ("target", f"≥ {TARGET_PER_SECOND}/s: {'met' if met else 'NOT met'}"),
        ],
    )
    write_result("start_rate", result)
    return result


if __name__ == "__main__":
    main()
