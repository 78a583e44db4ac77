"""Load: 200 concurrent API clients start instances and read them for a minute.

Every request must succeed, every instance's stdout must arrive whole and in order, and the
web and worker processes must stay within a memory bound. A private hub takes the load.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest

from tests.faults.conftest import rss
from tests.packaging import python_package, upload

pytestmark = pytest.mark.django_db(transaction=True)

CLIENTS = 200
LOAD_SECONDS = 60.0
LINES = 50
MEMORY_BOUND = 400 << 20  # resident bytes, each of web and worker, at any time

COUNTER = """
def run(context, input, tag, lines):
    for i in range(lines):
        print(tag, i)
    return "done"
"""


@dataclass
class Tally:
    runs: int = 0
    errors: list[str] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)


async def one_client(api: str, headers: dict, seq: str, number: int, until: float, tally: Tally):
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    timeout = httpx.Timeout(60.0)
    async with httpx.AsyncClient(
        base_url=api, headers=headers, limits=limits, timeout=timeout
    ) as c:
        run = 0
        while time.monotonic() < until:
            tag = f"c{number}r{run}"
            run += 1
            try:
                await start_and_read(c, seq, tag, tally)
            except Exception as exc:  # every failure is counted and reported
                tally.errors.append(f"{tag}: {type(exc).__name__}: {exc}"[:300])


async def start_and_read(c: httpx.AsyncClient, seq: str, tag: str, tally: Tally) -> None:
    response = await c.post(f"/sequence/{seq}/start", json={"args": [tag, LINES]})
    if response.status_code != 200:
        tally.errors.append(f"{tag}: start answered {response.status_code} {response.text[:200]}")
        return
    iid = response.json()["id"]
    stdout = await c.get(f"/instance/{iid}/stdout")
    expected = "".join(f"{tag} {i}\n" for i in range(LINES))
    if stdout.status_code != 200 or stdout.text != expected:
        tally.errors.append(f"{tag}: stdout {stdout.status_code}, {len(stdout.text)} chars")
        return
    output = await c.get(f"/instance/{iid}/output")
    if output.text != "done":
        tally.errors.append(f"{tag}: output {output.text[:100]!r}")
        return
    tally.statuses[await final_status(c, iid)] += 1
    tally.runs += 1


async def final_status(c: httpx.AsyncClient, iid: str) -> str:
    """The status once recorded: the streams end a moment before the row says so."""
    for _ in range(100):
        status = (await c.get(f"/instance/{iid}")).json()["status"]
        if status not in {"initializing", "starting", "running"}:
            return status
        await asyncio.sleep(0.1)
    return status


def test_200_clients_for_a_minute_lose_nothing_and_memory_stays_bounded(private_hub):
    hub = private_hub()
    seq = upload(hub.api, python_package(COUNTER))
    web, worker = hub.web.proc.pid, hub.workers[0].proc.pid
    peaks = {"web": 0, "worker": 0}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peaks["web"] = max(peaks["web"], rss(web))
            peaks["worker"] = max(peaks["worker"], rss(worker))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    tally = Tally()
    until = time.monotonic() + LOAD_SECONDS

    async def load() -> None:
        api, headers = str(hub.api.base_url), dict(hub.api.headers)
        await asyncio.gather(
            *(one_client(api, headers, seq, n, until, tally) for n in range(CLIENTS))
        )

    began = time.monotonic()
    try:
        asyncio.run(load())
    finally:
        done.set()
        watcher.join()
    elapsed = time.monotonic() - began
    print(
        f"{tally.runs} instances in {elapsed:.0f} s; statuses {dict(tally.statuses)}; "
        f"peak RSS web {peaks['web'] >> 20} MiB, worker {peaks['worker'] >> 20} MiB"
    )
    assert not tally.errors, f"{len(tally.errors)} errors, first: {tally.errors[:5]}"
    assert tally.runs >= CLIENTS  # every client completed at least one full round
    assert set(tally.statuses) == {"completed"}, tally.statuses
    assert peaks["web"] < MEMORY_BOUND, f"web peaked at {peaks['web'] >> 20} MiB"
    assert peaks["worker"] < MEMORY_BOUND, f"worker peaked at {peaks['worker'] >> 20} MiB"
    assert elapsed < LOAD_SECONDS + 45, "the last rounds took far longer than the load itself"
