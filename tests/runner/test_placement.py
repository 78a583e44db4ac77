"""Placement by free places: a full worker leaves starts to a worker with room, and a full
cluster answers 507 at once (not after the start timeout)."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import start_worker, wait_for
from tests.packaging import python_package, upload

pytestmark = pytest.mark.django_db(transaction=True)

FOREVER = """
import asyncio
async def run(context, input):
    while True:
        await asyncio.sleep(0.2)
"""


def _start(api: httpx.Client, seq: str) -> str:
    response = api.post(f"/sequence/{seq}/start", json={})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def _worker(api: httpx.Client, iid: str) -> str:
    """The worker that runs an instance, once its row says so (the worker's writer batches)."""
    worker = ""

    def known() -> bool:
        nonlocal worker
        worker = api.get(f"/instance/{iid}").json()["worker"]
        return bool(worker)

    wait_for(known, what=f"the worker of {iid}")
    return worker


def _room(queue: str) -> dict[str, int]:
    from sequences import live

    entries = live.sync_client().hgetall(live.room_key(queue))
    return live.live_room(entries, time.time())


def test_a_full_worker_leaves_starts_to_one_with_room(private_hub, tmp_path):
    hub = private_hub(worker_env={"HUB_WORKER_CAPACITY": "1"})
    seq = upload(hub.api, python_package(FOREVER))
    first = _start(hub.api, seq)
    full_worker = _worker(hub.api, first)
    wait_for(lambda: _room(hub.queue).get(full_worker) == 0, what="the full worker says so")
    hub.workers.append(
        start_worker(tmp_path, "worker2", HUB_QUEUE=hub.queue, HUB_WORKER_CAPACITY="3")
    )
    wait_for(lambda: len(_room(hub.queue)) == 2, timeout=30, what="the second worker's room")
    ids = []
    for _ in range(3):
        began = time.monotonic()
        ids.append(_start(hub.api, seq))
        assert time.monotonic() - began < 5
    workers = {_worker(hub.api, iid) for iid in ids}
    assert len(workers) == 1
    assert full_worker not in workers
    # Both full now: the whole cluster is, and the web says so at once.
    began = time.monotonic()
    response = hub.api.post(f"/sequence/{seq}/start", json={})
    assert response.status_code == 507, response.text
    assert response.json()["code"] == "INSUFFICIENT_RESOURCES"
    assert time.monotonic() - began < 5
    # A place comes free: the next start takes it.
    hub.api.post(f"/instance/{first}/_kill", json={})
    wait_for(lambda: _room(hub.queue).get(full_worker) == 1, what="the freed place")
    again = _start(hub.api, seq)
    assert _worker(hub.api, again) == full_worker
    for iid in [*ids, again]:
        hub.api.post(f"/instance/{iid}/_kill", json={})


def test_a_start_waiting_unpopped_on_a_full_cluster_is_refused_quickly(private_hub):
    """The room a worker published a moment ago may be stale; a start left on the list while
    every worker is full is taken back and refused, never started later."""
    from sequences import live

    hub = private_hub(worker_env={"HUB_WORKER_CAPACITY": "1"})
    seq = upload(hub.api, python_package(FOREVER))
    first = _start(hub.api, seq)
    worker = _worker(hub.api, first)
    wait_for(lambda: _room(hub.queue).get(worker) == 0, what="the full worker says so")
    # A worker that said it had a place, then died: the web pushes the start, nobody pops it,
    # and once that entry lapses the web takes the start back and refuses it.
    live.sync_client().hset(live.room_key(hub.queue), "ghost", live.room_value(1, time.time() + 2))
    began = time.monotonic()
    response = hub.api.post(f"/sequence/{seq}/start", json={})
    assert response.status_code == 507, response.text
    assert response.json()["code"] == "INSUFFICIENT_RESOURCES"
    assert time.monotonic() - began < 10
    assert live.sync_client().llen(live.start_key(hub.queue)) == 0
    hub.api.post(f"/instance/{first}/_kill", json={})
