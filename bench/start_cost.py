"""What a start costs as more instances run: CPU per start of the web and the worker, and the
start latency, with 0, 500, 1 000 and 2 000 idle instances running on one worker.

At each level the bench first starts idle instances (they sleep) until that many run, lets the
hub settle, measures what the web and the worker burn doing nothing for a few seconds (their
background: heartbeats, room, health sampling), then makes `--starts` starts of a sequence
that returns at once, by 8 clients, and waits until every one ended. CPU per start is the
process CPU used over the measured starts less that background for the same time, divided by
the starts. The baseline is the same measure at level 0, in the same run: a flat cost reads
1.0x at every level. Target (issue 16, item 10): flat, and half the CPU per start of
session 5's figures (web 7.4 ms, worker 7.7 ms) at 0.

    python -m bench.start_cost [--levels 0,500,1000,2000] [--starts 200] [--profile]

`BENCH_DATABASE_URL` (a PostgreSQL database of its own) runs the hub on it instead of SQLite.

`--profile`: py-spy samples web and worker during the measured starts at the highest level
(collapsed stacks in bench/results/start_cost-<process>.txt, top functions printed).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from typing import Any

from bench.common import (
    RESULTS,
    median,
    ms,
    percentile,
    print_table,
    running_hub,
    wait_all_ended,
    write_result,
)

IDLE = """
import asyncio
async def run(context, input):
    while True:
        await asyncio.sleep(3600)
"""
SHORT = """
def run(context, input):
    return "ok\\n"
"""
SESSION5_MS = {"web": 7.4, "worker": 7.7}


async def _start_many(hub: Any, seq: str, count: int, clients: int) -> dict[str, Any]:
    ids: list[str] = []
    latencies: list[float] = []
    failures: list[str] = []
    todo = iter(range(count))

    async def client(api: Any) -> None:
        for _ in todo:
            t0 = time.perf_counter()
            response = await api.post(f"/sequence/{seq}/start", json={})
            if response.status_code == 200:
                ids.append(response.json()["id"])
                latencies.append(time.perf_counter() - t0)
            else:
                failures.append(f"{response.status_code} {response.text[:200]}")

    async with hub.async_client(timeout=120, connections=clients) as api:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(api) for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    return {"ids": ids, "latencies": latencies, "failures": failures, "elapsed": elapsed}


def _cpu(hub: Any) -> dict[str, float]:
    both = hub.cpu_seconds()
    return {"web": both["web"], "worker": both["worker"]}


def _measure(hub: Any, short: str, starts: int, idle_s: float) -> dict[str, Any]:
    before = _cpu(hub)
    time.sleep(idle_s)
    after = _cpu(hub)
    background = {k: (after[k] - before[k]) / idle_s for k in before}
    before = _cpu(hub)
    t0 = time.perf_counter()
    run = asyncio.run(_start_many(hub, short, starts, 8))
    # The web's share ends with the answers: polling every instance's status below costs the
    # web a request each, which is not the starts' work (the worker's ends with the last end).
    web_after, web_elapsed = _cpu(hub)["web"], time.perf_counter() - t0
    with hub.client() as api:
        statuses = wait_all_ended(api, run["ids"], timeout=300)
    elapsed = time.perf_counter() - t0
    after = _cpu(hub)
    done = max(1, len(run["ids"]))
    per_start = {
        "web": max(0.0, web_after - before["web"] - background["web"] * web_elapsed),
        "worker": max(0.0, after["worker"] - before["worker"] - background["worker"] * elapsed),
    }
    per_start = {k: v * 1000 / done for k, v in per_start.items()}
    return {
        "started": len(run["ids"]),
        "failures": run["failures"][:5],
        "completed": sum(1 for s in statuses.values() if s == "completed"),
        "starts_per_s": len(run["ids"]) / run["elapsed"],
        "latency_p50_s": median(run["latencies"]),
        "latency_p99_s": percentile(run["latencies"], 99),
        "background_cpu_ms_per_s": {k: v * 1000 for k, v in background.items()},
        "cpu_ms_per_start": per_start,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--levels", default="0,500,1000,2000")
    parser.add_argument("--starts", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    levels = sorted(int(x) for x in args.levels.split(","))
    top_level = levels[-1]
    room = str(top_level + args.starts + 100)
    results: dict[int, dict[str, Any]] = {}
    with running_hub(
        "start_cost",
        HUB_MAX_INSTANCES=room,
        HUB_WORKER_CAPACITY=room,
        HUB_START_TIMEOUT="120",
    ) as hub:
        idle = hub.upload(IDLE)
        short = hub.upload(SHORT)
        asyncio.run(_start_many(hub, short, 20, 4))  # warm-up: unpacked, connections open
        running: list[str] = []
        for level in levels:
            grow = asyncio.run(_start_many(hub, idle, level - len(running), 16))
            running += grow["ids"]
            if grow["failures"]:
                print("idle starts refused:", grow["failures"][:3])
            time.sleep(3)  # the batched writer and the room settle
            spies: list[Any] = []
            if args.profile and level == top_level:
                from bench.profile import record

                RESULTS.mkdir(parents=True, exist_ok=True)
                spies = [
                    record(hub.procs[w].pid, RESULTS / f"start_cost-{w}.txt", False)
                    for w in ("web", "worker")
                ]
                time.sleep(1)
            results[level] = {
                "running": len(running),
                **_measure(hub, short, args.starts, args.idle_seconds),
            }
            for spy in spies:
                spy.send_signal(signal.SIGINT)
            for spy in spies:
                spy.wait(30)
            print(f"level {level}: {results[level]['cpu_ms_per_start']}", flush=True)
        with hub.client() as api:
            for iid in running:
                api.post(f"/instance/{iid}/_kill", json={})
    base = results[levels[0]]["cpu_ms_per_start"]
    rows = []
    for r in results.values():
        cpu = r["cpu_ms_per_start"]
        ratio = {k: cpu[k] / base[k] if base[k] else float("nan") for k in cpu}
        rows.append(
            (
                f"{r['running']} running",
                f"web {cpu['web']:.1f} ms ({ratio['web']:.2f}x) · worker {cpu['worker']:.1f} ms "
                f"({ratio['worker']:.2f}x) · {r['starts_per_s']:.0f}/s · p50/p99 "
                f"{ms(r['latency_p50_s'])}/{ms(r['latency_p99_s'])} · background "
                f"{r['background_cpu_ms_per_s']['worker']:.0f} ms/s worker · "
                f"{r['completed']}/{r['started']} completed",
            )
        )
    print_table(f"CPU per start as instances run ({args.starts} starts per level)", rows)
    flat = all(results[lv]["cpu_ms_per_start"][k] <= 1.5 * base[k] for lv in results for k in base)
    result = {
        "levels": {str(k): v for k, v in results.items()},
        "session5_ms_per_start": SESSION5_MS,
        "flat_within_1_5x": flat,
        "halved_at_0": all(base[k] <= SESSION5_MS[k] / 2 for k in base),
    }
    if args.profile:
        from bench.profile import top

        for which in ("web", "worker"):
            path = RESULTS / f"start_cost-{which}.txt"
            if path.exists():
                print(f"\n== {which}")
                print("\n".join(top(path, 15)))
    write_result("start_cost", result)
    return result


if __name__ == "__main__":
    main()
