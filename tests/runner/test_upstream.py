"""Sequencers that command sequencers (issue 18 items 1, 2, 5), end to end: an upstream
script's `sequencer.sequencer(prefix)` goes through its own supervisor, the real worker and the
downstream's actor; the downstream records the upstream; refusals fail the upstream's step."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from core.protocol import Message
from tests.conftest import wait_for
from tests.packaging import python_package, upload
from tests.sequences import sequencer_kit
from tests.sequences.sequencer_kit import Kit, setup, unique
from tests.sequences.test_api_access import session_client

pytestmark = pytest.mark.django_db(transaction=True)
kit = sequencer_kit.kit  # the fixture

# The upstream: its "drive" step calls one method of a handle on another sequencer and prints
# the answer (or the refusal) as a JSON line; it fails the step unless told not to.
CONDUCTOR = """
import asyncio
import json


def script(sequencer):
    @sequencer.on_setup("drive")
    async def drive(step):
        p = step.params
        handle = sequencer.sequencer(p["target"])
        method = getattr(handle, p.get("method", "submit_and_wait"))
        try:
            answer = await method(*p.get("args", []), **p.get("kwargs", {}))
        except sequencer.SequencerError as exc:
            timeout = isinstance(exc, sequencer.SequencerTimeout)
            line = {"step": step.id, "error": str(exc), "code": exc.code,
                    "response": exc.response, "timeout": timeout}
            print("REFUSED " + json.dumps(line), flush=True)
            if p.get("raise", True):
                raise
            return
        print("ANSWER " + json.dumps({"step": step.id, "answer": answer}), flush=True)

    @sequencer.on_setup("wait")
    async def wait(step):
        await asyncio.sleep(float(step.params.get("sleep", 1)))

    @sequencer.on_setup("move")
    async def move(step):
        pass
"""


def drive(target: str, method: str = "submit_and_wait", *args: Any, **params: Any) -> dict:
    return setup("drive", target=target, method=method, args=list(args), **params)


def conductor(k: Kit) -> str:
    if "conductor" not in k.packages:
        k.packages["conductor"] = upload(k.admin, python_package(CONDUCTOR))
    return "conductor"


def load_conductor(k: Kit, prefix: str | None = None) -> dict[str, Any]:
    conductor(k)
    comp = k.component()
    response = k.admin.post(
        f"/component/{comp}/load-script",
        json={"sequence": k.packages["conductor"], "prefix": prefix or unique("ESW.up")},
    )
    assert response.status_code == 200, response.text
    body = response.json()["sequencer"]
    k.instances.append(body["instance"])
    return body


def run(k: Kit, sid: str, steps: list[dict], timeout: float = 20) -> dict[str, Any]:
    """Submit `steps` to `sid` and wait for the run's final answer."""
    run_id = k.send(sid, "submit", {"commands": steps})["runId"]
    final = k.operator.get(
        f"/sequencer/{sid}/queryFinal/{run_id}", params={"timeout": timeout}
    ).json()
    assert final["type"] in ("Completed", "Error"), final
    return final


def printed(k: Kit, sid: str, kind: str) -> list[dict[str, Any]]:
    """The JSON lines the conductor printed with `kind` (ANSWER or REFUSED)."""
    iid = k.get(sid)["instance"]
    import httpx

    with k.operator.stream("GET", f"/instance/{iid}/stdout", timeout=1) as response:
        data = b""
        try:
            for chunk in response.iter_bytes():
                data += chunk
        except httpx.ReadTimeout:
            pass
    return [
        json.loads(line[len(kind) + 1 :])
        for line in data.decode().splitlines()
        if line.startswith(kind + " ")
    ]


def last(k: Kit, sid: str, kind: str) -> dict[str, Any]:
    return wait_for(lambda: (found := printed(k, sid, kind)) and found[-1], what=kind)


# -- item 1: the handle, each command a typed answer ----------------------------------------


