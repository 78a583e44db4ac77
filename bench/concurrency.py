"""Many running instances on one worker node, each printing a line a second.

Starts N instances (default 500), follows every one's /stdout at once, and checks that each
is running and healthy (/health) and that each printed line reaches its reader within 0.1 s
(the line carries the time it was printed). Baseline, same run: N bare `python -c`
subprocesses printing the same lines into pipes that this process reads itself (no hub).
Target: ≥ 500 instances, all healthy, every line live within 0.1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import psutil

from bench.common import (
    astart_instance,
    median,
    ms,
    percentile,
    print_table,
    running_hub,
    write_result,
)

TARGET_INSTANCES = 500
TARGET_LATENCY_S = 0.1
MAX_LINES = 600  # an instance the bench forgets still ends by itself
TICKER = """
import asyncio
import time


async def run(context, input, lines=600, period=1.0):
    for i in range(lines):
        print(f"tick {i} {time.time():.6f}")
        await asyncio.sleep(period)
"""
BARE = """
import time
for i in range({lines}):
    print(f"tick {i} {time.time():.6f}", flush=True)
    time.sleep({period})
"""


def line_times(data: bytes, now: float, since: float) -> list[tuple[float, float]]:
    """(printed, latency) of each line printed after `since` (earlier ones are replayed, not
    live)."""
    out = []
    for line in data.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == b"tick":
            printed = float(parts[2])
            if printed >= since:
                out.append((printed, now - printed))
    return out


def line_latencies(data: bytes, now: float, since: float) -> list[float]:
    return [latency for _, latency in line_times(data, now, since)]


async def follow(hub: Any, iid: str, sink: list[float], window: dict) -> None:
    """Reads one instance's stdout over a raw HTTP/1.1 connection (httpx's pool goes quadratic
    with hundreds of open streams); counts the lines printed once the window opened."""
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    try:
        writer.write(
            f"GET /api/v1/instance/{iid}/stdout HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {hub.token}\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        chunked = b"chunked" in head.lower()
        tail = b""
        while True:
            if chunked:
                size = int((await reader.readuntil(b"\r\n")).strip() or b"0", 16)
                if size == 0:
                    return
                chunk = (await reader.readexactly(size + 2))[:-2]
            else:
                chunk = await reader.read(65536)
                if not chunk:
                    return
            now = time.time()
            data = tail + chunk
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            times = line_times(data[:cut], now, window["since"])
            sink.extend(latency for _, latency in times)
            if "timeline" in window:
                window["timeline"].extend(times)
    finally:
        writer.close()


async def redis_probe(keys: list[str], sink: list[float], window: dict) -> None:
    """Reads a few instances' live streams straight from Redis: the line's time to Redis (the
    worker's share), to set against its time to the HTTP reader (the web's share on top)."""
    import redis.asyncio as aredis

    from bench.common import REDIS_URL

    client = aredis.Redis.from_url(REDIS_URL)
    last = dict.fromkeys(keys, "$")
    try:
        while True:
            reply = await client.xread(last, block=5000)
            now = time.time()
            for key, entries in reply or []:
                for entry_id, fields in entries:
                    last[key.decode()] = entry_id
                    if b"d" in fields:
                        sink.extend(line_latencies(fields[b"d"], now, window["since"]))
    finally:
        await client.aclose()


async def _bounded(sem: asyncio.Semaphore, coro: Any) -> Any:
    async with sem:
        return await coro


def hub_run(
    n: int, window: float, concurrency: int, profile: bool = False, settle: float = 5.0
) -> dict[str, Any]:
    # The hub is booted outside the event loop: its setup uses the ORM, which refuses async code.
    # The hub's limits let N run (their defaults stop at 1 000).
    room = str(n + 50)
    with running_hub("concurrency", HUB_MAX_INSTANCES=room, HUB_WORKER_CAPACITY=room) as hub:
        seq = hub.upload(TICKER)
        return asyncio.run(_hub_run(hub, seq, n, window, concurrency, profile, settle))


async def _hub_run(
    hub: Any,
    seq: str,
    n: int,
    window: float,
    concurrency: int,
    profile: bool = False,
    settle: float = 5.0,
) -> dict[str, Any]:
    latencies: list[float] = []
    ids: list[str] = []
    readers: list[asyncio.Future] = []
    clock = {"since": float("inf")}
    async with hub.async_client(timeout=120, connections=concurrency) as api:
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                iid = await astart_instance(api, seq, [MAX_LINES, 1.0])
            ids.append(iid)
            readers.append(asyncio.ensure_future(follow(hub, iid, latencies, clock)))

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
        start_s = time.perf_counter() - t0
        errors = [repr(r) for r in results if isinstance(r, BaseException)]
        from sequences import live

        to_redis: list[float] = []
        probe = asyncio.ensure_future(
            redis_probe([live.stream_key(i, "stdout") for i in ids[:50]], to_redis, clock)
        )
        # Steady state: only lines printed after every start, and after `settle` more
        # seconds, count (all N are running, and the web is done with the burst of starts).
        await asyncio.sleep(settle)
        spies = _profile_start(hub) if profile else []
        # The CPU snapshots walk every process (with 2 000 children, ~0.5 s in which this
        # loop reads nothing): taken outside the window, or the lines printed meanwhile count
        # as late (until session 10 they did: bench/README.md).
        cpu_before = {**hub.cpu_seconds(), **_bench_and_machine()}
        cpu_t0 = time.monotonic()
        pauses = _CollectorPauses()
        clock["since"] = time.time()
        clock["timeline"] = []
        await asyncio.sleep(window)
        window_latencies = list(latencies)
        timeline = clock.pop("timeline")
        window_to_redis = list(to_redis)
        window_s = time.time() - clock["since"]
        clock_since = clock["since"]
        pauses.stop()
        cpu_after = {**hub.cpu_seconds(), **_bench_and_machine()}
        cpu_s = time.monotonic() - cpu_t0
        _profile_stop(spies)
        probe.cancel()
        usage = _worker_usage(hub.worker_pid)
        # What N running instances cost while they print: CPU per second of each process.
        usage["cpu_ms_per_s"] = {
            k: (cpu_after[k] - cpu_before[k]) * 1000 / cpu_s for k in cpu_before
        }
        # Then every instance's health, while they keep printing: the burst of N requests
        # through the web shows in the latency of the lines printed meanwhile (reported apart).
        latencies.clear()
        clock["since"] = time.time()
        t_health = time.perf_counter()
        health = await asyncio.gather(
            *(_bounded(sem, api.get(f"/instance/{iid}/health")) for iid in ids),
            return_exceptions=True,
        )
        health_s = time.perf_counter() - t_health
        healthy = sum(
            1
            for h in health
            if isinstance(h, httpx.Response) and h.status_code == 200 and h.json().get("healthy")
        )
        await asyncio.sleep(2)
        health_latencies = list(latencies)
        kills = await asyncio.gather(
            *(_bounded(sem, api.post(f"/instance/{iid}/_kill", json={})) for iid in ids),
            return_exceptions=True,
        )
        killed = sum(1 for k in kills if isinstance(k, httpx.Response) and k.status_code == 202)
        done, pending = await asyncio.wait(readers, timeout=60)
        for task in pending:
            task.cancel()
        reader_errors = [repr(t.exception()) for t in done if t.exception()]
    return {
        "started": len(ids),
        "start_errors": errors[:5],
        "start_seconds": start_s,
        "healthy": healthy,
        "killed": killed,
        "readers_ended": len(done),
        "reader_errors": reader_errors[:5],
        "window_s": window_s,
        "lines_in_window": len(window_latencies),
        # Lines printed in the window but still in flight at its end are not counted.
        "lines_expected_in_window": int(len(ids) * (window_s - 1)),
        "latency": _summary(window_latencies),
        "settle_s": settle,
        "p99_by_second": _by_second(timeline, clock_since),
        "latency_to_redis": _summary(window_to_redis),
        "bench_collections": pauses.summary(),
        "health_seconds": health_s,
        "latency_during_health_checks": _summary(health_latencies),
        "worker": usage,
    }


def _profile_start(hub: Any) -> list[Any]:
    """py-spy on web and worker for the steady window (bench/results/concurrency-<which>.txt)."""
    from bench.common import RESULTS
    from bench.profile import record

    RESULTS.mkdir(parents=True, exist_ok=True)
    return [
        record(hub.procs[w].pid, RESULTS / f"concurrency-{w}.txt", False, False)
        for w in ("web", "worker")
    ]


def _profile_stop(spies: list[Any]) -> None:
    import signal

    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        spy.wait(30)


class _CollectorPauses:
    """This process's own garbage collections while it measures: a reader held up by one adds
    its pause to the latency of every line it has not read yet."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._started = 0.0
        gc.callbacks.append(self._on_collection)

    def _on_collection(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._started)

    def stop(self) -> None:
        gc.callbacks.remove(self._on_collection)

    def summary(self) -> dict[str, float]:
        return {"count": len(self.pauses), "longest_s": max(self.pauses, default=0.0)}


