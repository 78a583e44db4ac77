"""Sequencer actors under stress and faults, end to end: concurrent commands, a process killed
mid-step, a shutdown during a long step, and a hub restart (web, then worker, then a worker
crash) on private hub processes."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from dashboard.processes import worker_argv
from tests.conftest import (
    BIN,
    ROOT,
    ProcessHandle,
    free_port,
    hub_env,
    start_web,
    stop_process,
    wait_for,
    web_url,
)
from tests.packaging import python_package, upload
from tests.sequences import sequencer_kit
from tests.sequences.sequencer_kit import Kit, setup, unique

pytestmark = pytest.mark.django_db(transaction=True)
kit = sequencer_kit.kit  # the fixture

TYPES_BY_STATUS = {
    200: {"Ok", "Started"},
    404: {"IdDoesNotExist"},
    409: {"Unhandled", "CannotOperateOnAnInFlightOrFinishedStep"},
    422: {
        "NewSequenceHookFailed",
        "GoOnlineHookFailed",
        "GoOfflineHookFailed",
        "DiagnosticHookFailed",
        "OperationsHookFailed",
    },
}

# -- the transition rules of docs/architecture.md, as seen in the history -----------------

IDLE, LOADED, RUNNING, OFFLINE = "Idle", "Loaded", "Running", "Offline"
PROC, KILLED = "Processing", "Killed"
# Changes a command makes at once (no hook).
DIRECT = {
    "LoadScript": {("", IDLE)},
    "loadSequence": {(IDLE, LOADED)},
    "reset": {
        (LOADED, IDLE),
        (RUNNING, IDLE),
    },  # Running → Idle when dropping the pending steps ends the run
    "delete": {(RUNNING, IDLE)},
    "stepFinished": {(RUNNING, IDLE)},
}
# Where a hook may start, and where it may end given where it started.
HOOK_FROM = {
    "startSequence": {LOADED},
    "submit": {IDLE, LOADED},
    "abortSequence": {RUNNING},
    "stop": {RUNNING},
    "goOffline": {IDLE, LOADED},
    "goOnline": {OFFLINE},
    "diagnosticMode": {IDLE, LOADED, RUNNING, OFFLINE},
    "operationsMode": {IDLE, LOADED, RUNNING, OFFLINE},
    "shutdown": {IDLE, LOADED, RUNNING, OFFLINE},
}


def hook_ends(command: str, origin: str) -> set[str]:
    return {
        "startSequence": {
            RUNNING,
            LOADED,
            IDLE,
        },  # success, hook failed, or an empty list that ends at once
        "submit": {RUNNING, IDLE},
        "abortSequence": {RUNNING, IDLE},
        "stop": {RUNNING, IDLE},
        "goOffline": {OFFLINE, origin},
        "goOnline": {IDLE, OFFLINE},
        "diagnosticMode": {origin, IDLE} if origin == RUNNING else {origin},
        "operationsMode": {origin, IDLE} if origin == RUNNING else {origin},
        "shutdown": {KILLED},
    }[command]


def check_history(history: list[dict[str, Any]]) -> None:
    """Each transition starts where the previous one ended and is one the table allows."""
    state = ""
    hook: tuple[str, str] | None = None  # (command, state it started from)
    for i, t in enumerate(history):
        where = f"transition {i}: {t}"
        assert t["from"] == state, f"{where} does not start at {state!r}"
        command, to = t["command"], t["to"]
        if command in ("processExit", "processLost"):
            assert to == KILLED, where
        elif to == PROC:
            assert command in HOOK_FROM and t["from"] in HOOK_FROM[command], where
            hook = (command, t["from"])
        elif t["from"] == PROC:
            assert hook is not None, where
            if command == "shutdown":  # a shutdown supersedes any hook in progress
                assert to == KILLED, where
            else:
                assert command == hook[0] and to in hook_ends(command, hook[1]), where
            hook = None
        else:
            assert (t["from"], to) in DIRECT.get(command, set()), where
        state = to


def test_fifty_concurrent_random_commands_leave_a_history_the_table_allows(kit, hub, people):
    sid = kit.load("failing-script")["id"]
    kit.send(sid, "loadSequence", {"commands": [setup("ok", sleep=0.02)] * 3})
    known_ids = [s["id"] for s in kit.get(sid)["stepList"]]
    rng = random.Random(20260101)
    names = [
        "loadSequence",
        "startSequence",
        "submit",
        "submit",
        "add",
        "prepend",
        "replace",
        "insertAfter",
        "delete",
        "addBreakpoint",
        "removeBreakpoint",
        "reset",
        "pause",
        "resume",
        "abortSequence",
        "stop",
        "goOffline",
        "goOnline",
        "diagnosticMode",
        "operationsMode",
    ]

    def body(command: str) -> Any:
        steps = [setup("ok", sleep=rng.choice([0, 0.01, 0.05])) for _ in range(rng.randint(1, 3))]
        step_id = rng.choice([*known_ids, "ghost"])
        if command in ("loadSequence", "submit", "add", "prepend"):
            return {"commands": steps}
        if command in ("replace", "insertAfter"):
            return {"id": step_id, "commands": steps}
        if command in ("delete", "addBreakpoint", "removeBreakpoint"):
            return {"id": step_id}
        if command == "diagnosticMode":
            return {"startTime": "2026-01-01T00:00:00Z", "hint": "busy"}
        return None

    plan = [(name, body(name)) for name in (rng.choice(names) for _ in range(50))]
    token = people["operator"].token

    def send(item: tuple[str, Any]) -> tuple[str, int, dict[str, Any]]:
        command, payload = item
        with httpx.Client(
            base_url=hub.api, timeout=60, headers={"Authorization": f"Bearer {token}"}
        ) as client:
            response = client.post(f"/sequencer/{sid}/{command}", json=payload)
        return command, response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(send, plan))
    for command, status, answer in results:
        assert status in TYPES_BY_STATUS, (command, status, answer)
        assert answer["type"] in TYPES_BY_STATUS[status], (command, status, answer)
    assert any(status == 200 for _, status, _ in results)
    # Let whatever run is going end, then shut down: the history ends Killed.
    settled = kit.wait(
        sid, lambda s: s["state"] in (IDLE, LOADED, OFFLINE), timeout=30, what="settle"
    )
    assert settled["state"] != PROC
    kit.send(sid, "shutdown")
    history = kit.transitions(sid)
    check_history(history)
    assert history[-1]["to"] == KILLED
    assert len(history) >= 4


def test_the_history_checker_refuses_what_the_table_forbids():
    ok = [
        {"from": "", "to": IDLE, "command": "LoadScript"},
        {"from": IDLE, "to": PROC, "command": "submit"},
        {"from": PROC, "to": RUNNING, "command": "submit"},
        {"from": RUNNING, "to": IDLE, "command": "stepFinished"},
    ]
    check_history(ok)
    for bad in (
        [*ok[:1], {"from": IDLE, "to": RUNNING, "command": "startSequence"}],
        [*ok[:2], {"from": PROC, "to": OFFLINE, "command": "submit"}],
        [*ok[:3], {"from": IDLE, "to": LOADED, "command": "loadSequence"}],
        [*ok[:1], {"from": IDLE, "to": PROC, "command": "goOnline"}],
    ):
        with pytest.raises(AssertionError):
            check_history(bad)


def _pid(kit: Kit, sid: str) -> int:
    iid = kit.get(sid)["instance"]
    return wait_for(
        lambda: kit.operator.get(f"/instance/{iid}").json().get("pid"), what="the sequencer's pid"
    )


def test_a_process_killed_mid_step_makes_the_sequencer_killed_with_a_reason(kit):
    comp = kit.component()
    sid = kit.load(component=comp)["id"]
    run_id = kit.send(sid, "submit", {"commands": [setup("wait", sleep=30), setup("move")]})[
        "runId"
    ]
    kit.wait(sid, lambda s: s["stepList"][0]["status"] == "InFlight")
    os.kill(_pid(kit, sid), signal.SIGKILL)
    gone = kit.wait_state(sid, KILLED, timeout=10)
    assert gone["reason"].startswith("its process ended: ")
    assert "137" in gone["reason"]
    assert [s["status"] for s in gone["stepList"]] == ["Failure", "Pending"]
    assert gone["stepList"][0]["message"] == gone["reason"]
    final = kit.operator.get(f"/sequencer/{sid}/queryFinal/{run_id}", params={"timeout": 5})
    assert final.json()["type"] == "Error"
    assert kit.send(sid, "stop", expect=409)["state"] == KILLED
    # The component no longer hosts its dead sequencer: Idle, saying why, and free to load.
    status = kit.operator.get(f"/component/{comp}/status").json()
    assert status["state"] == "Idle" and status["sequencer"] is None
    assert status["reason"] == f"sequencer {gone['prefix']} was killed: {gone['reason']}"
    again = kit.load(component=comp, prefix=gone["prefix"])
    assert again["state"] == IDLE


def test_a_script_that_kills_its_own_process_in_a_step_is_killed_not_running(kit):
    sid = kit.load("failing-script")["id"]
    kit.send(sid, "submit", {"commands": [setup("ok"), setup("crash", sleep=0.1), setup("ok")]})
    gone = kit.wait_state(sid, KILLED, timeout=10)
    assert [s["status"] for s in gone["stepList"]] == ["Success", "Failure", "Pending"]
    assert "its process ended" in gone["reason"]


def test_shutdown_during_a_long_step_still_kills_within_the_hook_timeout(kit):
    sid = kit.load()["id"]
    kit.send(sid, "submit", {"commands": [setup("wait", sleep=60)]})
    kit.wait(sid, lambda s: s["stepList"][0]["status"] == "InFlight")
    pid = _pid(kit, sid)
    t0 = time.monotonic()
    assert kit.send(sid, "shutdown") == {"type": "Ok"}
    assert time.monotonic() - t0 < 9
    gone = kit.get(sid)
    assert gone["state"] == KILLED
    assert [s["status"] for s in gone["stepList"]] == ["Failure"]
    wait_for(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
        timeout=10,
        what="the process to go",
    )


def test_processing_refuses_everything_but_shutdown_which_supersedes_the_hook(kit):
    """While a slow hook runs the sequencer shows Processing, and only shutdown gets through."""
    sid = kit.load()["id"]
    kit.send(sid, "submit", {"commands": [setup("wait", sleep=60), setup("move")]})
    kit.wait(sid, lambda s: s["stepList"][0]["status"] == "InFlight")
    held: dict[str, Any] = {}

    def diagnostic() -> None:
        held["response"] = kit.operator.post(
            f"/sequencer/{sid}/diagnosticMode",
            json={"startTime": "2026-01-01T00:00:00Z", "hint": "sleep:60"},
        )

    waiter = threading.Thread(target=diagnostic)
    waiter.start()
    kit.wait_state(sid, PROC)
    for command, body in [
        ("pause", None),
        ("stop", None),
        ("operationsMode", None),
        ("add", {"commands": [setup("move")]}),
    ]:
        answer = kit.send(sid, command, body, expect=409)
        assert answer["type"] == "Unhandled" and answer["state"] == PROC, answer
    assert kit.send(sid, "shutdown") == {"type": "Ok"}
    waiter.join(15)
    assert held["response"].status_code == 409
    assert held["response"].json()["state"] == KILLED
    gone = kit.get(sid)
    assert gone["state"] == KILLED
    assert [s["status"] for s in gone["stepList"]] == ["Failure", "Pending"]
    commands = [(t["from"], t["to"], t["command"]) for t in kit.transitions(sid)]
    assert (RUNNING, PROC, "diagnosticMode") in commands
    assert (PROC, KILLED, "shutdown") in commands
    check_history(kit.transitions(sid))


def test_a_command_for_a_sequencer_its_worker_does_not_run_answers_killed(kit):
    """A worker with no actor for the sequencer (its process is gone) answers NOT_RUNNING;
    the web marks the sequencer Killed and answers from the table."""
    from sequences.models import Instance, Sequencer

    live_sid = kit.load()["id"]
    worker = Instance.objects.get(pk=kit.get(live_sid)["instance"]).worker
    orphan = Instance.objects.create(kind="script", worker=worker, status="running")
    ghost = Sequencer.objects.create(
        prefix=unique("TST.ghost"), instance=orphan, handlers={"setup": [], "hooks": []}
    )
    answer = kit.send(ghost.id, "goOffline", expect=409)
    assert answer["type"] == "Unhandled" and answer["state"] == KILLED
    assert "has no process on worker" in kit.get(ghost.id)["reason"]
    assert kit.get(live_sid)["state"] == IDLE


SLOW_SCRIPT = """
import time