def test_submit_and_wait_runs_the_downstream_and_answers_completed(kit):
    down = kit.load()
    up = load_conductor(kit)
    final = run(kit, up["id"], [drive(down["prefix"], "submit_and_wait", [setup("move")])])
    assert final["type"] == "Completed", final
    answer = last(kit, up["id"], "ANSWER")["answer"]
    assert answer["type"] == "Completed" and answer["runId"]
    after = kit.get(down["id"])
    assert after["state"] == "Idle" and after["runResult"] == answer
    assert [s["status"] for s in after["stepList"]] == ["Success"]


def test_every_handle_command_answers_the_apis_typed_response(kit):
    down = kit.load()
    d = down["prefix"]
    up = load_conductor(kit)
    steps = [
        drive(d, "get_state"),
        drive(d, "load_sequence", [setup("wait", sleep=30), setup("move")]),
        drive(d, "add", [setup("move")]),
        drive(d, "start_sequence"),
        drive(d, "pause"),
        drive(d, "resume"),
        drive(d, "diagnostic_mode", None, "engineering"),
        drive(d, "operations_mode"),
        drive(d, "stop"),
        drive(d, "get_state"),
    ]
    assert run(kit, up["id"], steps)["type"] == "Completed"
    answers = [a["answer"] for a in printed(kit, up["id"], "ANSWER")]
    assert answers[0] == "Idle"
    assert [a["type"] for a in answers[1:9]] == [
        "Ok",
        "Ok",
        "Started",
        "Ok",
        "Ok",
        "Ok",
        "Ok",
        "Ok",
    ]
    assert answers[9] in ("Running", "Idle")  # stop lets the in-flight 30 s step finish
    kit.send(down["id"], "shutdown")


def test_submit_query_and_query_final_and_offline_online(kit):
    down = kit.load()
    d = down["prefix"]
    up = load_conductor(kit)
    assert run(kit, up["id"], [drive(d, "submit", [setup("move")])])["type"] == "Completed"
    run_id = last(kit, up["id"], "ANSWER")["answer"]["runId"]
    steps = [
        drive(d, "query_final", run_id, kwargs={"timeout": 5}),
        drive(d, "query", run_id),
        drive(d, "query", "no-such-run"),
        drive(d, "go_offline"),
        drive(d, "get_state"),
        drive(d, "go_online"),
    ]
    assert run(kit, up["id"], steps)["type"] == "Completed"
    answers = [a["answer"] for a in printed(kit, up["id"], "ANSWER")][1:]
    assert answers[0] == {"type": "Completed", "runId": run_id}
    assert answers[1] == {"type": "Completed", "runId": run_id}
    assert answers[2]["type"] == "Invalid"  # a plain query never raises
    assert answers[3] == {"type": "Ok"} and answers[4] == "Offline" and answers[5] == {"type": "Ok"}
    assert kit.get(down["id"])["state"] == "Idle"


# -- item 2: recorded and visible -------------------------------------------------------------


def test_the_downstream_history_and_the_audit_name_the_upstream_run_and_step(kit, tmp_path):
    from accounts.models import AuditEntry

    down = kit.load()
    up = load_conductor(kit)
    final = run(kit, up["id"], [drive(down["prefix"], "submit_and_wait", [setup("move")])])
    up_step = kit.get(up["id"])["stepList"][0]["id"]
    history = kit.transitions(down["id"])
    by_upstream = [t for t in history if t["command"] == "submit"]
    assert by_upstream, history
    for t in by_upstream:
        assert t["user"] is None
        assert t["upstream"] == {
            "id": up["id"],
            "prefix": up["prefix"],
            "runId": final["runId"],
            "step": up_step,
        }
    entry = wait_for(
        lambda: (
            AuditEntry.objects.filter(action="sequencer.submitAndWait", target=down["id"])
            .order_by("-id")
            .first()
        ),
        what="the audit entry",
    )
    assert entry.actor == up["prefix"] and entry.via == "sequencer" and entry.user is None
    assert entry.outcome == "ok" and entry.detail["upstreamId"] == up["id"]
    # The links: the downstream names its upstream, the upstream lists its downstream.
    links = kit.operator.get(f"/sequencer/{down['id']}").json()
    assert links["upstream"] == up["id"]
    page = kit.operator.get(f"/sequencer/{up['id']}/links").json()
    assert page["downstreams"] == [{"id": down["id"], "prefix": down["prefix"], "state": "Idle"}]
    back = kit.operator.get(f"/sequencer/{down['id']}/links").json()
    assert back["upstream"]["prefix"] == up["prefix"] and back["downstreams"] == []
    # The Python client reads the same.
    from client.sync import HostClient

    base = str(kit.operator.base_url).removesuffix("/api/v1").removesuffix("/api/v1/")
    token = kit.operator.headers["Authorization"].removeprefix("Bearer ")
    with HostClient(base, token=token) as host:
        seqr = host.get_sequencer_client(up["prefix"])
        assert seqr.get_links()["downstreams"][0]["prefix"] == down["prefix"]
        theirs = host.get_sequencer_client(down["id"]).get_transitions()
        assert any((t["upstream"] or {}).get("prefix") == up["prefix"] for t in theirs)
    # And `si`: the links table, and BY naming the upstream in the history.
    from tests.client.conftest import Si

    si = Si(tmp_path, str(kit.operator.base_url), token)
    links_out = si("sequencer", "links", up["prefix"]).stdout.decode()
    assert "downstream" in links_out and down["prefix"] in links_out
    history_out = si("sequencer", "transitions", down["id"]).stdout.decode()
    assert "BY" in history_out.splitlines()[0] and up["prefix"] in history_out


