"""A rolling restart under a steady load of starts: nothing refused, nothing lost.

Two workers serve one hub. `--clients` API clients keep starting a sequence that prints
`--lines` numbered lines (`--gap` seconds apart) and ends, each client one start every
`--interval` seconds. After `--settle` seconds, each worker in turn is drained
(`POST /worker/:name/drain`, deadline `--deadline`), waited for until it exits, and replaced by a
new worker, which must publish free places before the next round. After the last round and
`--settle` seconds more the load stops. Then every started instance must end `completed`, and
its stdout, read back through the API, must be exactly the lines it printed.

Counted: starts sent, answered, refused (any answer but 200: the target is 0), lost (answered,
but the instance did not complete), lines lost (printed but not read back), starts sent after a
worker took its drain that ran on it all the same (target 0), how long each drain took (drain →
exit) and each replacement (start → free places published), and start latency while a worker
drains against its baseline in the same run: the starts sent outside every drain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.common import (
    BIN,
    Hub,
    median,
    ms,
    percentile,
    print_table,
    running_hub,
    wait_all_ended,
    write_result,
)
from dashboard.processes import stop_process, worker_argv

COUNTER = """
import time
def run(context, input, lines, gap):
    for i in range(int(lines)):
        print(f"line {i}", flush=True)
        time.sleep(float(gap))
