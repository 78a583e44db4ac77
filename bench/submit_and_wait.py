"""A script's `submit_and_wait` of a one-step list on an idle downstream sequencer, round trip.

An upstream script times, inside its own step, `await sequencer.sequencer(down).submit_and_wait(
[one step])` N times in a row (the child → its supervisor → the downstream's worker and actor →
the step in the downstream's child → Completed → back), and prints the samples.

Baseline, same run: the same submit + queryFinal from a client over the HTTP API.
Target: median < 20 ms on one node (issue 18).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import httpx

from bench.common import median, ms, percentile, print_table, running_hub, write_result

TARGET_SECONDS = 0.020
UPSTREAM = """
import json
import time


def script(sequencer):
    @sequencer.on_setup("bench")
    async def bench(step):
        down = sequencer.sequencer(step.params["target"])
        one = [{"type": "Setup", "command": "noop", "params": {}}]
        samples = []
        for _ in range(int(step.params["runs"])):
            t0 = time.perf_counter()
            answer = await down.submit_and_wait(one, timeout=10)
            samples.append(time.perf_counter() - t0)
            assert answer["type"] == "Completed", answer
        print("SAMPLES " + json.dumps(samples), flush=True)
"""
DOWNSTREAM = """
def script(sequencer):
    @sequencer.on_setup("noop")
    async def noop(step):
        pass
"""


def _load(api: httpx.Client, seq: str, name: str) -> dict[str, Any]:
    api.post("/components", json={"name": f"BENCH.{name}"}).raise_for_status()
    response = api.post(
        f"/component/BENCH.{name}/load-script",
        json={"sequence": seq, "prefix": f"BENCH.{name}seq"},
    )
    response.raise_for_status()
    return response.json()["sequencer"]


def _stdout(api: httpx.Client, iid: str, marker: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = b""
        with api.stream("GET", f"/instance/{iid}/stdout", timeout=1) as out:
            try:
                for chunk in out.iter_bytes():
                    data += chunk
            except httpx.ReadTimeout:
                pass
        for line in data.decode().splitlines():
            if line.startswith(marker):
                return line[len(marker) :]
        time.sleep(0.2)
    raise RuntimeError(f"no {marker!r} line on stdout")


def measure(runs: int, warmup: int = 10) -> dict[str, Any]:
    with running_hub("submit_and_wait") as hub, hub.client() as api:
        up = _load(api, hub.upload(UPSTREAM), "up")
        down = _load(api, hub.upload(DOWNSTREAM), "down")
        one = {"commands": [{"type": "Setup", "command": "noop", "params": {}}]}
        # Baseline: the same round trip from a client, over HTTP.
        api_samples = []
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            run_id = api.post(f"/sequencer/{down['id']}/submit", json=one).json()["runId"]
            final = api.get(f"/sequencer/{down['id']}/queryFinal/{run_id}").json()
            if final["type"] != "Completed":
                raise RuntimeError(final)
            if i >= warmup:
                api_samples.append(time.perf_counter() - t0)
        step = {
            "type": "Setup",
            "command": "bench",
            "params": {"target": down["prefix"], "runs": warmup + runs},
        }
        run_id = api.post(f"/sequencer/{up['id']}/submit", json={"commands": [step]}).json()[
            "runId"
        ]
        final = api.get(f"/sequencer/{up['id']}/queryFinal/{run_id}?timeout=600").json()
        if final["type"] != "Completed":
            raise RuntimeError(final)
        samples = json.loads(_stdout(api, up["instance"], "SAMPLES "))[warmup:]
        return {"script": samples, "api": api_samples}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args(argv)
    got = measure(args.runs)
    script, api = got["script"], got["api"]
    result = {
        "target_s": TARGET_SECONDS,
        "median_s": median(script),
        "p99_s": percentile(script, 99),
        "baseline_api_median_s": median(api),
        "baseline_api_p99_s": percentile(api, 99),
        "runs": args.runs,
        "samples_s": script,
    }
    result["met"] = result["median_s"] < TARGET_SECONDS
    print_table(
        "submit_and_wait of a one-step list on an idle downstream (from a script)",
        [
            ("script median", ms(result["median_s"])),
            ("script p99", ms(result["p99_s"])),
            ("API submit + queryFinal median", ms(result["baseline_api_median_s"])),
            ("API submit + queryFinal p99", ms(result["baseline_api_p99_s"])),
            ("target", f"< {ms(TARGET_SECONDS)}: {'met' if result['met'] else 'NOT met'}"),
        ],
    )
    write_result("submit_and_wait", result)
    return result


if __name__ == "__main__":
    main()