def _bench_and_machine() -> dict[str, float]:
    """CPU seconds of Redis and PostgreSQL (every process of theirs on this machine), this
    process (the readers: part of every line's measured time) and the whole machine (every
    core, busy), to read the hub's share against the rest."""
    import redis

    from bench.common import REDIS_URL

    client = redis.Redis.from_url(REDIS_URL)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    postgres = 0.0
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] and proc.info["name"].startswith("postgres"):
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                postgres += times.user + times.system
    own = psutil.Process().cpu_times()
    m = psutil.cpu_times()
    busy = m.user + m.nice + m.system + sum(getattr(m, f, 0.0) for f in ("irq", "softirq", "steal"))
    return {
        "redis": info["used_cpu_user"] + info["used_cpu_sys"],
        "postgres": postgres,
        "bench": own.user + own.system,
        "machine": busy,
    }


def _worker_usage(pid: int) -> dict[str, Any]:
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        children = proc.children(recursive=True)
        return {
            "worker_rss_mib": proc.memory_info().rss / 2**20,
            "worker_threads": proc.num_threads(),
            "worker_fds": proc.num_fds(),
            "descendants": len(children),
        }
    return {}


def _by_second(timeline: list[tuple[float, float]], since: float) -> list[float]:
    """The p99 latency of the lines printed in each second of the window: a tail at its start
    is the burst of starts before it, one all along is the steady state."""
    seconds: dict[int, list[float]] = {}
    for printed, latency in timeline:
        seconds.setdefault(int(printed - since), []).append(latency)
    return [percentile(seconds[s], 99) for s in sorted(seconds)]


