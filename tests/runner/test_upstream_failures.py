"""Issue 18 item 5, the failure semantics docs/scripts.md promises that test_upstream.py does not
reach: a downstream whose process dies while the upstream waits, the upstream's own process
killed while it waits, `stop` of a waiting upstream, `query_final` past its timeout, and a cycle
through three sequencers. Real worker, real child processes, as test_upstream.py."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.conftest import wait_for
from tests.runner.test_upstream import drive, last, load_conductor, run
from tests.sequences import sequencer_kit
from tests.sequences.sequencer_kit import Kit, setup

pytestmark = pytest.mark.django_db(transaction=True)
kit = sequencer_kit.kit  # the fixture


def pid_of(k: Kit, sid: str) -> int:
    iid = k.get(sid)["instance"]
    return wait_for(
        lambda: k.operator.get(f"/instance/{iid}").json().get("pid"), what="the sequencer's pid"
    )


def final_of(k: Kit, sid: str, run_id: str, timeout: float = 15) -> dict:
    return k.operator.get(
        f"/sequencer/{sid}/queryFinal/{run_id}", params={"timeout": timeout}
    ).json()


def test_a_downstream_whose_process_dies_while_the_upstream_waits(kit):
    """The downstream's own step kills its process: it is Killed, its run ends in Error, and
    the upstream's wait ends with that Error (its step fails), not with a hang."""
    down = kit.load("failing-script")
    up = load_conductor(kit)
    waiting = drive(down["prefix"], "submit_and_wait", [setup("crash", sleep=0.3)])
    t0 = time.monotonic()
    final = run(kit, up["id"], [waiting, setup("move")])
    assert time.monotonic() - t0 < 10
    assert final["type"] == "Error"
    assert "Sequencer was killed before the sequence finished" in final["msg"], final
    refused = last(kit, up["id"], "REFUSED")
    assert refused["response"]["type"] == "Error"
    assert refused["response"]["msg"].startswith("Sequencer was killed before the sequence")
    assert kit.get(down["id"])["state"] == "Killed"
    assert [s["status"] for s in kit.get(up["id"])["stepList"]] == ["Failure", "Pending"]
    # The upstream is unharmed: it takes the next run.
    assert run(kit, up["id"], [setup("move")])["type"] == "Completed"


def test_the_upstream_process_killed_while_it_waits_leaves_the_downstream_run_alone(kit):
    down = kit.load()
    up = load_conductor(kit)
    kit.send(
        up["id"],
        "submit",
        {"commands": [drive(down["prefix"], "submit_and_wait", [setup("wait", sleep=2)])]},
    )
    kit.wait(down["id"], lambda s: (s["stepList"] or [{}])[0].get("status") == "InFlight")
    os.kill(pid_of(kit, up["id"]), signal.SIGKILL)
    gone = kit.wait_state(up["id"], "Killed", timeout=10)
    assert gone["reason"].startswith("its process ended")
    assert kit.get(down["id"])["state"] == "Running"  # nothing was sent down on its death
    done = kit.wait(down["id"], lambda s: s["state"] == "Idle", timeout=10)
    assert done["runResult"]["type"] == "Completed"
    assert kit.send(down["id"], "goOffline") == {"type": "Ok"}  # and it still takes commands


def test_the_upstream_stopped_while_it_waits_finishes_the_wait_and_drops_the_rest(kit):
    down = kit.load()
    up = load_conductor(kit)
    waiting = drive(down["prefix"], "submit_and_wait", [setup("wait", sleep=1.5)])
    run_id = kit.send(up["id"], "submit", {"commands": [waiting, setup("move")]})["runId"]
    kit.wait_state(down["id"], "Running")
    assert kit.send(up["id"], "stop") == {"type": "Ok"}
    final = final_of(kit, up["id"], run_id)
    assert final["type"] == "Completed"
    assert [s["status"] for s in kit.get(up["id"])["stepList"]] == ["Success"]
    answer = last(kit, up["id"], "ANSWER")["answer"]
    assert answer["type"] == "Completed"
    assert kit.get(down["id"])["runResult"] == answer  # the downstream's run was not cut


def test_query_final_past_its_timeout_is_a_sequencer_timeout_and_the_run_goes_on(kit):
    down = kit.load()
    run_id = kit.send(down["id"], "submit", {"commands": [setup("wait", sleep=2.5)]})["runId"]
    up = load_conductor(kit)
    t0 = time.monotonic()
    final = run(
        kit, up["id"], [drive(down["prefix"], "query_final", run_id, kwargs={"timeout": 1})]
    )
    assert time.monotonic() - t0 < 2.5
    assert final["type"] == "Error" and "did not finish within 1 s" in final["msg"]
    refused = last(kit, up["id"], "REFUSED")
    assert refused["timeout"] and refused["code"] == "TIMEOUT"
    assert refused["response"] == {"type": "Started", "runId": run_id}
    assert final_of(kit, down["id"], run_id)["type"] == "Completed"


