"""Topics: a Python sequence publishing short lines (one per item) to a topic, read by a client
following `GET /topic/:name`; and end-to-end latency, a line's timestamp → the client has it.

Throughput: the producer yields `f"{i}\\n"` n times (`outputTopic` in the start body); the
consumer follows the topic from its start and counts lines; from POST start to the last line.
Latency: the producer yields its clock every few ms; the client takes its own clock at each
chunk; p99 over the lines.
Baseline, same run: a bare subprocess XADDs the same lines to a raw Redis stream (cut into
64 KiB chunks for throughput, one entry per line for latency) and this process XREADs them.
Targets: ≥ 1 000 000 lines/s and p99 < 50 ms on one node.
"""

from __future__ import annotations

import argparse
import subprocess
import time
import uuid
from typing import Any

import httpx

from bench.common import (
    REDIS_URL,
    Hub,
    bare_python_argv,
    median,
    percentile,
    print_table,
    running_hub,
    write_result,
)

TARGET_LINES_PER_SECOND = 1_000_000
TARGET_P99_S = 0.050

PRODUCER = """
def lines(n):
    for i in range(n):
        yield f"{i}\\n"


async def run(context, input, n=1000000, pace=0.0, count=0):
    if pace:  # latency: each line is the producer's clock when it was made
        import asyncio
        import time

        for _ in range(count):
            yield f"{time.time()!r}\\n"
            await asyncio.sleep(pace)
        return
    for line in lines(n):
        yield line
"""

# The baseline producer: the same lines, XADDed to a raw Redis stream.
BARE = """
import sys, time, redis
client = redis.Redis.from_url({url!r})
key, n, pace, count = {key!r}, {n}, {pace}, {count}
if pace:
    for _ in range(count):
        client.xadd(key, {{"d": f"{{time.time()!r}}\\n"}})
        time.sleep(pace)
else:
    pipe = client.pipeline(transaction=False)
    buf, size, queued = [], 0, 0
    for i in range(n):
        line = f"{{i}}\\n"
        buf.append(line)
        size += len(line)
        if size >= 65536:
            pipe.xadd(key, {{"d": "".join(buf)}})
            buf, size, queued = [], 0, queued + 1
            if queued >= 16:
                pipe.execute()
                queued = 0
    if buf:
        pipe.xadd(key, {{"d": "".join(buf)}})
    pipe.execute()
"""


def follow_topic(api: httpx.Client, name: str, n: int, stamps: bool) -> tuple[float, list[float]]:
    """Read the topic until n lines came: (time of the last, latencies if lines are stamps)."""
    lines, latencies, rest = 0, [], b""
    with api.stream("GET", f"/topic/{name}", params={"from": "start"}) as body:
        for chunk in body.iter_raw():
            now = time.time()
            if stamps:
                data = rest + chunk
                *whole, rest = data.split(b"\n")
                latencies.extend(now - float(w) for w in whole if w)
                lines += len(whole)
            else:
                lines += chunk.count(b"\n")
            if lines >= n:
                return time.perf_counter(), latencies
    raise RuntimeError(f"the topic ended after {lines} of {n} lines")


def hub_run(hub: Hub, api: httpx.Client, seq: str, n: int, pace: float = 0.0) -> dict[str, Any]:
    import threading

    name = f"bench-{uuid.uuid4().hex[:8]}"
    api.post("/topics", json={"id": name, "content-type": "text/plain"}).raise_for_status()
    result: dict[str, Any] = {}

    def consume() -> None:
        try:
            with hub.client(timeout=300) as own:  # a client per thread
                result["end"], result["latencies"] = follow_topic(own, name, n, bool(pace))
        except Exception as exc:  # reported below
            result["error"] = exc

    reader = threading.Thread(target=consume)
    reader.start()
    time.sleep(0.3)  # the reader is following before the producer starts
    t0 = time.perf_counter()
    args = [n, pace, n] if pace else [n]
    api.post(f"/sequence/{seq}/start", json={"args": args, "outputTopic": name})
    reader.join(timeout=300)
    api.delete(f"/topics/{name}")
    if "error" in result or "end" not in result:
        raise RuntimeError(f"reading topic {name} failed: {result.get('error')}")
    return {"total_s": result["end"] - t0, "latencies": result["latencies"]}