def test_a_refusal_from_the_downstream_fails_the_upstreams_step_with_its_message(kit):
    from accounts.models import AuditEntry

    down = kit.load()
    kit.send(down["id"], "submit", {"commands": [setup("wait", sleep=30)]})
    kit.wait_state(down["id"], "Running")
    up = load_conductor(kit)
    final = run(kit, up["id"], [drive(down["prefix"], "go_offline"), setup("move")])
    assert final["type"] == "Error"
    failed = kit.get(up["id"])["stepList"]
    assert [s["status"] for s in failed] == ["Failure", "Pending"]
    msg = "Sequencer can not accept 'GoOffline' message in 'Running' state"
    assert msg in failed[0]["message"] and down["prefix"] in failed[0]["message"]
    refused = last(kit, up["id"], "REFUSED")
    assert refused["response"]["type"] == "Unhandled" and refused["response"]["state"] == "Running"
    assert kit.get(down["id"])["state"] == "Running"  # nothing changed there
    wait_for(
        lambda: AuditEntry.objects.filter(
            action="sequencer.goOffline", target=down["id"], outcome="refused"
        ).exists(),
        what="the refusal's audit entry",
    )
    kit.send(down["id"], "shutdown")


def test_the_upstream_page_lists_its_downstream_with_its_state(kit, hub, people):
    down = kit.load()
    up = load_conductor(kit)
    run(kit, up["id"], [drive(down["prefix"], "go_offline")])
    browser = session_client(hub, people["viewer"])
    try:
        html = browser.get(f"/sequencers/{up['id']}/").text
        assert 'id="sq-links"' in html and down["prefix"] in html
        assert 'data-link-state="Offline"' in html
        html = browser.get(f"/sequencers/{down['id']}/").text
        assert up["prefix"] in html and "Upstream" in html
        assert f"{up['prefix']} (run" in html  # the history names it where a user would be
    finally:
        browser.close()


# -- item 5: failure semantics ------------------------------------------------------------------