def script(sequencer):
    time.sleep(1.5)

    @sequencer.on_setup("go")
    async def go(step):
        pass
"""


def test_commands_while_the_script_loads_are_refused_and_do_no_harm(kit):
    comp = kit.component()
    seq_id = upload(kit.admin, python_package(SLOW_SCRIPT))
    prefix = unique("TST.slow")
    result: dict[str, Any] = {}

    def load() -> None:
        result["response"] = kit.admin.post(
            f"/component/{comp}/load-script", json={"sequence": seq_id, "prefix": prefix}
        )

    loader = threading.Thread(target=load)
    loader.start()
    loading = wait_for(
        lambda: (
            kit.operator.get(f"/sequencer/{prefix}").status_code == 200
            and kit.operator.get(f"/sequencer/{prefix}").json()
        ),
        what="the sequencer row",
    )
    early = kit.operator.post(f"/sequencer/{loading['id']}/goOffline")
    loader.join(30)
    assert early.status_code == 409 and early.json()["code"] == "NOT_READY"
    assert result["response"].status_code == 200, result["response"].text
    assert kit.send(loading["id"], "goOffline") == {"type": "Ok"}


# -- a hub restart -------------------------------------------------------------------------


def start_private_worker(tmp: Path, queue: str, name: str) -> ProcessHandle:
    log = tmp / f"{name}.log"
    proc = subprocess.Popen(
        worker_argv(BIN, queue, 4, "-l", "INFO", "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h"),
        cwd=ROOT,
        env=hub_env(HUB_QUEUE=queue),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return ProcessHandle(proc, log)


def test_a_hub_restart_keeps_states_and_marks_the_dead(people, tmp_path, hub):
    queue = f"restart-{uuid.uuid4().hex[:8]}"
    headers = people["admin"].headers()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    worker = start_private_worker(tmp_path, queue, "w1")
    web = start_web(tmp_path / "a", free_port(), HUB_QUEUE=queue)
    handles = [worker, web]
    client = httpx.Client(base_url=web_url(web) + "/api/v1", headers=headers, timeout=60)
    try:
        k = Kit(client, client)
        idle = k.load()["id"]
        loaded = k.load()["id"]
        k.send(loaded, "loadSequence", {"commands": [setup("move"), setup("slew")]})
        offline = k.load()["id"]
        k.send(offline, "goOffline")
        done = k.load()["id"]
        run_id = k.send(done, "submit", {"commands": [setup("move", sleep=0)]})["runId"]
        k.wait_state(done, IDLE)
        ids = [idle, loaded, offline, done]
        before = {sid: k.get(sid) for sid in ids}

        # The web restarts: every state, list and run is as before, and commands still work.
        stop_process(web.proc)
        web = start_web(tmp_path / "b", free_port(), HUB_QUEUE=queue)
        handles.append(web)
        client.base_url = web_url(web) + "/api/v1"
        for sid in ids:
            now = k.get(sid)
            for key in ("state", "stepList", "runId", "runResult", "prefix", "component"):
                assert now[key] == before[sid][key], (sid, key)
        assert k.operator.get(f"/sequencer/{done}/query/{run_id}").json()["type"] == "Completed"
        assert k.send(idle, "goOffline") == {"type": "Ok"}
        assert k.send(idle, "goOnline") == {"type": "Ok"}

        # The worker stops in order: its sequencers' processes end with it, and say so.
        pids = [_pid(k, sid) for sid in ids]
        stop_process(worker.proc)
        for sid in ids:
            gone = k.get(sid)
            assert gone["state"] == KILLED, (sid, gone)
            assert "shut down" in gone["reason"], gone["reason"]
            assert gone["stepList"] == (None if sid in (idle, offline) else before[sid]["stepList"])
        for pid in pids:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"

        # A new worker takes new loads; then it crashes (SIGKILL): its sequencer is marked
        # Killed (process lost) as soon as its heartbeat expires, and its process is gone.
        worker = start_private_worker(tmp_path, queue, "w2")
        handles.append(worker)
        fresh = k.load()["id"]
        pid = _pid(k, fresh)
        os.kill(worker.proc.pid, signal.SIGKILL)
        lost = k.wait_state(fresh, KILLED, timeout=20)
        assert lost["reason"].startswith("process lost: worker ")
        wait_for(
            lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
            timeout=10,
            what="the script process to die with its worker",
        )
    finally:
        client.close()
        for handle in handles:
            with contextlib.suppress(Exception):
                stop_process(handle.proc, timeout=10)