def test_a_cycle_through_three_sequencers_is_refused_at_once(kit):
    """A waits on B's run, B waits on C's run, C commands A: the chain travels with each signed
    command, so C's command is refused (CYCLE) although C never heard of A's run; every wait
    ends with the Error below it, within seconds, and all three are Idle again."""
    a, b, c = load_conductor(kit), load_conductor(kit), load_conductor(kit)
    innermost = [drive(a["prefix"], "go_offline")]
    middle = [drive(c["prefix"], "submit_and_wait", innermost, kwargs={"timeout": 30})]
    outer = drive(b["prefix"], "submit_and_wait", middle, kwargs={"timeout": 30})
    t0 = time.monotonic()
    final = run(kit, a["id"], [outer])
    assert time.monotonic() - t0 < 10
    assert final["type"] == "Error"
    assert last(kit, c["id"], "REFUSED")["code"] == "CYCLE"
    c_step = kit.get(c["id"])["stepList"][0]
    assert c_step["status"] == "Failure" and "cycle" in c_step["message"]
    assert last(kit, b["id"], "REFUSED")["response"]["type"] == "Error"
    for s in (a, b, c):
        assert kit.get(s["id"])["state"] == "Idle"
    # The chain was carried: C's submit names B as its upstream, with A above it.
    c_submits = [t for t in kit.transitions(c["id"]) if t["command"] == "submit"]
    assert c_submits and c_submits[-1]["upstream"]["prefix"] == b["prefix"]


def test_a_chain_deeper_than_the_bound_is_refused_not_followed(kit):
    """Nine sequencers each waiting on the next: the ninth has eight above it and may not
    command a tenth (MAX_CHAIN); the refusal unwinds every wait with an Error."""
    from runner.upstream import MAX_CHAIN

    chain = [load_conductor(kit) for _ in range(MAX_CHAIN + 1)]
    last_one = kit.load()
    steps = [drive(last_one["prefix"], "get_state"), drive(last_one["prefix"], "go_offline")]
    for seq in reversed(chain[1:]):
        steps = [drive(seq["prefix"], "submit_and_wait", steps, kwargs={"timeout": 60})]
    final = run(kit, chain[0]["id"], steps, timeout=60)
    assert final["type"] == "Error"
    deepest = chain[-1]
    assert last(kit, deepest["id"], "ANSWER")["answer"] == "Idle"  # a read is still allowed
    refused = last(kit, deepest["id"], "REFUSED")
    assert refused["code"] == "CYCLE" and f"more than {MAX_CHAIN}" in refused["error"]
    assert kit.get(last_one["id"])["state"] == "Idle"  # nothing reached it
    for seq in chain:
        assert kit.get(seq["id"])["state"] == "Idle"


@pytest.mark.timeout(240)
def test_a_downstream_whose_worker_is_lost_while_the_upstream_waits(private_hub, tmp_path):
    """The downstream's whole host vanishes: once the hub calls its worker lost, the downstream
    is Killed and the upstream (on another worker) gets its run's Error, its step failing."""
    from runner.tasks import detect_lost
    from tests.conftest import start_worker
    from tests.runner.test_drain import _name_of

    hub = private_hub()
    k = Kit(hub.api, hub.api)
    try:
        first = _name_of(hub.api, hub.workers[0])
        down = k.load()
        assert k.get(down["id"])["worker"] == first
        hub.workers.append(start_worker(tmp_path, "worker2", HUB_QUEUE=hub.queue))
        second = _name_of(hub.api, hub.workers[1])
        up = None
        for _ in range(6):  # placement prefers the emptier worker: the new one
            candidate = load_conductor(k)
            if k.get(candidate["id"])["worker"] == second:
                up = candidate
                break
        assert up is not None, "no sequencer was placed on the second worker"
        waiting = drive(down["prefix"], "submit_and_wait", [setup("wait", sleep=120)])
        run_id = k.send(up["id"], "submit", {"commands": [waiting, setup("move")]})["runId"]
        k.wait(down["id"], lambda s: (s["stepList"] or [{}])[0].get("status") == "InFlight")
        victim = hub.workers[0].proc
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()

        def killed() -> bool:
            detect_lost()  # what beat does every few seconds
            return k.get(down["id"])["state"] == "Killed"

        wait_for(
            killed,
            timeout=40,
            interval=0.5,
            what="the downstream Killed with its worker",
        )
        final = final_of(k, up["id"], run_id, timeout=20)
        assert final["type"] == "Error", final
        assert "Sequencer was killed before the sequence finished" in final["msg"]
        assert f"worker {first} stopped answering" in final["msg"]
        assert [s["status"] for s in k.get(up["id"])["stepList"]] == ["Failure", "Pending"]
        assert k.get(up["id"])["state"] == "Idle"
    finally:
        k.cleanup()