def test_missing_killed_and_offline_downstreams_are_typed_errors_in_the_script(kit):
    killed = kit.load()
    kit.send(killed["id"], "shutdown")
    offline = kit.load()
    kit.send(offline["id"], "goOffline")
    up = load_conductor(kit)
    steps = [
        drive("NO.such-sequencer", "submit_and_wait", [setup("move")], **{"raise": False}),
        drive(killed["prefix"], "submit_and_wait", [setup("move")], **{"raise": False}),
    ]
    steps.append(drive(offline["id"], "submit", [setup("move")], **{"raise": False}))
    steps.append(drive(up["prefix"], "get_state", **{"raise": False}))  # a read of itself
    steps.append(drive(up["prefix"], "go_offline", **{"raise": False}))  # itself: a cycle
    steps.append(drive(offline["prefix"], "command", "shutdown", **{"raise": False}))
    steps.append(drive(offline["prefix"], "command", "nonsense", **{"raise": False}))
    steps.append(drive(offline["prefix"], "add", "not a list", **{"raise": False}))
    final = run(kit, up["id"], steps)
    assert final["type"] == "Completed", (final, kit.get(up["id"])["stepList"])
    refused = printed(kit, up["id"], "REFUSED")
    assert refused[0]["code"] == "NOT_FOUND" and "NO.such-sequencer" in refused[0]["error"]
    assert refused[1]["response"]["type"] == "Unhandled"
    assert refused[1]["response"]["state"] == "Killed"
    assert refused[2]["response"]["state"] == "Offline"
    assert refused[3]["code"] == "CYCLE"
    assert refused[4]["code"] == "FORBIDDEN"
    assert refused[5]["code"] == "NOT_FOUND"
    assert refused[6]["code"] == "INVALID_REQUEST"
    assert printed(kit, up["id"], "ANSWER")[-1]["answer"] == "Running"
    # Neither sequencer suffered: the upstream is Idle and takes more, the others unchanged.
    assert kit.get(up["id"])["state"] == "Idle"
    assert kit.get(offline["id"])["state"] == "Offline"


def test_a_downstream_killed_while_the_upstream_waits_fails_its_step_with_the_error(kit):
    down = kit.load()
    up = load_conductor(kit)
    waiting = drive(down["prefix"], "submit_and_wait", [setup("wait", sleep=30)])
    run_id = kit.send(up["id"], "submit", {"commands": [waiting]})["runId"]
    kit.wait(down["id"], lambda s: (s["stepList"] or [{}])[0].get("status") == "InFlight")
    assert kit.send(down["id"], "shutdown") == {"type": "Ok"}
    final = kit.operator.get(
        f"/sequencer/{up['id']}/queryFinal/{run_id}", params={"timeout": 15}
    ).json()
    assert final["type"] == "Error" and "before the sequence finished" in final["msg"]
    refused = last(kit, up["id"], "REFUSED")
    assert refused["response"]["type"] == "Error"
    assert kit.get(up["id"])["state"] == "Idle"


def test_submit_and_wait_timing_out_fails_the_step_and_the_downstream_run_goes_on(kit):
    down = kit.load()
    up = load_conductor(kit)
    t0 = time.monotonic()
    final = run(
        kit,
        up["id"],
        [drive(down["prefix"], "submit_and_wait", [setup("wait", sleep=3)], kwargs={"timeout": 1})],
    )
    assert time.monotonic() - t0 < 3
    assert final["type"] == "Error" and "did not finish" in final["msg"]
    refused = last(kit, up["id"], "REFUSED")
    assert refused["timeout"] and refused["code"] == "TIMEOUT"
    assert refused["response"]["type"] == "Started"
    assert kit.get(down["id"])["state"] == "Running"
    done = kit.wait(down["id"], lambda s: s["runResult"] is not None, timeout=10)
    assert done["runResult"]["type"] == "Completed"


def test_the_upstream_shut_down_or_aborted_while_it_waits(kit):
    down = kit.load()
    up = load_conductor(kit)
    # Abort: its pending steps go; the in-flight one (the wait) ends with the downstream's run.
    waiting = drive(down["prefix"], "submit_and_wait", [setup("wait", sleep=2)])
    run_id = kit.send(up["id"], "submit", {"commands": [waiting, setup("move")]})["runId"]
    kit.wait_state(down["id"], "Running")
    assert kit.send(up["id"], "abortSequence") == {"type": "Ok"}
    final = kit.operator.get(
        f"/sequencer/{up['id']}/queryFinal/{run_id}", params={"timeout": 15}
    ).json()
    assert final["type"] == "Completed"
    assert [s["status"] for s in kit.get(up["id"])["stepList"]] == ["Success"]
    assert kit.get(down["id"])["runResult"]["type"] == "Completed"
    # Shutdown: the upstream goes at once; the downstream's run goes on to its end.
    kit.send(
        up["id"],
        "submit",
        {"commands": [drive(down["prefix"], "submit_and_wait", [setup("wait", sleep=2)])]},
    )
    kit.wait(down["id"], lambda s: s["state"] == "Running", what="the second run")
    t0 = time.monotonic()
    assert kit.send(up["id"], "shutdown") == {"type": "Ok"}
    assert time.monotonic() - t0 < 5
    assert kit.get(up["id"])["state"] == "Killed"
    assert kit.get(down["id"])["state"] == "Running"
    done = kit.wait(down["id"], lambda s: s["state"] == "Idle", timeout=10)
    assert done["runResult"]["type"] == "Completed"
    kit.send(down["id"], "submit", {"commands": [setup("move")]})  # still takes commands


