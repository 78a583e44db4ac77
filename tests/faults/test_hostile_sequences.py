"""Sequences that misbehave: each ends (or is ended) with a clear status and reason, and the hub
goes on running other instances normally.

Each test has a private hub (its own web and worker), so a misbehaving child harms no other test.
"""

from __future__ import annotations

import threading
import time

import httpx
import psutil
import pytest

from tests.conftest import wait_for
from tests.faults.conftest import (
    PLAIN,
    alive,
    assert_hub_runs_a_normal_instance,
    info,
    poll,
    rss,
    start,
    status,
    wait_ended,
)
from tests.packaging import python_package, upload

pytestmark = pytest.mark.django_db(transaction=True)

GREEDY = """
def run(context, input):
    hoard = []
    while True:
        hoard.append(bytearray(16 << 20))  # 16 MB at a time, until the limit says no
"""

FORKER = """
import asyncio, subprocess
async def run(context, input, count, escapees):
    kids = [subprocess.Popen(["sleep", "600"]) for _ in range(count)]
    # Children in a session of their own leave the instance's process group.
    kids += [subprocess.Popen(["sleep", "600"], start_new_session=True) for _ in range(escapees)]
    print("forked", len(kids), flush=True)
    while True:
        await asyncio.sleep(1)
"""

CLOSES_STDOUT = """
import os, sys, time
def run(context, input):
    print("before closing", flush=True)
    os.close(1)
    for i in range(5):
        yield f"output {i}\\n"
        time.sleep(0.1)
    try:
        print("after closing", flush=True)
    except OSError as exc:
        yield f"print failed: {type(exc).__name__}\\n"
    yield "done\\n"
"""

DEAF = """
import asyncio
async def run(context, input):
    print("not listening", flush=True)
    while True:
        await asyncio.sleep(0.5)
"""

NO_NEWLINES = """
import sys, time
def run(context, input, seconds, piece):
    end = time.monotonic() + seconds
    written = 0
    while time.monotonic() < end:
        sys.stdout.write("x" * piece)
        written += piece
        time.sleep(0.001)
    sys.stdout.flush()
    return str(written)
"""


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def live_pid(api: httpx.Client, iid: str) -> int:
    return wait_for(lambda: info(api, iid).get("pid"), timeout=20, what="the instance's pid")


def test_a_sequence_over_its_memory_limit_ends_errored_with_the_reason(private_hub):
    hub = private_hub()
    seq = upload(hub.api, python_package(GREEDY))
    iid = start(hub.api, seq, {"limits": {"memory": 128}})
    data = wait_ended(hub.api, iid, timeout=60)
    assert data["status"] == "errored", data
    assert data["terminated"]["exitcode"] == 23, data
    assert "exception" in data["terminated"]["reason"]
    assert b"MemoryError" in hub.api.get(f"/instance/{iid}/stderr").content
    assert_hub_runs_a_normal_instance(hub.api, upload(hub.api, python_package(PLAIN)))


def test_a_sequence_that_forks_a_thousand_children_is_killed_with_all_of_them(private_hub):
    hub = private_hub()
    seq = upload(hub.api, python_package(FORKER))
    iid = start(hub.api, seq, {"args": [1000, 10]})
    with hub.api.stream("GET", f"/instance/{iid}/stdout") as stream:
        for line in stream.iter_lines():
            if line.startswith("forked"):
                assert line == "forked 1010"
                break
    pid = live_pid(hub.api, iid)
    kids = descendants(pid)
    assert len(kids) >= 1010
    started = time.monotonic()
    assert hub.api.post(f"/instance/{iid}/_kill", json={}).status_code == 202
    data = wait_ended(hub.api, iid)
    assert data["status"] == "completed" and data["terminated"]["reason"] == "Instance killed"
    wait_for(lambda: not any(alive(k) for k in kids), timeout=15, what="every child gone")
    assert time.monotonic() - started < 15
    assert_hub_runs_a_normal_instance(hub.api, upload(hub.api, python_package(PLAIN)))


def test_a_sequence_that_closes_its_stdout_early_still_ends_cleanly(private_hub):
    hub = private_hub()
    seq = upload(hub.api, python_package(CLOSES_STDOUT))
    iid = start(hub.api, seq)
    # The stdout reader ends (it does not hang on a pipe closed early) with what came before.
    stdout = hub.api.get(f"/instance/{iid}/stdout", timeout=30).text
    assert stdout.startswith("before closing")
    output = hub.api.get(f"/instance/{iid}/output", timeout=30).text
    assert output.startswith("output 0\noutput 1\n")
    data = wait_ended(hub.api, iid)
    if data["status"] == "completed":
        assert output.endswith("done\n")
    else:
        assert data["status"] == "errored" and data["terminated"]["reason"], data
    assert_hub_runs_a_normal_instance(hub.api, upload(hub.api, python_package(PLAIN)))


