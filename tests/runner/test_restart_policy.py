"""Restart policies (`restart` in the start body): a lost or failed instance is started again
on a worker that lives, linked both ways to the one it replaces, once, at most `max` times.
Real workers and children; beat's `detect_lost` is called here as beat would call it."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import psutil
import pytest

from core.protocol import DRAIN_DEADLINE, WORKER_SHUTDOWN
from sequences.errors import HubError
from sequences.restart_policy import delay, parse_restart, wants_restart
from tests.conftest import start_worker, stop_process, wait_for
from tests.packaging import python_package, upload

pytestmark = pytest.mark.django_db(transaction=True)

FOREVER = """
import asyncio
async def run(context, input, *args):
    while True:
        print("alive", flush=True)
        await asyncio.sleep(0.2)
"""

FAILS = "def run(context, input):\n    raise RuntimeError('broken on purpose')\n"

ON_FAILURE = {"policy": "on-failure", "max": 2, "backoff": 0}


def _start(api: httpx.Client, seq: str, body: dict) -> str:
    response = api.post(f"/sequence/{seq}/start", json=body)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def _info(api: httpx.Client, iid: str) -> dict:
    response = api.get(f"/instance/{iid}")
    assert response.status_code == 200, response.text
    return response.json()


def _beat_until(predicate, timeout: float, what: str):
    """Run detect_lost as beat does (every 5 s there; more often here) until `predicate`."""
    from runner.tasks import detect_lost

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        detect_lost()
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- the policy, as decisions ---------------------------------------------------------------


def test_the_policy_is_parsed_with_defaults_and_caps():
    assert parse_restart(None).policy == "never"
    assert parse_restart({"policy": "never", "max": 9}).max == 0
    policy = parse_restart({"policy": "on-failure"})
    assert (policy.policy, policy.max, policy.backoff) == ("on-failure", 3, 1.0)
    assert parse_restart({"policy": "always", "max": 100, "backoff": 2.5}).backoff == 2.5
    for bad, field in [
        ("always", "restart must be"),
        ({"policy": "sometimes"}, "restart.policy"),
        ({"policy": "always", "max": 101}, "restart.max"),
        ({"policy": "always", "max": True}, "restart.max"),
        ({"policy": "always", "max": 1.5}, "restart.max"),
        ({"policy": "always", "backoff": -1}, "restart.backoff"),
        ({"policy": "always", "backoff": 1e999}, "restart.backoff"),
        ({"policy": "always", "tries": 3}, "restart.tries"),
    ]:
        with pytest.raises(HubError) as caught:
            parse_restart(bad)
        assert caught.value.code == "INVALID_CONFIG"
        assert field in caught.value.message, (bad, caught.value.message)


def test_which_ends_are_restarted_under_each_policy():
    shutdown = WORKER_SHUTDOWN.reason
    drained = DRAIN_DEADLINE.format(worker="w")
    cases = [
        # status, exit code, reason: never, on-failure, always
        ("lost", None, "worker w stopped answering", (False, True, True)),
        ("errored", 23, "Failed while running", (False, True, True)),
        ("completed", 0, "Instance completed", (False, False, True)),
        ("completed", 137, shutdown, (False, True, True)),
        ("completed", 138, f"Instance stopped: {drained}", (False, True, True)),
        ("completed", 137, "Instance killed", (False, False, False)),  # an operator's kill
        ("completed", 138, "Instance stopped", (False, False, False)),  # an operator's stop
    ]
    policies = ("never", "on-failure", "always")
    for status, code, reason, expected in cases:
        got = tuple(wants_restart(p, status, code, reason) for p in policies)
        assert got == expected, (status, reason)
    assert [delay(1, n) for n in range(4)] == [1, 2, 4, 8]
    assert delay(1, 40) == 300


def test_a_malformed_restart_is_refused_naming_the_field(admin_api):
    seq = upload(admin_api, python_package(FOREVER))
    for body, field in [
        ({"restart": {"policy": "sometimes"}}, "restart.policy"),
        ({"restart": {"policy": "always", "max": -1}}, "restart.max"),
        ({"restart": {"policy": "always", "backoff": "soon"}}, "restart.backoff"),
        ({"restart": ["always"]}, "restart must be"),
    ]:
        response = admin_api.post(f"/sequence/{seq}/start", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "INVALID_CONFIG"
        assert field in response.json()["error"]


# -- on real workers -------------------------------------------------------------------------


def test_a_worker_killed_with_its_process_group_has_its_instance_restarted_on_another(
    private_hub, tmp_path, settings
):
    from accounts.models import AuditEntry
    from sequences.models import Worker

    hub = private_hub()
    settings.CELERY_TASK_DEFAULT_QUEUE = hub.queue  # beat's restarts go to the hub's queue
    seq = upload(hub.api, python_package(FOREVER))
    plain = _start(hub.api, seq, {})
    old = _start(hub.api, seq, {"restart": ON_FAILURE, "args": ["a"]})
    # The worker is recorded by the worker's writer, just after the start answered.
    first = wait_for(lambda: (d := _info(hub.api, old))["worker"] and d, what="the worker recorded")
    assert first["restart"] == {**ON_FAILURE, "backoff": 0.0, "count": 0}
    worker_a = first["worker"]
    # A second worker, started after: the instance runs on the first.
    hub.workers.append(start_worker(tmp_path, "worker2", HUB_QUEUE=hub.queue))
    wait_for(
        lambda: Worker.objects.filter(stopped__isnull=True).exclude(name=worker_a).exists(),
        what="the second worker to register",
    )
    victim = hub.workers[0].proc
    processes = psutil.Process(victim.pid).children(recursive=True)
    os.killpg(victim.pid, signal.SIGKILL)  # the host vanishes: worker, fork server, children
    killed_at = time.monotonic()
    victim.wait()

    copy = _beat_until(
        lambda: _info(hub.api, old).get("restartedAs"), timeout=40, what="the restart"
    )
    lost = _info(hub.api, old)
    assert lost["status"] == "lost"
    assert "stopped answering" in lost["terminated"]["reason"]
    # HUB_LOST_AFTER is 6 s in the tests; beat every 5 s, a start, and a loaded machine.
    assert time.monotonic() - killed_at < 30
    assert _info(hub.api, plain)["status"] == "lost"  # no policy: lost and left
    assert not _info(hub.api, plain)["restartedAs"]
    new = wait_for(
        lambda: (data := _info(hub.api, copy))["status"] == "running" and data,
        timeout=30,
        what="the copy running",
    )
    assert new["restartedFrom"] == old
    assert new["worker"] and new["worker"] != worker_a
    assert new["args"] == ["a"]
    assert new["restart"]["count"] == 1 and new["restart"]["policy"] == "on-failure"
    assert b"alive" in _read_some(hub.api, copy)
    assert not [p for p in processes if _alive(p)]
    # The loss and the restart are in the audit log, by the hub.
    # (Recorded by the beat that marked the loss, which may still be finishing its pass.)
    loss = wait_for(
        AuditEntry.objects.filter(action="worker.lost", target=worker_a).first,
        timeout=15,
        what="the worker.lost entry",
    )
    assert loss.actor == "hub" and loss.via == "hub"
    assert set(loss.detail["ended"]) == {old, plain}
    restart = AuditEntry.objects.get(action="instance.restart", target=copy)
    assert restart.detail["restartedFrom"] == old and restart.detail["count"] == 1
    assert Worker.objects.get(name=worker_a).stopped is not None
    # Once: more beats make no second copy.
    for _ in range(3):
        _beat_until(lambda: True, 1, "a beat")
    assert _info(hub.api, copy)["restartedAs"] is None
    hub.api.post(f"/instance/{copy}/_kill", json={})


def _read_some(api: httpx.Client, iid: str) -> bytes:
    with api.stream("GET", f"/instance/{iid}/stdout", timeout=30) as stream:
        for piece in stream.iter_raw():
            if piece:
                return piece
    return b""


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_failing_instance_is_restarted_at_most_max_times(private_hub, settings):
    hub = private_hub()
    settings.CELERY_TASK_DEFAULT_QUEUE = hub.queue
    seq = upload(hub.api, python_package(FAILS))
    first = _start(hub.api, seq, {"restart": ON_FAILURE})
    chain = [first]

    def next_link() -> str | None:
        data = _info(hub.api, chain[-1])
        if data["status"] == "errored" and data["restartedAs"]:
            chain.append(data["restartedAs"])
        return len(chain) == 3 and _info(hub.api, chain[-1])["status"] == "errored"

    _beat_until(next_link, timeout=60, what="two restarts")
    assert [_info(hub.api, i)["restart"]["count"] for i in chain] == [0, 1, 2]
    assert [_info(hub.api, i)["restartedFrom"] for i in chain] == [None, chain[0], chain[1]]
    # The third failure is past `max`: the chain ends there.
    for _ in range(3):
        _beat_until(lambda: True, 1, "a beat")
    assert _info(hub.api, chain[-1])["restartedAs"] is None


def test_a_completed_instance_is_restarted_only_under_always(private_hub, settings):
    hub = private_hub()
    settings.CELERY_TASK_DEFAULT_QUEUE = hub.queue
    seq = upload(hub.api, python_package("def run(context, input):\n    return 'done'\n"))
    always = _start(hub.api, seq, {"restart": {"policy": "always", "max": 1, "backoff": 0}})
    on_failure = _start(hub.api, seq, {"restart": ON_FAILURE})
    wait_for(
        lambda: all(_info(hub.api, i)["status"] == "completed" for i in (always, on_failure)),
        what="both completed",
    )
    copy = _beat_until(lambda: _info(hub.api, always)["restartedAs"], 20, "the restart")
    wait_for(lambda: _info(hub.api, copy)["status"] == "completed", what="the copy completed")
    assert _info(hub.api, on_failure)["restartedAs"] is None


def test_an_instance_is_restarted_once_however_many_beats_race(private_hub, settings):
    """Several beat processes at once: the one-to-one link lets one copy be stored."""
    from django.db import connection

    from sequences import restarts
    from sequences.models import Instance

    hub = private_hub()
    seq = upload(hub.api, python_package(FAILS))
    old = _start(hub.api, seq, {"restart": {"policy": "on-failure", "max": 3, "backoff": 0}})
    wait_for(lambda: _info(hub.api, old)["status"] == "errored", what="errored")
    row = Instance.objects.select_related("sequence", "created_by").get(pk=old)
    made: list[object] = []
    barrier = threading.Barrier(4)

    def race() -> None:
        try:
            barrier.wait()
            made.append(restarts._make_copy(row))
        finally:
            connection.close()

    threads = [threading.Thread(target=race) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    copies = [m for m in made if m is not None]
    assert len(copies) == 1, made
    assert Instance.objects.filter(restarted_from_id=old).count() == 1
    Instance.objects.filter(restarted_from_id=old).delete()  # never pushed: no worker waits


def test_instances_ended_by_a_worker_shutdown_say_so_and_are_restarted_elsewhere(
    private_hub, tmp_path, settings
):
    from accounts.models import AuditEntry
    from sequences.models import Worker

    hub = private_hub()
    settings.CELERY_TASK_DEFAULT_QUEUE = hub.queue
    seq = upload(hub.api, python_package(FOREVER))
    kept = _start(hub.api, seq, {"restart": ON_FAILURE})
    plain = _start(hub.api, seq, {})
    worker_a = _info(hub.api, kept)["worker"]
    hub.workers.append(start_worker(tmp_path, "worker2", HUB_QUEUE=hub.queue))
    wait_for(
        lambda: Worker.objects.filter(stopped__isnull=True).exclude(name=worker_a).exists(),
        what="the second worker to register",
    )
    stop_process(hub.workers[0].proc)  # SIGTERM: an orderly stop, as in a hub restart
    for iid in (kept, plain):
        data = _info(hub.api, iid)
        assert data["status"] == "completed", data
        assert data["terminated"] == {"exitcode": 137, "reason": WORKER_SHUTDOWN.reason}
        # Killed, by the worker's shutdown: not a user's request (issue 17, item 1).
        assert (data["outcome"], data["endedBy"]["kind"]) == ("killed", "shutdown"), data
    entry = AuditEntry.objects.get(action="worker.shutdown", target=worker_a)
    assert entry.actor == "hub" and set(entry.detail["ended"]) == {kept, plain}
    assert entry.detail["instances"] == 2
    assert Worker.objects.get(name=worker_a).stopped is not None  # gone from the lists now
    copy = _beat_until(lambda: _info(hub.api, kept)["restartedAs"], 20, "the restart")
    wait_for(lambda: _info(hub.api, copy)["status"] == "running", timeout=30, what="running")
    assert _info(hub.api, copy)["worker"] != worker_a
    assert _info(hub.api, plain)["restartedAs"] is None
    hub.api.post(f"/instance/{copy}/_kill", json={})
