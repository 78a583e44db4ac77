"""Workers that die, limits, retention, and output larger than memory: each with its own hub."""

from __future__ import annotations

import os
import signal
import time

import httpx
import psutil
import pytest

from tests.conftest import BIN, ROOT, hub_env, start_worker, wait_for
from tests.packaging import python_package, upload

pytestmark = pytest.mark.django_db(transaction=True)


FOREVER = """
import asyncio
async def run(context, input):
    while True:
        print("alive", flush=True)
        await asyncio.sleep(0.2)
"""


def _start(api: httpx.Client, seq: str) -> str:
    response = api.post(f"/sequence/{seq}/start", json={})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def _status(api: httpx.Client, iid: str) -> dict:
    return api.get(f"/instance/{iid}").json()


def test_a_worker_killed_with_sigkill_leaves_its_instances_lost_and_no_orphans(
    private_hub, tmp_path
):
    from runner.tasks import detect_lost

    hub = private_hub()
    seq = upload(hub.api, python_package(FOREVER))
    ids = [_start(hub.api, seq) for _ in range(5)]
    wait_for(lambda: all(_status(hub.api, i)["status"] == "running" for i in ids), what="running")
    worker_proc = psutil.Process(hub.workers[0].proc.pid)
    children = worker_proc.children(recursive=True)
    assert len(children) >= 6  # the fork server and five instances
    os.kill(worker_proc.pid, signal.SIGKILL)
    wait_for(lambda: not any(_alive(p) for p in children), timeout=10, what="no orphans")
    # Beat runs this every few seconds; the worker's heartbeat expires after HUB_LOST_AFTER.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_status(hub.api, i)["status"] != "lost" for i in ids):
        detect_lost()
        time.sleep(0.5)
    for iid in ids:
        data = _status(hub.api, iid)
        assert data["status"] == "lost"
        assert "stopped answering" in data["terminated"]["reason"]
        assert (data["outcome"], data["endedBy"]["kind"]) == ("lost", "workerLost"), data
        # A reader of a lost instance gets what was written, then the stream ends.
        assert b"alive" in hub.api.get(f"/instance/{iid}/stdout").content
    # A new worker takes new starts.
    hub.workers.append(start_worker(tmp_path, "worker2", HUB_QUEUE=hub.queue))
    iid = _start(hub.api, seq)
    wait_for(lambda: _status(hub.api, iid)["status"] == "running", what="new worker runs it")
    hub.api.post(f"/instance/{iid}/_kill", json={})


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_over_the_instance_limit_start_answers_507(private_hub):
    hub = private_hub(web_env={"HUB_MAX_INSTANCES": "2"})
    seq = upload(hub.api, python_package(FOREVER))
    ids = [_start(hub.api, seq) for _ in range(2)]
    response = hub.api.post(f"/sequence/{seq}/start", json={})
    assert response.status_code == 507
    assert response.json()["code"] == "INSUFFICIENT_RESOURCES"
    assert "HUB_MAX_INSTANCES" in response.json()["error"]
    for iid in ids:
        hub.api.post(f"/instance/{iid}/_kill", json={})


def test_over_the_worker_capacity_start_answers_507(private_hub):
    hub = private_hub(worker_env={"HUB_WORKER_CAPACITY": "1"})
    seq = upload(hub.api, python_package(FOREVER))
    first = _start(hub.api, seq)
    began = time.monotonic()
    response = hub.api.post(f"/sequence/{seq}/start", json={})
    assert time.monotonic() - began < 5  # at once, not after HUB_START_TIMEOUT
    assert response.status_code == 507
    assert response.json()["code"] == "INSUFFICIENT_RESOURCES"
    assert "capacity" in response.json()["error"]
    # The refused start's row says so: outcome refused (issue 17, item 1).
    others = [i for i in hub.api.get("/instances").json() if i["id"] != first]
    assert [(i["outcome"], i["terminated"]["exitcode"]) for i in others] == [("refused", 24)]
    hub.api.post(f"/instance/{first}/_kill", json={})


def test_ended_instances_are_pruned_after_retention(private_hub):
    from django.utils import timezone

    from runner.tasks import prune_ended
    from sequences.models import Instance, StreamChunk

    hub = private_hub(worker_env={"HUB_INSTANCE_RETENTION": "1s"})
    seq = upload(hub.api, python_package("def run(context, input):\n    return 'kept'\n"))
    iid = _start(hub.api, seq)
    assert hub.api.get(f"/instance/{iid}/output").content == b"kept"
    wait_for(lambda: _status(hub.api, iid)["status"] == "completed", what="completed")
    # The end reaches readers through Redis first; the row and its chunks follow in the
    # writer's next batch.
    wait_for(lambda: Instance.objects.get(pk=iid).remove_at is not None, what="the end recorded")
    assert StreamChunk.objects.filter(instance_id=iid).exists()
    wait_for(lambda: Instance.objects.get(pk=iid).remove_at <= timezone.now(), what="expiry")
    assert prune_ended() >= 1
    assert hub.api.get(f"/instance/{iid}").status_code == 404
    assert not StreamChunk.objects.filter(instance_id=iid).exists()


BIG = """
import sys
def run(context, input, megabytes=200):
    line = ("y" * 1023 + "\\n").encode()
    block = line * 1024
    out = sys.stdout.buffer
    for _ in range(megabytes):
        out.write(block)
    out.flush()
"""