def test_input_sent_to_a_sequence_that_never_reads_it_is_bounded(private_hub):
    hub = private_hub()
    seq = upload(hub.api, python_package(DEAF))
    iid = start(hub.api, seq)
    worker = hub.workers[0].proc.pid
    before = rss(worker)
    chunk = b"z" * (1 << 20)
    started = time.monotonic()
    for _ in range(160):  # 160 MB at a sequence that reads none of it
        response = hub.api.post(
            f"/instance/{iid}/input", content=chunk, headers={"x-end-stream": "false"}
        )
        assert response.status_code == 202, response.text
    assert time.monotonic() - started < 60, "sending input was held up by the deaf sequence"
    grown = rss(worker) - before
    assert grown < 200 << 20, f"the worker grew by {grown >> 20} MiB"
    log = b""
    with hub.api.stream("GET", f"/instance/{iid}/log") as stream:
        for piece in stream.iter_raw():
            log += piece
            if b"input dropped" in log:
                break
    assert b"not reading it" in log
    assert status(hub.api, iid) == "running"
    assert hub.api.post(f"/instance/{iid}/_kill", json={}).status_code == 202
    assert wait_ended(hub.api, iid)["terminated"]["reason"] == "Instance killed"
    assert_hub_runs_a_normal_instance(hub.api, upload(hub.api, python_package(PLAIN)))


def test_output_without_newlines_reaches_readers_live_with_memory_bounded(private_hub):
    hub = private_hub()
    seconds, piece = 20, 1000
    seq = upload(hub.api, python_package(NO_NEWLINES))
    iid = start(hub.api, seq, {"args": [seconds, piece]})
    web, worker = hub.web.proc.pid, hub.workers[0].proc.pid
    web_before, worker_before = rss(web), rss(worker)
    received: list[tuple[float, int]] = []  # (seconds since start, bytes so far)
    peaks = {"web": 0, "worker": 0}
    done = threading.Event()

    def watch_memory() -> None:
        while not done.is_set():
            peaks["web"] = max(peaks["web"], rss(web) - web_before)
            peaks["worker"] = max(peaks["worker"], rss(worker) - worker_before)
            time.sleep(0.25)

    watcher = threading.Thread(target=watch_memory, daemon=True)
    watcher.start()
    began = time.monotonic()
    total = 0
    try:
        with hub.api.stream("GET", f"/instance/{iid}/stdout", timeout=60) as stream:
            for data in stream.iter_raw():
                assert set(data) == {ord("x")}
                total += len(data)
                received.append((time.monotonic() - began, total))
    finally:
        done.set()
        watcher.join()
    written = int(hub.api.get(f"/instance/{iid}/output").text)
    assert total == written
    # Live: data arrived within the first seconds and all along the run, not at its end.
    assert received[0][0] < 3, received[:3]
    for second in range(2, seconds - 2, 3):
        assert any(second <= t < second + 3 for t, _ in received), f"nothing near {second} s"
    assert peaks["worker"] < 200 << 20, f"worker grew {peaks['worker'] >> 20} MiB"
    assert peaks["web"] < 200 << 20, f"web grew {peaks['web'] >> 20} MiB"
    assert wait_ended(hub.api, iid)["status"] == "completed"
    assert_hub_runs_a_normal_instance(hub.api, seq_plain(hub.api))


def seq_plain(api: httpx.Client) -> str:
    return upload(api, python_package(PLAIN))


def test_the_hub_is_not_slowed_by_a_hostile_neighbour(private_hub):
    """While a thousand-child forker runs, another instance still starts and ends promptly."""
    hub = private_hub()
    forker = start(hub.api, upload(hub.api, python_package(FORKER)), {"args": [1000, 0]})
    assert poll(lambda: len(descendants(live_pid(hub.api, forker))) >= 1000, timeout=30)
    began = time.monotonic()
    assert_hub_runs_a_normal_instance(hub.api, seq_plain(hub.api))
    assert time.monotonic() - began < 10
    hub.api.post(f"/instance/{forker}/_kill", json={})
    wait_ended(hub.api, forker)
