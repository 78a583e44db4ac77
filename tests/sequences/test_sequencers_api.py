"""Sequencers and sequence components through the REST API, end to end: a real hub (daphne and
a Celery worker), real Redis, real script processes running examples/darknight and
examples/failing-script. The pure tests (test_statemachine.py) cover the table exhaustively;
these check representative cases of each command in each state, for real."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

from sequences.statemachine import ACCEPTED_IN, CommandName, State
from tests.conftest import wait_for
from tests.packaging import python_package, upload
from tests.sequences import sequencer_kit
from tests.sequences.sequencer_kit import Kit, observe, setup, unique

pytestmark = pytest.mark.django_db(transaction=True)
kit = sequencer_kit.kit  # the fixture

C = CommandName
NOW = "2026-01-01T22:00:00+00:00"


def body_for(command: CommandName, step_id: str = "no-such-step") -> Any:
    """A valid body for any command."""
    commands = [setup("move", sleep=0)]
    if command in (C.LOAD_SEQUENCE, C.SUBMIT, C.ADD, C.PREPEND):
        return {"commands": commands}
    if command in (C.REPLACE, C.INSERT_AFTER):
        return {"id": step_id, "commands": commands}
    if command in (C.DELETE, C.ADD_BREAKPOINT, C.REMOVE_BREAKPOINT):
        return {"id": step_id}
    if command is C.DIAGNOSTIC_MODE:
        return {"startTime": NOW, "hint": "engineering"}
    return None


def paused_running(kit: Kit, script: str = "darknight") -> tuple[str, list[dict]]:
    """A Running sequencer that waits at a breakpoint before its second step (no step in
    flight, so hooks answer at once)."""
    sid = kit.load(script)["id"]
    first, second = (setup("move", sleep=0), setup("move", sleep=0))
    if script == "failing-script":
        first, second = setup("ok", sleep=0), setup("ok", sleep=0)
    kit.send(sid, "loadSequence", {"commands": [first, second, second]})
    steps = kit.get(sid)["stepList"]
    kit.send(sid, "addBreakpoint", {"id": steps[1]["id"]})
    kit.send(sid, "startSequence")
    current = kit.wait(sid, lambda s: s["stepList"][0]["status"] == "Success", what="step 1")
    assert current["state"] == "Running"
    return sid, current["stepList"]


def in_state(kit: Kit, state: str, script: str = "darknight") -> str:
    """A sequencer in `state` (Running: paused before its second step)."""
    if state == "Running":
        return paused_running(kit, script)[0]
    sid = kit.load(script)["id"]
    if state == "Loaded":
        kit.send(sid, "loadSequence", {"commands": [setup("move"), observe("expose")]})
    elif state == "Offline":
        kit.send(sid, "goOffline")
    elif state == "Killed":
        kit.send(sid, "shutdown")
    assert kit.get(sid)["state"] == state
    return sid


def query_final(kit: Kit, sid: str, run_id: str, timeout: float = 15) -> dict[str, Any]:
    response = kit.operator.get(
        f"/sequencer/{sid}/queryFinal/{run_id}", params={"timeout": timeout}
    )
    assert response.status_code == 200, response.text
    return response.json()


# -- reading -------------------------------------------------------------------------------


def test_a_new_sequencer_is_idle_without_a_sequence_and_found_by_id_or_prefix(kit):
    prefix = unique("ESW.night")
    loaded = kit.load(prefix=prefix)
    assert loaded["state"] == "Idle"
    assert loaded["stepList"] is None
    assert loaded["isAvailable"] is True and loaded["isOnline"] is True
    assert loaded["script"]["name"] == "darknight"
    assert loaded["component"].startswith("TST.comp")
    assert set(loaded["handlers"]["setup"]) >= {"slew", "configure", "move", "wait"}
    by_prefix = kit.get(prefix)
    assert by_prefix["id"] == loaded["id"] == kit.get(loaded["id"])["id"]
    listed = kit.operator.get("/sequencers").json()
    assert loaded["id"] in [s["id"] for s in listed]
    missing = kit.operator.get("/sequencer/NO.such")
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"


def test_roles_viewer_reads_operator_commands_admin_manages_components(kit, hub, people):
    sid = kit.load()["id"]
    viewer = httpx.Client(base_url=hub.api, headers=people["viewer"].headers(), timeout=30)
    with viewer:
        assert viewer.get(f"/sequencer/{sid}").status_code == 200
        assert viewer.get("/sequencers").status_code == 200
        assert viewer.get("/components").status_code == 200
        denied = viewer.post(f"/sequencer/{sid}/goOffline")
        assert denied.status_code == 403 and denied.json()["code"] == "NOT_AUTHORIZED"
    assert kit.get(sid)["state"] == "Idle"
    for path, body in [
        ("/components", {"name": unique("TST.x")}),
        (f"/component/{kit.components[0]}/unload-script", None),
        (f"/component/{kit.components[0]}/restart", None),
        (f"/component/{kit.components[0]}/load-script", {"sequence": "x", "prefix": "A.b"}),
    ]:
        response = kit.operator.post(path, json=body)
        assert response.status_code == 403, (path, response.text)
    anonymous = httpx.post(f"{hub.api}/sequencer/{sid}/shutdown", timeout=10)
    assert anonymous.status_code == 401


def test_bad_bodies_are_refused_with_400_and_change_nothing(kit):
    sid = kit.load()["id"]
    for command, body in [
        ("loadSequence", {"commands": []}),
        ("loadSequence", {"commands": [{"type": "Nope", "command": "x"}]}),
        ("submit", [1, 2]),
        ("delete", {}),
        ("diagnosticMode", {"startTime": "yesterday"}),
    ]:
        response = kit.operator.post(f"/sequencer/{sid}/{command}", json=body)
        assert response.status_code == 400, (command, response.text)
        assert response.json()["code"] == "INVALID_REQUEST"
    raw = kit.operator.post(f"/sequencer/{sid}/loadSequence", content=b"{not json")
    assert raw.status_code == 400
    assert kit.get(sid)["state"] == "Idle"


# -- the state table -----------------------------------------------------------------------


@pytest.mark.parametrize("state", ["Idle", "Loaded", "Running", "Offline", "Killed"])
def test_every_command_a_state_refuses_answers_unhandled_and_changes_nothing(kit, state):
    sid = in_state(kit, state)
    before = kit.get(sid)
    step_id = before["stepList"][-1]["id"] if before["stepList"] else "no-such-step"
    refused = [c for c in CommandName if State(state) not in ACCEPTED_IN[c]]
    assert refused, state
    for command in refused:
        answer = kit.send(sid, command, body_for(command, step_id), expect=409)
        assert answer == {
            "type": "Unhandled",
            "state": state,
            "messageType": command.message_type,
            "msg": f"Sequencer can not accept '{command.message_type}' message in '{state}' state",
        }
    after = kit.get(sid)
    assert after["state"] == state
    assert after["stepList"] == before["stepList"]
    assert after["runId"] == before["runId"]


def test_load_in_idle_then_reload_in_loaded_replaces_the_list(kit):
    sid = kit.load()["id"]
    assert kit.send(sid, "loadSequence", {"commands": [setup("move"), observe("expose")]}) == {
        "type": "Ok"
    }
    first = kit.get(sid)
    assert first["state"] == "Loaded" and first["isAvailable"] is False
    assert [s["status"] for s in first["stepList"]] == ["Pending", "Pending"]
    assert [s["command"] for s in first["stepList"]] == ["move", "expose"]
    kit.send(sid, "loadSequence", {"commands": [setup("slew", ra="1:00:00")]})
    second = kit.get(sid)
    assert second["state"] == "Loaded"
    assert [(s["command"], s["params"]) for s in second["stepList"]] == [
        ("slew", {"ra": "1:00:00"})
    ]
    time.sleep(0.3)  # loading never starts execution
    assert kit.statuses(sid) == ["Pending"]


def test_start_runs_every_step_to_success_then_idle_with_completed(kit):
    sid = kit.load()["id"]
    kit.send(
        sid,
        "loadSequence",
        {
            "commands": [
                setup("slew", sleep=0.05),
                setup("configure", sleep=0.05),
                observe("expose", exposure=0.05),
                observe("readout", sleep=0.05),
            ]
        },
    )
    started = kit.send(sid, "startSequence")
    assert started["type"] == "Started" and started["runId"]
    run_id = started["runId"]
    assert query_final(kit, sid, run_id) == {"type": "Completed", "runId": run_id}
    done = kit.get(sid)
    assert done["state"] == "Idle" and done["runId"] == run_id
    assert [s["status"] for s in done["stepList"]] == ["Success"] * 4
    query = kit.operator.get(f"/sequencer/{sid}/query/{run_id}").json()
    assert query == {"type": "Completed", "runId": run_id}
    # Editing a finished sequence in Idle is refused; the last list stays visible.
    kit.send(sid, "add", {"commands": [setup("move")]}, expect=409)
    assert len(kit.get(sid)["stepList"]) == 4


def test_submit_in_idle_and_in_loaded_runs_the_submitted_list(kit):
    sid = kit.load()["id"]
    run_id = kit.send(sid, "submit", {"commands": [setup("move", sleep=0.05)]})["runId"]
    assert query_final(kit, sid, run_id)["type"] == "Completed"
    kit.send(sid, "loadSequence", {"commands": [setup("slew")]})
    run2 = kit.send(
        sid, "submit", {"commands": [observe("expose", exposure=0.05), observe("readout", sleep=0)]}
    )["runId"]
    assert run2 != run_id
    assert query_final(kit, sid, run2)["type"] == "Completed"
    assert [s["command"] for s in kit.get(sid)["stepList"]] == ["expose", "readout"]
    # The old run is no longer known.
    old = kit.operator.get(f"/sequencer/{sid}/query/{run_id}").json()
    assert old["type"] == "Invalid"
    assert old["msg"] == f"Sequencer is not running any sequence with runId {run_id}"


def test_query_while_running_is_started_and_query_final_waits(kit):
    sid = kit.load()["id"]
    run_id = kit.send(sid, "submit", {"commands": [setup("wait", sleep=0.8)]})["runId"]
    assert kit.operator.get(f"/sequencer/{sid}/query/{run_id}").json() == {
        "type": "Started",
        "runId": run_id,
    }
    # A short queryFinal gives up and says the run still goes on.
    t0 = time.monotonic()
    assert query_final(kit, sid, run_id, timeout=0.2)["type"] == "Started"
    assert time.monotonic() - t0 < 0.8
    assert query_final(kit, sid, run_id, timeout=10) == {"type": "Completed", "runId": run_id}
    unknown = query_final(kit, sid, "nope", timeout=5)
    assert unknown["type"] == "Invalid"


def test_failure_short_circuits_the_run_with_an_error_naming_the_step(kit):
    sid = kit.load("failing-script")["id"]
    run_id = kit.send(
        sid, "submit", {"commands": [setup("ok"), setup("fail", msg="boom"), setup("ok")]}
    )["runId"]
    final = query_final(kit, sid, run_id)
    steps = kit.get(sid)["stepList"]
    assert final["type"] == "Error"
    assert final["msg"] == (
        f"StepId: {steps[1]['id']}, CommandName: fail, reason: RuntimeError: boom"
    )
    assert [s["status"] for s in steps] == ["Success", "Failure", "Pending"]
    assert steps[1]["message"] == "RuntimeError: boom"
    assert kit.get(sid)["state"] == "Idle"


def test_a_step_with_no_handler_fails(kit):
    sid = kit.load()["id"]
    run_id = kit.send(sid, "submit", {"commands": [observe("dance")]})["runId"]
    final = query_final(kit, sid, run_id)
    assert final["type"] == "Error" and "no handler for Observe 'dance'" in final["msg"]


# -- editor rules --------------------------------------------------------------------------


def test_editor_in_loaded_add_prepend_replace_insert_delete_and_breakpoints(kit):
    sid = kit.load()["id"]
    kit.send(sid, "loadSequence", {"commands": [setup("move", to=1), setup("move", to=2)]})
    kit.send(sid, "add", {"commands": [setup("move", to=3)]})
    kit.send(sid, "prepend", {"commands": [setup("move", to=0)]})
    steps = kit.get(sid)["stepList"]
    assert [s["params"]["to"] for s in steps] == [0, 1, 2, 3]
    kit.send(sid, "replace", {"id": steps[1]["id"], "commands": [setup("slew"), setup("slew")]})
    steps = kit.get(sid)["stepList"]
    assert [s["command"] for s in steps] == ["move", "slew", "slew", "move", "move"]
    kit.send(sid, "insertAfter", {"id": steps[-1]["id"], "commands": [observe("readout")]})
    kit.send(sid, "delete", {"id": steps[0]["id"]})
    steps = kit.get(sid)["stepList"]
    assert [s["command"] for s in steps] == ["slew", "slew", "move", "move", "readout"]
    kit.send(sid, "addBreakpoint", {"id": steps[2]["id"]})
    assert [s["hasBreakpoint"] for s in kit.get(sid)["stepList"]] == [
        False,
        False,
        True,
        False,
        False,
    ]
    kit.send(sid, "removeBreakpoint", {"id": steps[2]["id"]})
    kit.send(sid, "removeBreakpoint", {"id": steps[2]["id"]})  # none left: still Ok
    assert not any(s["hasBreakpoint"] for s in kit.get(sid)["stepList"])
    for command in ("replace", "insertAfter", "delete", "addBreakpoint", "removeBreakpoint"):
        answer = kit.send(sid, command, body_for(C(command), "ghost"), expect=404)
        assert answer == {"type": "IdDoesNotExist", "id": "ghost"}
    assert kit.get(sid)["state"] == "Loaded"


def test_editor_refuses_in_flight_and_finished_steps_while_running(kit):
    sid = kit.load()["id"]
    kit.send(
        sid,
        "submit",
        {"commands": [setup("move", sleep=0), setup("wait", sleep=4), setup("move", sleep=0)]},
    )
    steps = kit.wait(sid, lambda s: s["stepList"][1]["status"] == "InFlight")["stepList"]
    done, flying, pending = steps
    cannot = {"type": "CannotOperateOnAnInFlightOrFinishedStep"}
    for target in (done, flying):
        assert (
            kit.send(sid, "replace", {"id": target["id"], "commands": [setup("move")]}, expect=409)
            == cannot
        )
        assert kit.send(sid, "delete", {"id": target["id"]}, expect=409) == cannot
        assert kit.send(sid, "addBreakpoint", {"id": target["id"]}, expect=409) == cannot
        assert kit.send(sid, "removeBreakpoint", {"id": target["id"]}) == {"type": "Ok"}
    # insertAfter the finished step: the next one is in flight → refused.
    assert (
        kit.send(sid, "insertAfter", {"id": done["id"], "commands": [setup("move")]}, expect=409)
        == cannot
    )
    # insertAfter the in-flight step: the next is Pending → Ok.
    kit.send(sid, "insertAfter", {"id": flying["id"], "commands": [setup("slew", sleep=0)]})
    kit.send(sid, "replace", {"id": pending["id"], "commands": [observe("readout", sleep=0)]})
    steps = kit.get(sid)["stepList"]
    assert [s["command"] for s in steps] == ["move", "wait", "slew", "readout"]
    assert kit.get(sid)["state"] == "Running"
    final = query_final(kit, sid, kit.get(sid)["runId"])
    assert final["type"] == "Completed"
    assert kit.statuses(sid) == ["Success"] * 4


def test_reset_in_loaded_clears_the_list_and_in_running_drops_pending_steps(kit):
    sid = in_state(kit, "Loaded")
    kit.send(sid, "reset")
    assert kit.get(sid)["state"] == "Idle" and kit.get(sid)["stepList"] is None
    run_id = kit.send(
        sid, "submit", {"commands": [setup("wait", sleep=0.6), setup("move"), setup("move")]}
    )["runId"]
    kit.wait(sid, lambda s: s["stepList"][0]["status"] == "InFlight")
    kit.send(sid, "reset")
    running = kit.get(sid)
    assert running["state"] == "Running"
    assert [s["status"] for s in running["stepList"]] == ["InFlight"]
    assert query_final(kit, sid, run_id) == {"type": "Completed", "runId": run_id}
    assert kit.get(sid)["state"] == "Idle"


def test_deleting_the_last_pending_steps_while_paused_completes_the_run(kit):
    sid, steps = paused_running(kit)
    # The last one first: deleting the breakpoint step first would let the third one run.
    kit.send(sid, "delete", {"id": steps[2]["id"]})
    kit.send(sid, "delete", {"id": steps[1]["id"]})
    done = kit.wait_state(sid, "Idle")
    assert query_final(kit, sid, done["runId"])["type"] == "Completed"


# -- breakpoints, pause, resume ------------------------------------------------------------


def test_a_breakpoint_stops_before_its_step_until_removed(kit):
    sid, steps = paused_running(kit)
    time.sleep(0.5)
    held = kit.get(sid)
    assert held["state"] == "Running"
    assert [s["status"] for s in held["stepList"]] == ["Success", "Pending", "Pending"]
    assert held["stepList"][1]["hasBreakpoint"] is True
    kit.send(sid, "removeBreakpoint", {"id": steps[1]["id"]})
    assert query_final(kit, sid, held["runId"])["type"] == "Completed"
    assert kit.statuses(sid) == ["Success"] * 3


def test_pause_holds_after_the_current_step_and_resume_continues(kit):
    sid = kit.load()["id"]
    run_id = kit.send(
        sid,
        "submit",
        {
            "commands": [
                setup("wait", sleep=0.5),
                setup("move", sleep=0.05),
                setup("move", sleep=0.05),
            ]
        },
    )["runId"]
    kit.wait(sid, lambda s: s["stepList"][0]["status"] == "InFlight")
    assert kit.send(sid, "pause") == {"type": "Ok"}
    paused = kit.get(sid)
    assert paused["stepList"][1]["hasBreakpoint"] is True
    # The in-flight step finishes; the next does not start.
    kit.wait(sid, lambda s: s["stepList"][0]["status"] == "Success")
    time.sleep(0.6)
    held = kit.get(sid)
    assert [s["status"] for s in held["stepList"]] == ["Success", "Pending", "Pending"]
    assert held["state"] == "Running"
    t0 = time.monotonic()
    assert kit.send(sid, "resume") == {"type": "Ok"}
    assert query_final(kit, sid, run_id)["type"] == "Completed"
    assert time.monotonic() - t0 < 3
    assert kit.send(sid, "pause", expect=409)["type"] == "Unhandled"  # Idle now


def test_pause_with_no_pending_step_cannot_operate_and_resume_is_a_no_op(kit):
    sid = kit.load()["id"]
    run_id = kit.send(sid, "submit", {"commands": [setup("wait", sleep=0.8)]})["runId"]
    kit.wait(sid, lambda s: s["stepList"][0]["status"] == "InFlight")
    assert kit.send(sid, "pause", expect=409) == {"type": "CannotOperateOnAnInFlightOrFinishedStep"}
    assert kit.send(sid, "resume") == {"type": "Ok"}
    assert query_final(kit, sid, run_id)["type"] == "Completed"


# -- abort and stop ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["abortSequence", "stop"])
def test_abort_and_stop_drop_pending_steps_and_let_the_in_flight_step_finish(kit, command):
    sid = kit.load()["id"]
    run_id = kit.send(
        sid, "submit", {"commands": [setup("wait", sleep=0.6), setup("move"), setup("move")]}
    )["runId"]
    kit.wait(sid, lambda s: s["stepList"][0]["status"] == "InFlight")
    assert kit.send(sid, command) == {"type": "Ok"}
    assert query_final(kit, sid, run_id) == {"type": "Completed", "runId": run_id}
    done = kit.get(sid)
    assert done["state"] == "Idle"
    assert [s["status"] for s in done["stepList"]] == ["Success"]
    commands = [t["command"] for t in kit.transitions(sid)]
    assert command in commands


@pytest.mark.parametrize("command", ["abortSequence", "stop"])
def test_abort_and_stop_answer_while_a_long_step_is_still_in_flight(kit, command):
    """The hook runs beside the step, as in ESW: the answer does not wait for the step."""
    import time

    sid = kit.load()["id"]
    kit.send(sid, "submit", {"commands": [setup("wait", sleep=5), setup("move")]})
    kit.wait(sid, lambda s: s["stepList"][0]["status"] == "InFlight")
    began = time.monotonic()
    assert kit.send(sid, command) == {"type": "Ok"}
    assert time.monotonic() - began < 3
    now = kit.get(sid)
    assert now["state"] == "Running"
    assert [s["status"] for s in now["stepList"]] == ["InFlight"]
    kit.send(sid, "shutdown")


@pytest.mark.parametrize("command", ["abortSequence", "stop"])
def test_a_failing_abort_or_stop_handler_still_answers_ok_and_drops_pending(kit, command):
    sid, _ = paused_running(kit, "failing-script")
    assert kit.send(sid, command) == {"type": "Ok"}
    done = kit.wait_state(sid, "Idle")
    assert [s["status"] for s in done["stepList"]] == ["Success"]


# -- online, offline, modes ----------------------------------------------------------------


def test_offline_and_back_online(kit):
    sid = kit.load()["id"]
    kit.send(sid, "submit", {"commands": [setup("move", sleep=0)]})
    kit.wait_state(sid, "Idle")
    assert kit.send(sid, "goOffline") == {"type": "Ok"}
    offline = kit.get(sid)
    assert offline["state"] == "Offline" and offline["isOnline"] is False
    assert offline["stepList"] is None
    assert kit.send(sid, "goOnline") == {"type": "Ok"}
    assert kit.get(sid)["state"] == "Idle"
    sid2 = in_state(kit, "Loaded")
    assert kit.send(sid2, "goOffline") == {"type": "Ok"}
    assert kit.get(sid2)["state"] == "Offline"
    path = [(t["from"], t["to"]) for t in kit.transitions(sid2)]
    assert path[-2:] == [("Loaded", "Processing"), ("Processing", "Offline")]


def test_failing_go_offline_and_go_online_hooks_keep_the_state(kit):
    sid = kit.load("failing-script")["id"]
    kit.send(sid, "diagnosticMode", {"startTime": NOW, "hint": "arm:go_offline"})
    answer = kit.send(sid, "goOffline", expect=422)
    assert answer == {
        "type": "GoOfflineHookFailed",
        "msg": "HookFailure: go_offline fails on purpose",
    }
    assert kit.get(sid)["state"] == "Idle"
    kit.send(sid, "diagnosticMode", {"startTime": NOW, "hint": "disarm"})
    kit.send(sid, "goOffline")
    kit.send(sid, "diagnosticMode", {"startTime": NOW, "hint": "arm:go_online"})
    answer = kit.send(sid, "goOnline", expect=422)
    assert answer["type"] == "GoOnlineHookFailed" and "go_online fails" in answer["msg"]
    assert kit.get(sid)["state"] == "Offline"


def test_failing_new_sequence_hook_start_stays_loaded_submit_goes_idle(kit):
    sid = kit.load("failing-script")["id"]
    kit.send(sid, "submit", {"commands": [setup("arm", hooks=["new_sequence"])]})
    kit.wait_state(sid, "Idle")
    kit.send(sid, "loadSequence", {"commands": [setup("ok")]})
    answer = kit.send(sid, "startSequence", expect=422)
    assert answer == {
        "type": "NewSequenceHookFailed",
        "msg": "HookFailure: new_sequence fails on purpose",
    }
    assert kit.get(sid)["state"] == "Loaded"
    answer = kit.send(sid, "submit", {"commands": [setup("ok")]}, expect=422)
    assert answer["type"] == "NewSequenceHookFailed"
    assert kit.get(sid)["state"] == "Idle"
    answer = kit.send(sid, "submit", {"commands": [setup("ok")]}, expect=422)
    assert kit.get(sid)["state"] == "Idle"


@pytest.mark.parametrize("state", ["Idle", "Loaded", "Running", "Offline"])
def test_diagnostic_and_operations_modes_answer_in_every_live_state(kit, state):
    sid = in_state(kit, state, "failing-script")
    assert kit.send(sid, "diagnosticMode", {"startTime": NOW, "hint": "night"}) == {"type": "Ok"}
    assert kit.send(sid, "operationsMode") == {"type": "Ok"}
    assert kit.get(sid)["state"] == state
    kit.send(
        sid, "diagnosticMode", {"startTime": NOW, "hint": "arm:diagnostic_mode,operations_mode"}
    )
    answer = kit.send(sid, "diagnosticMode", {"startTime": NOW, "hint": "x"}, expect=422)
    assert answer == {
        "type": "DiagnosticHookFailed",
        "msg": "HookFailure: diagnostic_mode fails on purpose",
    }
    answer = kit.send(sid, "operationsMode", expect=422)
    assert answer["type"] == "OperationsHookFailed"
    assert kit.get(sid)["state"] == state


def test_diagnostic_mode_handler_gets_the_start_time_and_hint(kit, hub):
    sid = kit.load()["id"]
    kit.send(sid, "diagnosticMode", {"startTime": NOW, "hint": "engineering"})
    iid = kit.get(sid)["instance"]
    out = wait_for(
        lambda: "diagnostic mode" in (o := _stdout(kit, iid)) and o, what="diagnostic print"
    )
    assert "diagnostic mode from 2026-01-01 22:00:00+00:00: engineering" in out


def _stdout(kit: Kit, iid: str) -> str:
    with kit.operator.stream("GET", f"/instance/{iid}/stdout", timeout=2) as response:
        data = b""
        try:
            for chunk in response.iter_bytes():
                data += chunk
        except httpx.ReadTimeout:
            pass
    return data.decode()


# -- shutdown ------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["Idle", "Loaded", "Running", "Offline"])
def test_shutdown_in_every_live_state_kills_the_sequencer_and_its_process(kit, state):
    sid = in_state(kit, state, "failing-script")  # its shutdown hook fails: ignored
    assert kit.send(sid, "shutdown") == {"type": "Ok"}
    gone = kit.get(sid)
    assert gone["state"] == "Killed" and gone["isOnline"] is False
    assert gone["reason"] == "shut down by command"

    def ended() -> dict[str, Any] | None:
        info = kit.operator.get(f"/instance/{gone['instance']}").json()
        return info if info["status"] not in ("running", "killing", "stopping") else None

    instance = wait_for(ended, what="process end")
    assert instance["status"] in ("completed", "errored")
    assert kit.send(sid, "goOnline", expect=409)["state"] == "Killed"
    if state == "Running":
        assert query_final(kit, sid, gone["runId"])["type"] == "Error"


# -- events --------------------------------------------------------------------------------


def test_events_stream_gives_the_state_now_then_every_change_and_ends_on_killed(kit, hub):
    sid = kit.load()["id"]
    lines: list[dict[str, Any]] = []
    opened = threading.Event()

    def follow() -> None:
        with kit.operator.stream("GET", f"/sequencer/{sid}/events", timeout=30) as response:
            assert response.headers["content-type"].startswith("application/x-ndjson")
            for line in response.iter_lines():
                if line.strip():
                    lines.append(json.loads(line))
                    opened.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert opened.wait(10)
    assert lines[0]["state"] == "Idle" and lines[0]["stepList"] is None
    run_id = kit.send(
        sid, "submit", {"commands": [setup("move", sleep=0.05), setup("move", sleep=0.05)]}
    )["runId"]
    query_final(kit, sid, run_id)
    kit.send(sid, "shutdown")
    reader.join(15)
    assert not reader.is_alive(), "the stream must end once the sequencer is Killed"
    states = [line["state"] for line in lines]
    assert states[:3] == ["Idle", "Processing", "Running"]
    assert states[-1] == "Killed"
    versions = [line["version"] for line in lines]
    assert versions == sorted(set(versions)), "one line per change, in order"
    step_views = [[s["status"] for s in line["stepList"] or []] for line in lines]
    for expected in (["InFlight", "Pending"], ["Success", "InFlight"], ["Success", "Success"]):
        assert expected in step_views
    # A late reader gets the current state at once, and the stream ends (Killed).
    late = kit.operator.get(f"/sequencer/{sid}/events", timeout=10)
    assert [json.loads(x)["state"] for x in late.text.splitlines()] == ["Killed"]


# -- sequence components -------------------------------------------------------------------


def test_components_create_list_and_status(kit):
    name = kit.component()
    again = kit.admin.post("/components", json={"name": name})
    assert again.status_code == 409
    bad = kit.admin.post("/components", json={"name": "no spaces allowed"})
    assert bad.status_code == 400
    assert kit.operator.get(f"/component/{name}/status").json() == {
        "name": name,
        "state": "Idle",
        "sequencer": None,
        "reason": "",
    }
    assert {"name": name, "state": "Idle", "sequencer": None, "reason": ""} in kit.operator.get(
        "/components"
    ).json()
    assert kit.operator.get("/component/NO.such/status").status_code == 404


def test_component_lifecycle_load_unhandled_unload_and_idle_unload(kit):
    comp = kit.component()
    loaded = kit.load(component=comp)
    status = kit.operator.get(f"/component/{comp}/status").json()
    assert status["state"] == "Running" and status["sequencer"]["id"] == loaded["id"]
    again = kit.admin.post(
        f"/component/{comp}/load-script",
        json={"sequence": kit.package("darknight"), "prefix": "TST.other"},
    )
    assert again.status_code == 409
    assert again.json() == {
        "type": "Unhandled",
        "state": "Running",
        "messageType": "LoadScript",
        "msg": "Sequence Component can not accept 'LoadScript' message in 'Running'",
    }
    assert kit.operator.get(f"/component/{comp}/status").json()["sequencer"]["id"] == loaded["id"]
    assert kit.admin.post(f"/component/{comp}/unload-script").json() == {"type": "Ok"}
    assert kit.operator.get(f"/component/{comp}/status").json() == {
        "name": comp,
        "state": "Idle",
        "sequencer": None,
        "reason": "",
    }
    assert kit.get(loaded["id"])["state"] == "Killed"
    unload_idle = kit.admin.post(f"/component/{comp}/unload-script")
    assert unload_idle.status_code == 200 and unload_idle.json() == {"type": "Ok"}
    # The freed prefix can be loaded again, in the same component.
    reloaded = kit.load(component=comp, prefix=loaded["prefix"])
    assert reloaded["id"] != loaded["id"] and reloaded["state"] == "Idle"


def test_restart_gives_a_fresh_sequencer_and_is_unhandled_in_idle(kit):
    comp = kit.component()
    refused = kit.admin.post(f"/component/{comp}/restart")
    assert refused.status_code == 409 and refused.json()["messageType"] == "RestartScript"
    old = kit.load(component=comp)
    kit.send(old["id"], "loadSequence", {"commands": [setup("move")]})
    restarted = kit.admin.post(f"/component/{comp}/restart")
    assert restarted.status_code == 200, restarted.text
    fresh = restarted.json()["sequencer"]
    assert restarted.json()["type"] == "SequencerLocation"
    assert fresh["id"] != old["id"] and fresh["prefix"] == old["prefix"]
    assert fresh["state"] == "Idle" and fresh["stepList"] is None
    assert kit.get(old["id"])["state"] == "Killed"
    assert kit.get(old["prefix"])["id"] == fresh["id"]


def test_loading_a_script_that_raises_fails_with_its_traceback_and_stays_idle(kit):
    comp = kit.component()
    response = kit.admin.post(
        f"/component/{comp}/load-script",
        json={"sequence": kit.package("failing-script"), "prefix": unique("TST.x") + ".failload"},
    )
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["type"] == "LoadingScriptFailed"
    assert "Traceback" in body["msg"] and "refusing to load for TST." in body["msg"]
    assert kit.operator.get(f"/component/{comp}/status").json()["state"] == "Idle"


@pytest.mark.parametrize(
    ("code", "needle"),
    [
        ("def run(context, input):\n    return 1\n", "no script(sequencer)"),
        ("def script(sequencer:\n", "SyntaxError"),
        ("import no_such_module_here\n", "ModuleNotFoundError"),
    ],
    ids=["not-a-script", "syntax-error", "import-error"],
)
def test_loading_what_is_not_a_working_script_fails(kit, code, needle):
    comp = kit.component()
    seq_id = upload(kit.admin, python_package(code))
    response = kit.admin.post(
        f"/component/{comp}/load-script", json={"sequence": seq_id, "prefix": unique("TST.bad")}
    )
    assert response.status_code == 422, response.text
    assert response.json()["type"] == "LoadingScriptFailed"
    assert needle in response.json()["msg"]
    assert kit.operator.get(f"/component/{comp}/status").json()["sequencer"] is None
    # The component is still usable.
    kit.load(component=comp)


def test_a_prefix_is_held_by_one_live_sequencer_at_a_time(kit):
    prefix = unique("TST.solo")
    kit.load(prefix=prefix)
    clash = kit.admin.post(
        f"/component/{kit.component()}/load-script",
        json={"sequence": kit.package("darknight"), "prefix": prefix},
    )
    assert clash.status_code == 422
    assert "already loaded" in clash.json()["msg"]
    missing = kit.admin.post(
        f"/component/{kit.component()}/load-script",
        json={"sequence": "no-such-sequence", "prefix": unique("TST.m")},
    )
    assert missing.status_code == 404
    bad = kit.admin.post(
        f"/component/{kit.component()}/load-script",
        json={"sequence": kit.package("darknight"), "prefix": "no-dot"},
    )
    assert bad.status_code == 400


def test_mutating_calls_are_audited(kit):
    from accounts.models import AuditEntry

    comp = kit.component()
    sid = kit.load(component=comp)["id"]
    kit.send(sid, "goOffline")
    kit.send(sid, "goOffline", expect=409)
    kit.admin.post(f"/component/{comp}/unload-script")
    entries = list(AuditEntry.objects.order_by("id").values_list("action", "target", "outcome"))
    assert ("component.create", comp, "ok") in entries
    assert ("component.load-script", comp, "ok") in entries
    assert ("sequencer.goOffline", sid, "ok") in entries
    assert ("sequencer.goOffline", sid, "refused") in entries
    assert ("component.unload-script", comp, "ok") in entries