def test_two_upstreams_on_one_downstream_the_second_gets_unhandled(kit):
    down = kit.load()
    first, second = load_conductor(kit), load_conductor(kit)
    first_run = kit.send(
        first["id"],
        "submit",
        {"commands": [drive(down["prefix"], "submit_and_wait", [setup("wait", sleep=2)])]},
    )["runId"]
    kit.wait_state(down["id"], "Running")
    final = run(kit, second["id"], [drive(down["prefix"], "submit_and_wait", [setup("move")])])
    assert final["type"] == "Error" and "in 'Running' state" in final["msg"]
    assert last(kit, second["id"], "REFUSED")["response"]["type"] == "Unhandled"
    first_final = kit.operator.get(
        f"/sequencer/{first['id']}/queryFinal/{first_run}", params={"timeout": 15}
    ).json()
    assert first_final["type"] == "Completed"
    submits = [t for t in kit.transitions(down["id"]) if t["command"] == "submit"]
    assert {t["upstream"]["id"] for t in submits} == {first["id"]}


def test_a_cycle_is_refused_not_a_deadlock(kit):
    """A's step waits on B's run; B's step commands A back: refused at once with CYCLE, so
    B's run fails, A's step fails with B's Error, and both are free again within seconds."""
    a, b = load_conductor(kit), load_conductor(kit)
    inner = [drive(a["prefix"], "query_final", "whatever", kwargs={"timeout": 30})]
    t0 = time.monotonic()
    outer = drive(b["prefix"], "submit_and_wait", inner, kwargs={"timeout": 30})
    final = run(kit, a["id"], [outer])
    assert time.monotonic() - t0 < 10
    assert final["type"] == "Error"
    b_failed = kit.get(b["id"])["stepList"][0]
    assert b_failed["status"] == "Failure" and "cycle" in b_failed["message"]
    assert last(kit, b["id"], "REFUSED")["code"] == "CYCLE"
    assert kit.get(a["id"])["state"] == "Idle" and kit.get(b["id"])["state"] == "Idle"
    # Without the chain (a run a user started), B may command A: no false cycle.
    assert run(kit, b["id"], [drive(a["prefix"], "get_state")])["type"] == "Completed"
    assert run(kit, b["id"], [drive(a["prefix"], "go_offline")])["type"] == "Completed"
    assert kit.get(a["id"])["state"] == "Offline"


def test_a_flood_of_requests_is_bounded_and_the_supervisor_survives(kit):
    """Hostile script: a hundred requests at once; the worker answers what it can, refuses
    past its bound, and both sequencers keep working."""
    flood = """
import asyncio
import json


def script(sequencer):
    @sequencer.on_setup("flood")
    async def flood(step):
        handle = sequencer.sequencer(step.params["target"])
        results = await asyncio.gather(
            *[handle.get_state() for _ in range(100)], return_exceptions=True
        )
        codes = sorted({getattr(r, "code", None) or "ok" for r in results})
        print("CODES " + json.dumps(codes), flush=True)
"""
    seq_id = upload(kit.admin, python_package(flood))
    comp = kit.component()
    up = kit.admin.post(
        f"/component/{comp}/load-script", json={"sequence": seq_id, "prefix": unique("ESW.fl")}
    ).json()["sequencer"]
    kit.instances.append(up["instance"])
    down = kit.load()
    assert run(kit, up["id"], [setup("flood", target=down["prefix"])])["type"] == "Completed"
    codes = last(kit, up["id"], "CODES")
    assert "ok" in codes and set(codes) <= {"ok", "TOO_MANY"}
    assert kit.send(down["id"], "goOffline") == {"type": "Ok"}


