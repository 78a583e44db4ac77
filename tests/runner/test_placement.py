"""Placement by free places: a full worker leaves starts to a worker with room, and a full
cluster answers 507 at once (not after the start timeout); starts spread over workers by their
free places; a start's placement (labels, a worker's name) picks the workers that may run it.
The choice itself without a hub: tests/sequences/test_placement_rules.py."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

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


def _names(queue: str, count: int) -> list[str]:
    """The names of the `count` live workers of `queue`, once they all published their room."""
    wait_for(lambda: len(_room(queue)) == count, timeout=30, what=f"{count} workers' room")
    return sorted(_room(queue))


def _try_start(api: httpx.Client, seq: str, body: dict | None = None) -> httpx.Response:
    return api.post(f"/sequence/{seq}/start", json=body or {})


def _kill_all(api: httpx.Client, ids: list[str]) -> None:
    for iid in ids:
        api.post(f"/instance/{iid}/_kill", json={})


def test_starts_spread_over_workers_by_their_free_places(private_hub, tmp_path):
    hub = private_hub(worker_env={"HUB_WORKER_CAPACITY": "10"})
    hub.workers.append(
        start_worker(tmp_path, "worker2", HUB_QUEUE=hub.queue, HUB_WORKER_CAPACITY="10")
    )
    first, second = _names(hub.queue, 2)
    seq = upload(hub.api, python_package(FOREVER))
    # A burst: the web counts what it is offering each worker before the workers' room shows it.
    with ThreadPoolExecutor(4) as pool:
        burst = list(pool.map(lambda _: _start(hub.api, seq), range(8)))
    share = Counter(_worker(hub.api, iid) for iid in burst)
    assert set(share) == {first, second}
    assert min(share.values()) >= 3, share
    # One after another: each goes to the one with more free places.
    one_by_one = [_start(hub.api, seq) for _ in range(4)]
    share.update(_worker(hub.api, iid) for iid in one_by_one)
    assert min(share.values()) >= 5, share
    _kill_all(hub.api, burst + one_by_one)


def test_with_one_worker_full_no_start_is_refused_while_another_has_room(private_hub, tmp_path):
    """The issue's case, smaller: one worker full, the other with room; every start lands on
    the other until it is full too, and only then is one refused (507, at once).

    Measured once at the issue's size (capacities 150, one full, 200 starts from 8 clients):
    150 started on the other worker, the 50 refused all after it filled, in 16 s."""
    hub = private_hub(worker_env={"HUB_WORKER_CAPACITY": "2"})
    (full,) = _names(hub.queue, 1)
    seq = upload(hub.api, python_package(FOREVER))
    filling = [_start(hub.api, seq) for _ in range(2)]
    assert {_worker(hub.api, iid) for iid in filling} == {full}
    hub.workers.append(
        start_worker(tmp_path, "worker2", HUB_QUEUE=hub.queue, HUB_WORKER_CAPACITY="6")
    )
    (roomy,) = set(_names(hub.queue, 2)) - {full}
    wait_for(lambda: _room(hub.queue).get(full) == 0, what="the full worker says so")
    began = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _try_start(hub.api, seq), range(8)))
    assert time.monotonic() - began < 20
    started = [a.json()["id"] for a in answers if a.status_code == 200]
    refused = [a.json() for a in answers if a.status_code != 200]
    assert len(started) == 6, [a.text for a in answers]
    assert {_worker(hub.api, iid) for iid in started} == {roomy}
    assert len(refused) == 2
    for body in refused:
        assert body["code"] == "INSUFFICIENT_RESOURCES", body
        assert "at its capacity" in body["error"], body
    _kill_all(hub.api, filling + started)


def test_placement_by_labels_and_by_name(private_hub, tmp_path):
    from sequences.models import Worker

    hub = private_hub(worker_env={"HUB_WORKER_LABELS": "zone=a"})
    (plain,) = _names(hub.queue, 1)
    hub.workers.append(
        start_worker(tmp_path, "worker2", HUB_QUEUE=hub.queue, HUB_WORKER_LABELS="gpu, zone=b")
    )
    (gpu,) = set(_names(hub.queue, 2)) - {plain}
    seq = upload(hub.api, python_package(FOREVER))
    on_gpu = _try_start(hub.api, seq, {"placement": {"labels": ["gpu"]}}).json()["id"]
    in_a = _try_start(hub.api, seq, {"placement": {"labels": ["zone=a"]}}).json()["id"]
    named = _try_start(hub.api, seq, {"placement": {"worker": gpu}}).json()["id"]
    both = {"labels": ["zone=b", "gpu"], "worker": gpu}
    also = _try_start(hub.api, seq, {"placement": both}).json()["id"]
    assert [_worker(hub.api, iid) for iid in (on_gpu, in_a, named, also)] == [gpu, plain, gpu, gpu]
    # A host's name stands for its workers (a worker's own name changes when it restarts).
    host = {"worker": socket.gethostname(), "labels": ["zone=a"]}
    on_host = _try_start(hub.api, seq, {"placement": host}).json()["id"]
    assert _worker(hub.api, on_host) == plain
    assert hub.api.get(f"/instance/{on_gpu}").json()["placement"] == {"labels": ["gpu"]}
    # The labels are kept on each worker's row too (the console and the API show them).
    wait_for(
        lambda: Worker.objects.get(name=gpu).labels == ["gpu", "zone=b"],
        what="the worker's labels on its row",
    )
    assert Worker.objects.get(name=plain).labels == ["zone=a"]
    # No live worker fits: 507 at once, saying what the live ones have.
    began = time.monotonic()
    answer = _try_start(hub.api, seq, {"placement": {"labels": ["gpu", "zone=a"]}})
    assert time.monotonic() - began < 3
    assert answer.status_code == 507, answer.text
    assert answer.json()["code"] == "INSUFFICIENT_RESOURCES"
    error = answer.json()["error"]
    assert "no live worker" in error and "has labels gpu, zone=a" in error, error
    assert f"{plain} [zone=a]" in error and f"{gpu} [gpu, zone=b]" in error, error
    answer = _try_start(hub.api, seq, {"placement": {"worker": "no-such-worker"}})
    assert answer.status_code == 507 and "name or host no-such-worker" in answer.json()["error"]
    # A malformed placement is refused before anything is made, naming the field.
    answer = _try_start(hub.api, seq, {"placement": {"labels": ["gpu", 7]}})
    assert answer.status_code == 422, answer.text
    assert answer.json() == {
        "error": "placement.labels[1] must be a string, got int",
        "code": "INVALID_CONFIG",
    }
    # A restart keeps the placement.
    again = hub.api.post(f"/instance/{on_gpu}/restart", json={}).json()["id"]
    assert _worker(hub.api, again) == gpu
    _kill_all(hub.api, [again, in_a, named, also, on_host])


def test_a_worker_refuses_a_start_placed_on_it_that_it_does_not_fit(private_hub):
    """The web chose the worker; the worker checks again: a signed start naming labels it
    lacks is refused with the reason, and nothing runs."""
    from sequences import live
    from sequences.instances import start_request
    from sequences.models import Instance, Sequence

    hub = private_hub(worker_env={"HUB_WORKER_LABELS": "zone=a"})
    (worker,) = _names(hub.queue, 1)
    seq = Sequence.objects.get(pk=upload(hub.api, python_package(FOREVER)))
    instance = Instance.objects.create(
        sequence=seq, sequence_name=seq.name, placement={"labels": ["gpu"]}
    )
    token = uuid.uuid4().hex
    dest = live.placed_start_key(hub.queue, worker)
    live.sync_client().rpush(dest, start_request(instance, seq, token, 30, dest))
    raw = live.sync_client().blpop([live.reply_key(token)], timeout=20)
    assert raw is not None, "the worker did not answer"
    answer = live.decode_reply(token, raw[1])
    assert answer["code"] == "INSUFFICIENT_RESOURCES", answer
    assert f"worker {worker} does not have labels gpu" in answer["error"]
    wait_for(
        lambda: Instance.objects.get(pk=instance.id).status == "errored",
        what="the refused start recorded",
    )
    row = Instance.objects.get(pk=instance.id)
    assert row.pid is None and "does not have labels gpu" in row.reason


def test_a_start_offered_to_a_dead_worker_is_taken_back_and_placed_on_another(
    private_hub, tmp_path
):
    """The chosen worker died after it published room: it never pops the start, so the web
    takes it back and gives it to a live worker, without waiting for the dead one's room to
    lapse."""
    from sequences import live

    hub = private_hub(worker_env={"HUB_WORKER_CAPACITY": "20"})
    (dead,) = _names(hub.queue, 1)
    hub.workers.append(
        start_worker(tmp_path, "worker2", HUB_QUEUE=hub.queue, HUB_WORKER_CAPACITY="2")
    )
    (alive,) = set(_names(hub.queue, 2)) - {dead}
    seq = upload(hub.api, python_package(FOREVER))
    os.killpg(hub.workers[0].proc.pid, signal.SIGKILL)
    hub.workers[0].proc.wait()
    assert dead in _room(hub.queue), "the dead worker's room lapsed already"
    began = time.monotonic()
    iid = _start(hub.api, seq)
    assert time.monotonic() - began < 5
    assert _worker(hub.api, iid) == alive
    assert live.sync_client().llen(live.placed_start_key(hub.queue, dead)) == 0
    _kill_all(hub.api, [iid])


def test_a_start_swallowed_by_a_dead_connection_is_placed_again(private_hub):
    """A host that vanished without closing its sockets leaves its worker's blocking pop open
    on Redis, which takes the next start pushed on its list, and nothing ever runs it. The web
    sees the start popped but never claimed, and places it on another worker; the copy that
    went into the void cannot run twice (the claim decides)."""
    import threading

    from sequences import live

    hub = private_hub()
    (alive,) = _names(hub.queue, 1)
    seq = upload(hub.api, python_package(FOREVER))
    # The vanished worker: its room says it has the most places and reads its own list...
    ghost = "ghost@gone"
    lapses = time.time() + 60
    client = live.sync_client()
    client.hset(live.room_key(hub.queue), ghost, live.room_value(1000, lapses, [], 1 << 20))
    # ... and its dead connection's pop is still open: the first start pushed there is lost.
    swallowed: list[bytes] = []
    pop = threading.Thread(
        target=lambda: swallowed.append(
            live.sync_client().blpop([live.placed_start_key(hub.queue, ghost)], timeout=30)
        )
    )
    pop.start()
    try:
        began = time.monotonic()
        iid = _start(hub.api, seq)
        took = time.monotonic() - began
        pop.join(1)
        assert swallowed and swallowed[0] is not None, "the ghost did not pop the start"
        assert took < 10, took
        assert _worker(hub.api, iid) == alive
        # The swallowed copy, pushed again where a worker pops it, is dropped: one process.
        header, _ = live.decode_control(live.placed_start_key(hub.queue, ghost), swallowed[0][1])
        mine = live.placed_start_key(hub.queue, alive)
        client.rpush(mine, live.encode_control(mine, header))
        wait_for(
            lambda: f"dropped a start for {iid}: it was claimed already" in hub.workers[0].output(),
            what="the swallowed copy dropped",
        )
        assert hub.api.get(f"/instance/{iid}").json()["status"] == "running"
    finally:
        client.hdel(live.room_key(hub.queue), ghost)
        pop.join(30)
    _kill_all(hub.api, [iid])
