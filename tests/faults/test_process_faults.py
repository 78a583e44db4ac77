"""The hub's own processes fail: a worker killed with fifty instances, the web restarted,
Redis restarted mid-run. Each drill has a private hub; the Redis drill a private redis-server."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import psutil
import pytest

from tests.conftest import start_web, start_worker, stop_process, wait_for
from tests.faults.conftest import (
    FOREVER,
    PLAIN,
    PrivateRedis,
    alive,
    assert_hub_runs_a_normal_instance,
    info,
    start,
    status,
    wait_ended,
)
from tests.packaging import python_package, upload

pytestmark = pytest.mark.django_db(transaction=True)

BEAT_EVERY = 5.0  # how often celery beat runs detect_lost (dashboard/settings.py)


def counters(text: str) -> list[int]:
    """The numbers of FOREVER's `alive N` lines."""
    return [int(line.split()[1]) for line in text.splitlines() if line.startswith("alive ")]


def read_until(api: httpx.Client, iid: str, at_least: int) -> list[int]:
    """stdout's counters, read live until the count reaches `at_least`."""
    text = ""
    with api.stream("GET", f"/instance/{iid}/stdout", timeout=60) as stream:
        for piece in stream.iter_text():
            text += piece
            seen = counters(text[: text.rfind("\n") + 1])
            if seen and seen[-1] >= at_least:
                return seen
    return counters(text)


def assert_contiguous(seen: list[int], iid: str) -> None:
    assert seen == list(range(1, len(seen) + 1)), f"{iid}: lines lost or repeated"


def test_sigkill_of_a_worker_with_fifty_instances(private_hub, tmp_path):
    from runner.tasks import detect_lost

    hub = private_hub()
    seq = upload(hub.api, python_package(FOREVER))
    ids = [start(hub.api, seq) for _ in range(50)]
    wait_for(
        lambda: all(status(hub.api, i) == "running" for i in ids), timeout=60, what="all running"
    )
    worker = psutil.Process(hub.workers[0].proc.pid)
    children = worker.children(recursive=True)
    assert len(children) >= 51  # the fork server and fifty instances
    os.kill(worker.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: not any(alive(p) for p in children), timeout=10, what="no orphans")
    # What beat does every few seconds; the worker's heartbeat expires after HUB_LOST_AFTER.
    while time.monotonic() - killed_at < 30:
        detect_lost()
        if all(status(hub.api, i) == "lost" for i in ids):
            break
        time.sleep(BEAT_EVERY)
    assert time.monotonic() - killed_at < 30
    for iid in ids:
        data = info(hub.api, iid)
        assert data["status"] == "lost", data
        assert "stopped answering" in data["terminated"]["reason"]
        assert data["ended"]
        # A reader of a lost instance gets what was written, then its stream ends.
        assert counters(hub.api.get(f"/instance/{iid}/stdout").text)[:1] == [1]
    # No orphan: every process the worker had (fork server, fifty children) is gone.
    assert not [p for p in children if alive(p)]
    # A new worker takes new starts.
    hub.workers.append(start_worker(tmp_path, "worker2", HUB_QUEUE=hub.queue))
    assert_hub_runs_a_normal_instance(hub.api, upload(hub.api, python_package(PLAIN)))


def test_a_web_restart_leaves_running_instances_alone(private_hub, tmp_path):
    hub = private_hub()
    seq = upload(hub.api, python_package(FOREVER))
    ids = [start(hub.api, seq) for _ in range(5)]
    pids = {iid: wait_for(lambda i=iid: info(hub.api, i)["pid"], what="pid") for iid in ids}
    before = {iid: read_until(hub.api, iid, 3)[-1] for iid in ids}
    port = hub.web.port
    os.killpg(hub.web.proc.pid, signal.SIGKILL)  # no goodbye: the harshest restart
    hub.web.proc.wait()
    time.sleep(2)
    hub.web = start_web(tmp_path, int(port), HUB_QUEUE=hub.queue)
    for iid in ids:
        data = info(hub.api, iid)
        assert data["status"] == "running" and data["pid"] == pids[iid], data
        assert psutil.pid_exists(pids[iid])
        # Every line, those printed while the web was down included, in order.
        seen = read_until(hub.api, iid, before[iid] + 15)
        assert_contiguous(seen, iid)
        assert hub.api.post(f"/instance/{iid}/_kill", json={}).status_code == 202
    for iid in ids:
        assert wait_ended(hub.api, iid)["terminated"]["reason"] == "Instance killed"
    assert_hub_runs_a_normal_instance(hub.api, upload(hub.api, python_package(PLAIN)))