"""


@dataclass
class Start:
    sent: float
    latency: float
    status: int
    iid: str = ""
    error: str = ""


@dataclass
class Load:
    starts: list[Start] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def _client(
    api: httpx.AsyncClient, seq: str, body: dict[str, Any], load: Load, interval: float
) -> None:
    while not load.stop.is_set():
        sent = time.monotonic()
        try:
            response = await api.post(f"/sequence/{seq}/start", json=body)
            start = Start(sent, time.monotonic() - sent, response.status_code)
            if response.status_code == 200:
                start.iid = response.json()["id"]
            else:
                start.error = response.text[:200]
        except httpx.HTTPError as exc:
            start = Start(sent, time.monotonic() - sent, 0, error=repr(exc))
        load.starts.append(start)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - sent)))


def _spawn_worker(hub: Hub, label: str) -> subprocess.Popen:
    log = (hub.data_dir / f"{label}.log").open("wb")
    return subprocess.Popen(
        worker_argv(
            BIN,
            hub.env["HUB_QUEUE"],
            16,
            "--without-heartbeat",
            "-l",
            "WARNING",
            "-n",
            f"{label}-{time.time_ns()}@%h",
        ),
        env=hub.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def _worker_name(api: httpx.AsyncClient, pid: int, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in (await api.get("/workers")).json():
            if worker["pid"] == pid and worker["state"] == "live":
                return worker["name"]
        await asyncio.sleep(0.1)
    raise RuntimeError(f"worker pid {pid} did not register within {timeout} s")


async def _has_room(api: httpx.AsyncClient, name: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = (await api.get(f"/worker/{name}")).json()
        if info.get("free"):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"worker {name} published no free place within {timeout} s")


async def _run(hub: Hub, seq: str, args: argparse.Namespace) -> dict[str, Any]:
    procs = [hub.procs["worker"], _spawn_worker(hub, "worker-b")]
    body = {"args": [args.lines, args.gap]}
    load = Load()
    rounds: list[dict[str, Any]] = []
    async with hub.async_client(connections=args.clients + 4, timeout=120) as api:
        names = [await _worker_name(api, p.pid) for p in procs]
        for name in names:
            await _has_room(api, name)
        began = time.monotonic()
        clients = [
            asyncio.ensure_future(_client(api, seq, body, load, args.interval))
            for _ in range(args.clients)
        ]
        await asyncio.sleep(args.settle)
        for index, (proc, name) in enumerate(zip(list(procs), names, strict=True)):
            t0 = time.monotonic()
            response = await api.post(f"/worker/{name}/drain", json={"deadline": args.deadline})
            if response.status_code != 200:
                raise RuntimeError(f"drain answered {response.status_code}: {response.text}")
            taken = time.monotonic()
            while proc.poll() is None:
                await asyncio.sleep(0.05)
            exited = time.monotonic()
            replacement = _spawn_worker(hub, f"worker-next{index}")
            procs.append(replacement)
            new_name = await _worker_name(api, replacement.pid)
            await _has_room(api, new_name)
            rounds.append(
                {
                    "worker": name,
                    "exit_code": proc.returncode,
                    "drain_taken_s": taken - t0,
                    "drain_to_exit_s": exited - t0,
                    "replacement_ready_s": time.monotonic() - exited,
                    "replacement": new_name,
                    "taken_at": taken,
                    "window": (t0, time.monotonic()),
                }
            )
            await asyncio.sleep(args.settle)
        load.stop.set()
        await asyncio.gather(*clients)
        elapsed = time.monotonic() - began
    try:
        return _check(hub, load, rounds, args, elapsed)
    finally:
        for proc in procs:
            if proc is not hub.procs["worker"]:
                stop_process(proc)


def _check(
    hub: Hub, load: Load, rounds: list[dict[str, Any]], args: argparse.Namespace, elapsed: float
) -> dict[str, Any]:
    answered = [s for s in load.starts if s.status == 200]
    refused = [s for s in load.starts if s.status != 200]
    expected = "".join(f"line {i}\n" for i in range(args.lines)).encode()
    lost_starts, lines_lost, misplaced = [], 0, 0
    with hub.client(timeout=120) as api:
        statuses = wait_all_ended(api, [s.iid for s in answered], timeout=120)
        for start in answered:
            info = api.get(f"/instance/{start.iid}").json()
            if statuses.get(start.iid) != "completed":
                lost_starts.append(
                    f"{start.iid}: {statuses.get(start.iid)} {info.get('terminated')}"
                )
            got = api.get(f"/instance/{start.iid}/stdout").content
            read = set(got.decode(errors="replace").splitlines())
            missing = sum(1 for i in range(args.lines) if f"line {i}" not in read)
            lines_lost += missing
            if got != expected and not missing:
                lost_starts.append(f"{start.iid}: stdout has lines it did not print")
            for round_ in rounds:
                if start.sent > round_["taken_at"] and info.get("worker") == round_["worker"]:
                    misplaced += 1

    def in_drain(start: Start) -> bool:
        return any(r["window"][0] <= start.sent <= r["window"][1] for r in rounds)

    draining = [s.latency for s in answered if in_drain(s)]
    steady = [s.latency for s in answered if not in_drain(s)]
    return {
        "elapsed_s": elapsed,
        "sent": len(load.starts),
        "answered": len(answered),
        "refused": len(refused),
        "refusals": [f"{s.status} {s.error}" for s in refused[:10]],
        "lost_starts": len(lost_starts),
        "lost_detail": lost_starts[:10],
        "lines_expected": len(answered) * args.lines,
        "lines_lost": lines_lost,
        "misplaced_after_drain": misplaced,
        "latency_steady_p50_ms": median(steady) * 1000,
        "latency_steady_p99_ms": percentile(steady, 99) * 1000,
        "latency_draining_p50_ms": median(draining) * 1000,
        "latency_draining_p99_ms": percentile(draining, 99) * 1000,
        "rounds": [{k: v for k, v in r.items() if k not in ("window", "taken_at")} for r in rounds],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--interval", type=float, default=0.25, help="seconds between a client's starts"
    )
    parser.add_argument("--lines", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between printed lines")
    parser.add_argument("--deadline", type=float, default=60)
    parser.add_argument("--settle", type=float, default=5, help="seconds of load around rounds")
    args = parser.parse_args()
    with running_hub("rolling_restart", HUB_START_TIMEOUT="120") as hub:
        seq = hub.upload(COUNTER)
        result = asyncio.run(_run(hub, seq, args))
    rows = [
        ("starts sent / answered", f"{result['sent']} / {result['answered']}"),
        ("starts refused (target 0)", str(result["refused"])),
        ("starts lost (target 0)", str(result["lost_starts"])),
        ("lines lost (target 0)", f"{result['lines_lost']} of {result['lines_expected']}"),
        ("starts on a worker after its drain (target 0)", str(result["misplaced_after_drain"])),
        (
            "start latency steady p50 / p99",
            f"{ms(result['latency_steady_p50_ms'] / 1000)} / "
            f"{ms(result['latency_steady_p99_ms'] / 1000)}",
        ),
        (
            "start latency while draining p50 / p99",
            f"{ms(result['latency_draining_p50_ms'] / 1000)} / "
            f"{ms(result['latency_draining_p99_ms'] / 1000)}",
        ),
    ]
    for r in result["rounds"]:
        rows.append(
            (
                f"drain {r['worker']}",
                f"taken {r['drain_taken_s'] * 1000:.0f} ms, exit {r['drain_to_exit_s']:.1f} s "
                f"(code {r['exit_code']}), replacement ready {r['replacement_ready_s']:.1f} s",
            )
        )
    print_table("Rolling restart of two workers under load", rows)
    ok = not (
        result["refused"]
        or result["lost_starts"]
        or result["lines_lost"]
        or result["misplaced_after_drain"]
    )
    result["ok"] = ok
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    write_result("rolling_restart", {"args": vars(args), **result})
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