def _summary(latencies: list[float]) -> dict[str, float]:
    return {
        "count": len(latencies),
        "p50_s": median(latencies),
        "p99_s": percentile(latencies, 99),
        "max_s": max(latencies) if latencies else float("nan"),
        "within_target": sum(1 for x in latencies if x <= TARGET_LATENCY_S)
        / max(1, len(latencies)),
    }


async def bare_run(n: int, window: float) -> dict[str, Any]:
    """N bare interpreters printing into pipes, read by this loop: the floor without a hub."""
    code = BARE.replace("{lines}", str(int(window) + 30)).replace("{period}", "1.0")
    latencies: list[float] = []
    procs = []

    async def read(proc: asyncio.subprocess.Process, since: float) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            latencies.extend(line_latencies(line, time.time(), since))

    for _ in range(n):
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", code, stdout=subprocess.PIPE, env={**os.environ}
            )
        )
    readers = [asyncio.ensure_future(read(p, time.time())) for p in procs]
    await asyncio.sleep(window)
    result = {"latency": _summary(list(latencies)), "lines_in_window": len(latencies)}
    for proc in procs:
        proc.kill()
    await asyncio.gather(*readers, return_exceptions=True)
    await asyncio.gather(*(p.wait() for p in procs))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=TARGET_INSTANCES)
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured")
    parser.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="seconds between the last start and the window (0: the window opens at once)",
    )
    parser.add_argument("--start-concurrency", type=int, default=16)
    parser.add_argument(
        "--profile", action="store_true", help="py-spy on web and worker in the steady window"
    )
    parser.add_argument(
        "--baseline-instances",
        type=int,
        default=100,
        help="bare interpreters for the baseline (they are not forked)",
    )
    args = parser.parse_args(argv)
    bare = asyncio.run(bare_run(args.baseline_instances, args.window))
    hub = hub_run(args.instances, args.window, args.start_concurrency, args.profile, args.settle)
    lat, worker = hub["latency"], hub["worker"]
    met = (
        hub["started"] >= TARGET_INSTANCES
        and hub["healthy"] == hub["started"]
        and hub["lines_in_window"] >= hub["lines_expected_in_window"] * 0.95
        and lat["max_s"] <= TARGET_LATENCY_S
    )
    # Issue 16's target at 2 000: all healthy and the line's p99 (not its max) within 0.1 s.
    p99_met = (
        hub["healthy"] == hub["started"] == args.instances
        and hub["lines_in_window"] >= hub["lines_expected_in_window"] * 0.95
        and lat["p99_s"] <= TARGET_LATENCY_S
    )
    result = {
        "target_instances": TARGET_INSTANCES,
        "target_latency_s": TARGET_LATENCY_S,
        **hub,
        "baseline": bare,
        "met": met,
        "p99_met": p99_met,
    }
    print_table(
        f"{args.instances} instances printing a line a second, {args.window:.0f} s measured",
        [
            ("started", f"{hub['started']} in {hub['start_seconds']:.1f} s"),
            (
                "healthy",
                f"{hub['healthy']}/{hub['started']} (checked in {hub['health_seconds']:.1f} s)",
            ),
            ("killed at the end", f"{hub['killed']}, readers ended {hub['readers_ended']}"),
            (
                f"lines in the {hub['window_s']:.0f} s window",
                f"{hub['lines_in_window']} (≥ ~{hub['lines_expected_in_window']})",
            ),
            (
                "line latency p50 / p99 / max",
                f"{ms(lat['p50_s'])} / {ms(lat['p99_s'])} / {ms(lat['max_s'])}",
            ),
            ("lines within 0.1 s", f"{lat['within_target'] * 100:.2f} %"),
            (
                f"p99 by second printed (window opened {hub['settle_s']:g} s after the starts)",
                " ".join(f"{v * 1000:.0f}" for v in hub["p99_by_second"]) + " ms",
            ),
            (
                "  printed → Redis (50 of them) p50 / p99",
                f"{ms(hub['latency_to_redis']['p50_s'])} / {ms(hub['latency_to_redis']['p99_s'])}",
            ),
            (
                "  while the N health checks ran: p50 / p99",
                f"{ms(hub['latency_during_health_checks']['p50_s'])} / "
                f"{ms(hub['latency_during_health_checks']['p99_s'])}",
            ),
            (
                "worker RSS / fds / threads",
                f"{worker.get('worker_rss_mib', 0):.0f} MiB / {worker.get('worker_fds')}"
                f" / {worker.get('worker_threads')}",
            ),
            (
                "the bench's own collections in the window: count / longest",
                f"{hub['bench_collections']['count']} / "
                f"{ms(hub['bench_collections']['longest_s'])}",
            ),
            (
                "CPU, ms/s: web / worker / instances / redis / postgres / bench / machine",
                " / ".join(f"{v:.0f}" for v in worker.get("cpu_ms_per_s", {}).values()),
            ),
            (
                f"baseline: {args.baseline_instances} bare pipes p50 / p99",
                f"{ms(bare['latency']['p50_s'])} / {ms(bare['latency']['p99_s'])}",
            ),
            (
                "target",
                f"≥ {TARGET_INSTANCES}, all healthy, ≤ 0.1 s: {'met' if met else 'NOT met'}",
            ),
            (
                "target: all healthy, p99 ≤ 0.1 s",
                "met" if p99_met else "NOT met",
            ),
        ],
    )
    write_result("concurrency", result)
    if args.profile:
        from bench.common import RESULTS
        from bench.profile import top

        for which in ("web", "worker"):
            path = RESULTS / f"concurrency-{which}.txt"
            if path.exists():
                print(f"\n== {which}")
                print("\n".join(top(path, 20)))
    return result


if __name__ == "__main__":
    main()
