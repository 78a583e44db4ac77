"""The instance page's longest main-thread task while its instance prints 1 000 000 lines.

A Chromium page (Debian's `/usr/bin/chromium`, else Playwright's own) logged in as the bench's
admin opens `/instances/<id>/` of an instance that waits for one line of input; the bench then
sends it, and the instance prints `--lines` numbered lines as fast as it can (one buffered
write each). While the page follows the flood over its WebSocket, the page records every task
of its main thread over 50 ms (the Long Tasks API, `PerformanceObserver` of `longtask`,
registered before the page's own scripts run) and the largest lag of a 10 ms timer (a task of
any length delays it: it sees tasks under 50 ms too, and the machine's other load). Measured
from the input sent until the page shows the last line (the page's own load, before, is
reported apart). Then the stream is downloaded through the page's *download all* link and
every line is checked: all of them there, in order, none doubled.

Baseline, same run: the same page of an instance that printed nothing (the same sequence, sent
the same line, told to print 0 lines), watched for as long as the flood took.
Target: longest task under 100 ms; no line lost on download.

    python -m bench.console_mainthread [--lines 1000000]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import print_table, running_hub, start_instance, wait_all_ended, write_result

TARGET_S = 0.100

FLOOD = """
import sys


async def run(context, input, n=0):
    async for _ in input:  # one line: go
        break
    write = sys.stdout.write
    for i in range(int(n)):
        write(f"{i:07d} the quick brown fox jumps over the lazy dog\\n")
    sys.stdout.flush()