def test_a_redis_restart_mid_run(private_hub, private_redis: PrivateRedis, monkeypatch):
    import redis

    from runner.tasks import detect_lost
    from sequences import live

    # detect_lost, as beat runs it, against the private Redis.
    monkeypatch.setattr(live, "sync_client", lambda: redis.Redis.from_url(private_redis.url))
    env = {"REDIS_URL": private_redis.url}
    hub = private_hub(web_env=env, worker_env=env)
    seq = upload(hub.api, python_package(FOREVER))
    plain = upload(hub.api, python_package(PLAIN))
    ended = start(hub.api, plain, {"args": ["before"]})
    assert wait_ended(hub.api, ended)["status"] == "completed"
    ids = [start(hub.api, seq) for _ in range(3)]
    before = {iid: read_until(hub.api, iid, 5)[-1] for iid in ids}

    private_redis.stop()  # everything Redis held is gone: no snapshot, no append-only file
    # Meanwhile what the database holds still answers, tokens included, and promptly.
    began = time.monotonic()
    assert hub.api.get("/sequences").status_code == 200
    assert hub.api.get(f"/instance/{ended}").json()["status"] == "completed"
    assert hub.api.get(f"/instance/{ended}/output").text == "ok before"
    assert time.monotonic() - began < 3
    time.sleep(max(0.0, 3 - (time.monotonic() - began)))
    private_redis.start()
    # Beat's check right after the restart, before the workers beat again, marks nothing lost:
    # the heartbeat keys are gone, but the database's copy of the heartbeat is fresh. (A worker
    # retrying its beat may land it the moment Redis is back: its key goes again, as a restart
    # a moment later would have left it.)
    forget_workers(private_redis)
    assert detect_lost() == 0

    # Streams written before are intact: the database holds them.
    assert hub.api.get(f"/instance/{ended}/output").text == "ok before"
    # Workers reconnect: their heartbeat comes back, they take starts and control messages.
    wait_for(lambda: private_redis_has_worker(private_redis), timeout=15, what="heartbeat back")
    assert_hub_runs_a_normal_instance(hub.api, plain)
    for iid in ids:
        data = info(hub.api, iid)
        assert data["status"] == "running", data  # it went on: the outage did not touch it
        seen = read_until(hub.api, iid, before[iid] + 15)
        assert_contiguous(seen, iid)
        assert hub.api.post(f"/instance/{iid}/_kill", json={}).status_code == 202
        assert wait_ended(hub.api, iid)["terminated"]["reason"] == "Instance killed"


COUNT = """
import asyncio
async def run(context, input, upto='10'):
    for n in range(1, int(upto) + 1):
        print("alive", n, flush=True)
        await asyncio.sleep(0.2)
    return "done"
"""


class Reader(threading.Thread):
    """Follows an instance's stdout from the start on a connection of its own."""

    def __init__(self, api: httpx.Client, iid: str) -> None:
        super().__init__(daemon=True)
        self.api, self.iid = api, iid
        self.text = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            url = f"/instance/{self.iid}/stdout"
            with (
                httpx.Client(base_url=self.api.base_url, headers=self.api.headers) as client,
                client.stream("GET", url, timeout=90) as stream,
            ):
                for piece in stream.iter_text():
                    self.text += piece
        except BaseException as exc:  # reported by the test
            self.error = exc

    def seen(self) -> list[int]:
        return counters(self.text[: self.text.rfind("\n") + 1])