def bare_run(n: int, pace: float = 0.0) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    key = f"bench-topic-baseline-{uuid.uuid4().hex[:8]}"
    code = BARE.format(url=REDIS_URL, key=key, n=n, pace=pace, count=n)
    t0 = time.perf_counter()
    proc = subprocess.Popen(bare_python_argv(code))
    last, lines, latencies = "0-0", 0, []
    try:
        while lines < n:
            reply = client.xread({key: last}, count=200, block=5000)
            if not reply:
                if proc.poll() is not None and proc.returncode != 0:
                    raise RuntimeError("the baseline producer failed")
                continue
            now = time.time()
            for entry_id, fields in reply[0][1]:
                last = entry_id
                data = fields[b"d"]
                if pace:
                    latencies.append(now - float(data))
                lines += data.count(b"\n")
        end = time.perf_counter()
    finally:
        proc.wait()
        client.delete(key)
    return {"total_s": end - t0, "latencies": latencies}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-lines", type=int, default=500)
    parser.add_argument("--pace-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    n, pace = args.lines, args.pace_ms / 1000
    bare = [bare_run(n) for _ in range(args.runs)]
    bare_lat = bare_run(args.latency_lines, pace)["latencies"]
    with running_hub("topic_throughput") as hub:
        seq = hub.upload(PRODUCER)
        with hub.client(timeout=300) as api:
            runs = [hub_run(hub, api, seq, n) for _ in range(args.runs)]
            hub_lat = hub_run(hub, api, seq, args.latency_lines, pace)["latencies"]
    total = median([r["total_s"] for r in runs])
    bare_total = median([r["total_s"] for r in bare])
    result: dict[str, Any] = {
        "target_lines_per_s": TARGET_LINES_PER_SECOND,
        "target_p99_s": TARGET_P99_S,
        "lines": n,
        "runs": args.runs,
        "median_total_s": total,
        "lines_per_s": n / total,
        "baseline_lines_per_s": n / bare_total,
        "latency_lines": args.latency_lines,
        "pace_s": pace,
        "p50_s": percentile(hub_lat, 50),
        "p99_s": percentile(hub_lat, 99),
        "max_s": max(hub_lat) if hub_lat else float("nan"),
        "baseline_p50_s": percentile(bare_lat, 50),
        "baseline_p99_s": percentile(bare_lat, 99),
        "samples_s": [r["total_s"] for r in runs],
        "baseline_samples_s": [r["total_s"] for r in bare],
    }
    result["ratio_to_baseline"] = result["lines_per_s"] / result["baseline_lines_per_s"]
    result["met"] = result["lines_per_s"] >= TARGET_LINES_PER_SECOND and result["p99_s"] < (
        TARGET_P99_S
    )
    ms = 1000
    print_table(
        f"topic: {n:,} lines producer → topic → GET /topic client; latency over "
        f"{args.latency_lines} lines {args.pace_ms:g} ms apart",
        [
            ("hub lines/s (median run, POST start → last line)", f"{result['lines_per_s']:,.0f}"),
            ("raw Redis XADD → XREAD lines/s", f"{result['baseline_lines_per_s']:,.0f}"),
            ("ratio hub / raw", f"{result['ratio_to_baseline']:.2f}"),
            (
                "hub latency p50 / p99",
                f"{result['p50_s'] * ms:.1f} / {result['p99_s'] * ms:.1f} ms",
            ),
            (
                "raw Redis latency p50 / p99",
                f"{result['baseline_p50_s'] * ms:.1f} / {result['baseline_p99_s'] * ms:.1f} ms",
            ),
            (
                "target",
                f"≥ {TARGET_LINES_PER_SECOND:,}/s and p99 < 50 ms: "
                f"{'met' if result['met'] else 'NOT met'}",
            ),
        ],
    )
    write_result("topic_throughput", result)
    return result


if __name__ == "__main__":
    main()