"""

# Registered before the page's scripts: every long task from the first on, and a 10 ms timer's
# worst lag (what a click or a key would have waited for).
PROBE = """
window.__bench = {long: [], lag: 0, ticks: 0};
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__bench.long.push([e.startTime, e.duration]);
}).observe({type: 'longtask', buffered: true});
(() => {
  let last = performance.now();
  setInterval(() => {
    const now = performance.now();
    window.__bench.lag = Math.max(window.__bench.lag, now - last - 10);
    window.__bench.ticks += 1;
    last = now;
  }, 10);
})();
"""


def chromium_path() -> str:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        for path in (shutil.which("chromium"), p.chromium.executable_path):
            if path and Path(path).exists():
                return path
    raise SystemExit("no Chromium: `apt-get install chromium` or `playwright install chromium`")


def watch(browser: Any, hub: Any, seq_id: str, lines: int, hold_s: float | None) -> dict:
    """Open the page of a fresh instance, make it print `lines` lines, and measure the page
    until the last one shows (or for `hold_s` seconds when it prints nothing)."""
    with hub.client() as api:
        iid = start_instance(api, seq_id, [lines])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.add_cookies(
            [{"name": "sessionid", "value": hub.session_cookie, "url": hub.url + "/"}]
        )
        context.add_init_script(PROBE)
        page = context.new_page()
        page.set_default_timeout(600_000)
        began = time.perf_counter()
        page.goto(f"{hub.url}/instances/{iid}/")
        page.wait_for_selector("[data-live].ws-open")
        # From here on is the flood: the lag restarts; long tasks before it were the load's.
        page.evaluate("window.__bench.sent = performance.now(); window.__bench.lag = 0")
        sent = time.perf_counter()
        answer = api.post(f"/instance/{iid}/input", content=b"go\n")
        if answer.status_code >= 300:
            raise RuntimeError(f"input answered {answer.status_code}: {answer.text}")
        ended = wait_all_ended(api, [iid], timeout=600)
        if ended[iid] != "completed":
            raise RuntimeError(f"the instance ended {ended[iid]}")
        if lines:
            last = f"{lines - 1:07d} the quick"
            page.wait_for_function(
                "t => (document.querySelector('#log-stdout-lines') || {}).textContent?.includes(t)",
                arg=last,
                polling=100,
            )
        else:
            page.wait_for_timeout(int((hold_s or 1) * 1000))
        shown = time.perf_counter()
        probe = page.evaluate("window.__bench.now = performance.now(), window.__bench")
        window = page.locator("#log-stdout-lines .l:not(.skipped)").count()
        context.close()
    during = [d for at, d in probe["long"] if at >= probe["sent"]]
    loading = [d for at, d in probe["long"] if at < probe["sent"]]
    longest = max(during, default=0.0)
    return {
        "instance": iid,
        "load_to_shown_s": shown - began,
        "sent_to_shown_s": shown - sent,
        "longest_task_s": longest / 1000,
        "long_tasks": len(during),
        "long_tasks_total_s": sum(during) / 1000,
        "longest_task_loading_s": max(loading, default=0.0) / 1000,
        "max_timer_lag_s": probe["lag"] / 1000,
        "timer_ticks": probe["ticks"],
        "lines_in_window": window,
        # When each long task began and how long it took, ms after the input was sent (the
        # last line showed at `shown_ms`): where in the flood the page stalled.
        "long_tasks_at": [
            [round(at - probe["sent"]), round(d)] for at, d in probe["long"] if at >= probe["sent"]
        ],
        "shown_ms": round(probe["now"] - probe["sent"]),
    }


def check_download(hub: Any, iid: str, lines: int) -> dict:
    """Every line of the stream, downloaded as the page's link does: all there, in order."""
    url = f"{hub.url}/instances/{iid}/log/stdout/download/"
    cookies = {"sessionid": hub.session_cookie}
    began = time.perf_counter()
    expected = 0
    bad = 0
    size = 0
    rest = b""
    with httpx.stream("GET", url, cookies=cookies, timeout=600) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes(1 << 20):
            size += len(chunk)
            parts = (rest + chunk).split(b"\n")
            rest = parts.pop()
            for line in parts:
                if line[:7] != b"%07d" % expected:
                    bad += 1
                expected += 1
    if rest:
        bad += 1
    return {
        "downloaded_lines": expected,
        "out_of_place": bad,
        "lost": max(0, lines - expected),
        "bytes": size,
        "download_s": time.perf_counter() - began,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with running_hub("console_mainthread") as hub, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run"],
        )
        seq_id = hub.upload(FLOOD)
        flood = watch(browser, hub, seq_id, args.lines, None)
        idle = watch(browser, hub, seq_id, 0, flood["sent_to_shown_s"])
        download = check_download(hub, flood["instance"], args.lines)
        browser.close()
    met = flood["longest_task_s"] < TARGET_S and download["lost"] == 0
    met = met and download["out_of_place"] == 0

    def both(key: str, long_task: bool = False) -> str:
        a, b = flood[key] * 1000, idle[key] * 1000

        def shown(v: float) -> str:
            # The Long Tasks API reports nothing under 50 ms: say so rather than "0.0 ms".
            return "none ≥ 50 ms" if long_task and not v else f"{v:.1f} ms"

        ratio = f" | ×{a / b:.2f}" if a and b else ""
        return f"{shown(a)} flood | {shown(b)} idle{ratio}"

    rows = [
        ("longest main-thread task (longtask, ≥ 50 ms)", both("longest_task_s", True)),
        ("  the page's load, before the input (same page)", both("longest_task_loading_s", True)),
        ("tasks over 50 ms", f"{flood['long_tasks']} flood | {idle['long_tasks']} idle"),
        ("time in tasks over 50 ms", both("long_tasks_total_s", True)),
        ("worst lag of a 10 ms timer", both("max_timer_lag_s")),
        ("input sent → last line shown", f"{flood['sent_to_shown_s']:.2f} s"),
        (
            "downloaded lines (lost, out of place)",
            f"{download['downloaded_lines']:,} ({download['lost']}, "
            f"{download['out_of_place']}) in {download['download_s']:.2f} s, "
            f"{download['bytes'] / 1e6:.0f} MB",
        ),
        ("target: longest task < 100 ms, none lost", "met" if met else "NOT met"),
    ]
    print_table(f"Instance page main thread, {args.lines:,} lines printed", rows)
    write_result(
        "console_mainthread",
        {
            "lines": args.lines,
            "flood": flood,
            "idle": idle,
            "download": download,
            "target_s": TARGET_S,
            "met": met,
        },
    )


if __name__ == "__main__":
    main()