def test_200_mb_of_stdout_streams_through_with_the_worker_memory_bounded(private_hub):
    hub = private_hub()
    seq = upload(hub.api, python_package(BIG))
    response = hub.api.post(f"/sequence/{seq}/start", json={"args": [200]})
    iid = response.json()["id"]
    worker = psutil.Process(hub.workers[0].proc.pid)
    before = worker.memory_info().rss
    peak = 0
    total = 0
    with hub.api.stream("GET", f"/instance/{iid}/stdout") as stream:
        for chunk in stream.iter_raw():
            total += len(chunk)
            peak = max(peak, worker.memory_info().rss)
    assert total == 200 * 1024 * 1024
    # Measured: the worker grew by ~26 MiB (it held back the child at 4 MiB waiting; at
    # 32 MiB it had grown by ~200 MiB); the bound leaves room for a loaded machine.
    grown = peak - before
    assert grown < 96 << 20, f"worker grew by {grown >> 20} MiB while 200 MB went through"


def test_commands_for_the_test_suite_exist():
    assert (BIN / "celery").exists() and (BIN / "daphne").exists()
    assert (ROOT / "manage.py").exists()
    assert hub_env()["HUB_LOST_AFTER"] == "6"


def test_a_lost_worker_kills_its_sequencers_frees_their_components_and_is_audited(
    private_hub, tmp_path
):
    """The host vanishes (its process group SIGKILLed): within HUB_LOST_AFTER and a beat, its
    instances are lost, its sequencers Killed, their components Idle saying why (never Running
    beside a Killed sequencer), the worker leaves the lists, and the audit log has the loss."""
    from accounts.models import AuditEntry
    from dashboard.views.overview import overview_context
    from runner.tasks import detect_lost
    from sequences.models import Worker
    from tests.sequences.sequencer_kit import Kit

    hub = private_hub()
    kit = Kit(hub.api, hub.api)
    comp = kit.component()
    sequencer = kit.load(component=comp)
    seq = upload(hub.api, python_package(FOREVER))
    iid = _start(hub.api, seq)
    name = _status(hub.api, iid)["worker"]
    assert name in [w.name for w in overview_context()["workers"]]
    victim = hub.workers[0].proc
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    killed_at = time.monotonic()
    while time.monotonic() - killed_at < 30 and _status(hub.api, iid)["status"] != "lost":
        detect_lost()
        time.sleep(0.5)
    # HUB_LOST_AFTER is 6 s here, beat runs every 5 s: lost within both, with room for a slow box.
    assert time.monotonic() - killed_at < 6 + 5 + 5
    gone = kit.get(sequencer["id"])
    assert gone["state"] == "Killed"
    assert gone["reason"] == f"process lost: worker {name} stopped answering"
    status = hub.api.get(f"/component/{comp}/status").json()
    assert status["state"] == "Idle" and status["sequencer"] is None
    assert sequencer["prefix"] in status["reason"] and "stopped answering" in status["reason"]
    entry = AuditEntry.objects.get(action="worker.lost", target=name)
    assert entry.actor == "hub" and entry.via == "hub"
    assert set(entry.detail["ended"]) == {iid, sequencer["instance"]}
    assert entry.detail["sequencers"] == [sequencer["prefix"]]
    assert Worker.objects.get(name=name).stopped is not None
    assert name not in [w.name for w in overview_context()["workers"]]
    # The component takes a script again, on a new worker.
    hub.workers.append(start_worker(tmp_path, "worker2", HUB_QUEUE=hub.queue))
    kit.load(component=comp, prefix=sequencer["prefix"])
    kit.cleanup()


def test_a_silent_worker_without_instances_ages_out_of_the_lists(private_hub):
    from dashboard.views.overview import overview_context
    from runner.tasks import detect_lost
    from sequences.models import Worker

    hub = private_hub()
    # The session's shared hub writes its own row back at its beats: pick this hub's by pid.
    mine = Worker.objects.filter(stopped__isnull=True, pid=hub.workers[0].proc.pid)
    wait_for(mine.exists, what="registered")
    name = mine.get().name
    os.killpg(hub.workers[0].proc.pid, signal.SIGKILL)
    hub.workers[0].proc.wait()
    wait_for(
        lambda: detect_lost() is not None and Worker.objects.get(name=name).stopped,
        timeout=20,
        interval=0.5,
        what="the silent worker marked stopped",
    )
    assert name not in [w.name for w in overview_context()["workers"]]


def test_a_worker_whose_row_was_deleted_writes_it_again_at_its_next_beat(private_hub):
    """A row aged out (a day taken for stopped: a long partition) or deleted by hand: the
    worker, still alive, puts itself back on the Workers page at its next beat."""
    from sequences.models import Worker

    hub = private_hub()
    mine = Worker.objects.filter(stopped__isnull=True, pid=hub.workers[0].proc.pid)
    wait_for(mine.exists, what="registered")
    row = mine.get()
    Worker.objects.filter(pk=row.pk).delete()
    back = wait_for(
        lambda: Worker.objects.filter(name=row.name).first(), timeout=20, what="the row back"
    )
    assert back.stopped is None and back.capacity == row.capacity
    assert back.hostname == row.hostname and back.labels == row.labels
    assert hub.api.get(f"/worker/{row.name}").status_code == 200
