"""Line printed → shown in a WebSocket client following the instance (the console's log view).

A sequence prints a timestamped line every `--period` seconds; a WebSocket client on the
console's instance consumer (`/ws/instances/<id>/`, logged in with a session cookie) and, in the
same run as the baseline, an HTTP reader of `/stdout` note when each line arrives.
If the console has no instance consumer yet, only the HTTP stream is measured, and the result
says so. Target: p99 ≤ 50 ms on the WebSocket.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from typing import Any

import httpx

from bench.common import median, ms, percentile, print_table, running_hub, write_result
from bench.wsclient import HandshakeFailed, WebSocket

TARGET_P99_S = 0.05
TICKER = """
import asyncio
import time


async def run(context, input, lines=200, period=0.05):
    await asyncio.sleep(0.5)
    for i in range(lines):
        print(f"tick {i} {time.time():.6f}")
        await asyncio.sleep(period)
"""
TICK = re.compile(rb"tick (\d+) (\d+\.\d+)")


def _collect(data: bytes, now: float, since: float, seen: set[int], sink: list[float]) -> None:
    for match in TICK.finditer(data):
        number, printed = int(match.group(1)), float(match.group(2))
        if printed >= since and number not in seen:
            seen.add(number)
            sink.append(now - printed)


async def follow_ws(hub: Any, iid: str, sink: list[float], lines: int) -> str:
    headers = {"Origin": hub.url, "Cookie": f"sessionid={hub.session_cookie}"}
    since, seen = time.time(), set()
    try:
        ws = await WebSocket.connect("127.0.0.1", hub.port, f"/ws/instances/{iid}/", headers)
    except HandshakeFailed as exc:
        return f"no WebSocket: {exc}"
    try:
        while len(seen) < lines:
            message = await ws.recv()
            if message is None:
                break
            data = message.encode() if isinstance(message, str) else message
            _collect(data, time.time(), since, seen, sink)
    finally:
        await ws.close()
    return "websocket"


async def follow_http(api: httpx.AsyncClient, iid: str, sink: list[float]) -> None:
    since, seen, tail = time.time(), set(), b""
    async with api.stream("GET", f"/instance/{iid}/stdout") as response:
        async for chunk in response.aiter_raw():
            data = tail + chunk
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            _collect(data[:cut], time.time(), since, seen, sink)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "p50_s": median(values),
        "p99_s": percentile(values, 99),
        "max_s": max(values) if values else float("nan"),
    }


async def measure(hub: Any, seq: str, lines: int, period: float) -> dict[str, Any]:
    ws_lat: list[float] = []
    http_lat: list[float] = []
    async with hub.async_client(timeout=lines * period + 60) as api:
        response = await api.post(f"/sequence/{seq}/start", json={"args": [lines, period]})
        response.raise_for_status()
        iid = response.json()["id"]
        ws_task = asyncio.ensure_future(follow_ws(hub, iid, ws_lat, lines))
        http_task = asyncio.ensure_future(follow_http(api, iid, http_lat))
        await asyncio.wait_for(http_task, lines * period + 60)
        try:
            mode = await asyncio.wait_for(ws_task, 10)
        except TimeoutError:
            mode = "websocket (did not see every line)"
    return {"mode": mode, "ws": summary(ws_lat), "http": summary(http_lat)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--period", type=float, default=0.05)
    args = parser.parse_args(argv)
    with running_hub("ws_latency") as hub:
        seq = hub.upload(TICKER)
        data = asyncio.run(measure(hub, seq, args.lines, args.period))
    ws, http = data["ws"], data["http"]
    measured = ws if data["mode"].startswith("websocket") and ws["count"] else http
    met = measured["p99_s"] <= TARGET_P99_S
    result = {
        "target_p99_s": TARGET_P99_S,
        "lines": args.lines,
        "period_s": args.period,
        **data,
        "p99_s": measured["p99_s"],
        "met": met,
    }
    if ws["count"]:
        result["ratio_ws_to_http_p99"] = ws["p99_s"] / http["p99_s"]
    print_table(
        f"line printed → shown, {args.lines} lines every {ms(args.period)}",
        [
            ("measured through", data["mode"]),
            (
                "WebSocket p50 / p99 / max",
                f"{ms(ws['p50_s'])} / {ms(ws['p99_s'])} / {ms(ws['max_s'])} ({ws['count']} lines)",
            ),
            (
                "baseline /stdout HTTP p50 / p99 / max",
                f"{ms(http['p50_s'])} / {ms(http['p99_s'])} / {ms(http['max_s'])}"
                f" ({http['count']} lines)",
            ),
            ("target", f"p99 ≤ {ms(TARGET_P99_S)}: {'met' if met else 'NOT met'}"),
        ],
    )
    write_result("ws_latency", result)
    return result


if __name__ == "__main__":
    main()