def test_a_waiting_upstream_does_not_block_its_own_commands(kit):
    """While its step waits on a downstream, the upstream still answers pause and queries."""
    down = kit.load()
    up = load_conductor(kit)
    kit.send(
        up["id"],
        "submit",
        {
            "commands": [
                drive(down["prefix"], "submit_and_wait", [setup("wait", sleep=2)]),
                setup("move"),
            ]
        },
    )
    kit.wait_state(down["id"], "Running")
    results: dict[str, Any] = {}

    def pause() -> None:
        results["pause"] = kit.send(up["id"], "pause")

    t = threading.Thread(target=pause)
    t.start()
    t.join(5)
    assert results["pause"] == {"type": "Ok"}
    kit.wait(up["id"], lambda s: s["stepList"][0]["status"] == "Success", timeout=10)
    assert kit.get(up["id"])["stepList"][1]["status"] == "Pending"  # paused before it
    kit.send(up["id"], "resume")
    kit.wait_state(up["id"], "Idle")


# -- whichever workers they run on --------------------------------------------------------------


def test_an_upstream_commands_a_downstream_on_another_worker(private_hub, tmp_path):
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
        steps = [
            drive(down["prefix"], "submit_and_wait", [setup("move")]),
            drive(down["prefix"], "go_offline"),
        ]
        final = run(k, up["id"], steps)
        assert final["type"] == "Completed", k.get(up["id"])["stepList"]
        assert k.get(down["id"])["state"] == "Offline"
        offline = [t for t in k.transitions(down["id"]) if t["command"] == "goOffline"]
        assert offline and offline[-1]["upstream"]["prefix"] == up["prefix"]
    finally:
        k.cleanup()


HOSTILE = """
import json


def script(sequencer):
    @sequencer.on_setup("garbage")
    async def garbage(step):
        # Straight onto the control socket, past the handle: what hostile code could send.
        runtime = sequencer._runtime
        for junk in [
            {"req": 1001, "command": [1], "target": "x"},
            {"req": 1002, "command": None},
            {"req": 1003, "command": "getState", "target": {"a": 1}},
            {"req": 1004, "command": "submitAndWait", "target": step.params["target"],
             "body": {"commands": []}, "timeout": "forever"},
            {"req": 1005, "command": "x" * 5000, "target": "y" * 5000},
            "not even a dict",
        ]:
            runtime.control.send(SEQ_REQUEST, junk)
        answers = []
        for junk in [
            {"command": "queryFinal", "target": step.params["target"], "runId": 7},
            {"command": "submit", "target": step.params["target"], "body": {"commands": 5}},
        ]:
            answers.append(await runtime.request_sequencer(junk))
        print("JUNK " + json.dumps([a.get("code") for a in answers]), flush=True)
        state = await sequencer.sequencer(step.params["target"]).get_state()
        print("STATE " + json.dumps(state), flush=True)
"""


def test_garbage_requests_are_refused_and_harm_neither_sequencer(kit):
    from accounts.models import AuditEntry

    hostile = HOSTILE.replace("SEQ_REQUEST", str(int(Message.SEQ_REQUEST)))
    seq_id = upload(kit.admin, python_package(hostile))
    comp = kit.component()
    up = kit.admin.post(
        f"/component/{comp}/load-script", json={"sequence": seq_id, "prefix": unique("ESW.bad")}
    ).json()["sequencer"]
    kit.instances.append(up["instance"])
    down = kit.load()
    final = run(kit, up["id"], [setup("garbage", target=down["prefix"])])
    assert final["type"] == "Completed", kit.get(up["id"])["stepList"]
    assert last(kit, up["id"], "JUNK") == ["INVALID_REQUEST", "INVALID_REQUEST"]
    assert last(kit, up["id"], "STATE") == "Idle"
    assert kit.get(down["id"])["state"] == "Idle" and kit.get(up["id"])["state"] == "Idle"
    actions = set(AuditEntry.objects.filter(actor=up["prefix"]).values_list("action", flat=True))
    assert actions <= {"sequencer.request", "sequencer.submitAndWait", "sequencer.submit"}
    assert kit.send(down["id"], "goOffline") == {"type": "Ok"}  # the worker still serves