def test_readers_follow_through_a_redis_restart(private_hub, private_redis: PrivateRedis):
    """Readers attached before Redis dies: one of an instance that ends while Redis is away
    ends from the database; one of an instance that outlives the outage resumes from Redis.
    Neither shows a line twice or skips one, and both end when their instance does."""
    env = {"REDIS_URL": private_redis.url}
    hub = private_hub(web_env=env, worker_env=env)
    seq = upload(hub.api, python_package(COUNT))
    short = start(hub.api, seq, {"args": ["15"]})  # ~3 s
    long = start(hub.api, seq, {"args": ["80"]})  # ~16 s
    readers = {iid: Reader(hub.api, iid) for iid in (short, long)}
    for reader in readers.values():
        reader.start()
    wait_for(lambda: all(len(r.seen()) >= 3 for r in readers.values()), timeout=30, what="lines")

    assert private_redis.proc is not None
    private_redis.proc.kill()  # no goodbye, nothing kept
    private_redis.proc.wait()
    private_redis.proc = None
    down_at = time.monotonic()
    # The short one ends while Redis is away: its reader ends, from the database.
    readers[short].join(timeout=20)
    assert not readers[short].is_alive(), f"reader of {short} hangs: {readers[short].seen()}"
    assert readers[short].error is None, readers[short].error
    assert readers[short].seen() == list(range(1, 16))
    assert info(hub.api, short)["status"] == "completed"
    time.sleep(max(0.0, 4 - (time.monotonic() - down_at)))
    assert info(hub.api, long)["status"] == "running"  # it outlives the outage
    private_redis.start()

    readers[long].join(timeout=60)
    assert not readers[long].is_alive(), f"reader of {long} hangs: {readers[long].seen()}"
    assert readers[long].error is None, readers[long].error
    assert readers[long].seen() == list(range(1, 81))
    assert wait_ended(hub.api, long)["status"] == "completed"


def forget_workers(server: PrivateRedis) -> None:
    import redis

    from sequences import live

    client = redis.Redis(port=server.port)
    for key in client.keys(live.worker_key("*")):
        client.delete(key)


def private_redis_has_worker(server: PrivateRedis) -> bool:
    import redis

    from sequences import live

    return bool(redis.Redis(port=server.port).keys(live.worker_key("*")))


def test_stop_process_helper_is_gentle_first(tmp_path):
    """The drills rely on stop_process ending a process group it did not SIGKILL itself."""
    import subprocess

    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    stop_process(proc, timeout=5)
    assert proc.returncode == -signal.SIGTERM


def test_an_orderly_worker_stop_is_an_event_not_a_mystery(private_hub):
    """What a hub restart does to its worker (runhub stopped with SIGINT or SIGTERM stops the
    worker in order): its instances end `completed · 137` saying "worker shutdown", its
    sequencers are Killed saying so and their components are Idle saying why, one audit entry
    names all it ended, and the worker leaves the lists at once."""
    from accounts.models import AuditEntry
    from core.protocol import WORKER_SHUTDOWN
    from dashboard.views.overview import overview_context
    from sequences.models import Worker
    from tests.sequences.sequencer_kit import Kit

    hub = private_hub()
    kit = Kit(hub.api, hub.api)
    comp = kit.component()
    sequencer = kit.load(component=comp)
    seq = upload(hub.api, python_package(FOREVER))
    ids = [start(hub.api, seq) for _ in range(3)]
    name = info(hub.api, ids[0])["worker"]
    stop_process(hub.workers[0].proc)  # SIGTERM, then waits
    for iid in ids:
        data = info(hub.api, iid)
        assert data["status"] == "completed", data
        assert data["terminated"] == {"exitcode": 137, "reason": WORKER_SHUTDOWN.reason}
    gone = kit.get(sequencer["id"])
    assert gone["state"] == "Killed" and "worker shutdown" in gone["reason"], gone
    status = hub.api.get(f"/component/{comp}/status").json()
    assert status["state"] == "Idle" and status["sequencer"] is None, status
    assert "worker shutdown" in status["reason"] and sequencer["prefix"] in status["reason"]
    entry = AuditEntry.objects.get(action="worker.shutdown", target=name)
    assert entry.actor == "hub" and entry.via == "hub"
    assert entry.detail["instances"] == 4
    assert set(entry.detail["ended"]) == {*ids, sequencer["instance"]}
    assert entry.detail["sequencers"] == [sequencer["prefix"]]
    assert Worker.objects.get(name=name).stopped is not None
    assert name not in [w.name for w in overview_context()["workers"]]
