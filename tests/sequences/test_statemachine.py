"""Sequencer state machine: the table of docs/architecture.md, editor answers, engine, queries,
and a random walk checking that every transition is one the table allows."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest

from sequences.statemachine import (
    ACCEPTED_IN,
    HANDLER_OF,
    CannotOperateOnAnInFlightOrFinishedStep,
    CommandName,
    Completed,
    DiagnosticHookFailed,
    Done,
    Error,
    GoOfflineHookFailed,
    GoOnlineHookFailed,
    Handler,
    IdDoesNotExist,
    Invalid,
    NewSequenceHookFailed,
    Ok,
    OperationsHookFailed,
    PendingCall,
    Request,
    RunHandler,
    Snapshot,
    Started,
    State,
    Unhandled,
    accepts,
    complete_handler,
    decide,
    http_status,
    next_step,
    query,
    query_final,
    step_finished,
)
from sequences.steplist import StepStatus, is_forward_move

C = CommandName
IDLE, LOADED, RUNNING = State.IDLE, State.LOADED, State.RUNNING
OFFLINE, KILLED, PROCESSING = State.OFFLINE, State.KILLED, State.PROCESSING


def commands(*names: str) -> list[dict[str, Any]]:
    return [{"type": "Setup", "command": name, "params": {}} for name in names]


def request(command: CommandName, snapshot: Snapshot | None = None, **body: Any) -> Request:
    """A valid request; commands that need a step id target the last step (or a bogus id)."""
    steps = snapshot.steps if snapshot is not None else None
    last_id = steps.steps[-1].id if steps else "no-such-step"
    payload: dict[str, Any] = {"commands": commands("x"), "id": last_id}
    if command is C.DIAGNOSTIC_MODE:
        payload = {"startTime": "2026-01-01T00:00:00+00:00", "hint": "engineering"}
    payload.update(body)
    return Request.parse(str(command), payload)


def done(decision: Any) -> Done:
    assert isinstance(decision, Done)
    return decision


def hook(decision: Any) -> RunHandler:
    assert isinstance(decision, RunHandler)
    return decision


def run(snapshot: Snapshot, command: CommandName, ok: bool = True, **body: Any) -> Done:
    """Decide a command and, when it runs a hook, finish the hook with `ok`."""
    decision = decide(snapshot, request(command, snapshot, **body))
    if isinstance(decision, RunHandler):
        return decision.on_success() if ok else decision.on_failure("hook said no")
    return decision


# -- snapshots in each state -----------------------------------------------------------------


def idle() -> Snapshot:
    return Snapshot()


def loaded(*names: str) -> Snapshot:
    return run(idle(), C.LOAD_SEQUENCE, commands=commands(*(names or ("a", "b", "c")))).snapshot


def started(*names: str) -> Snapshot:
    """Running, nothing pulled yet."""
    return run(idle(), C.SUBMIT, commands=commands(*(names or ("a", "b", "c")))).snapshot


def running(*names: str) -> Snapshot:
    """Running with the first step in flight and the rest pending."""
    pulled = next_step(started(*names))
    assert pulled is not None
    return pulled[0]


def offline() -> Snapshot:
    return run(idle(), C.GO_OFFLINE).snapshot


def killed() -> Snapshot:
    return run(idle(), C.SHUTDOWN).snapshot


def processing() -> Snapshot:
    return hook(decide(loaded(), request(C.START_SEQUENCE))).snapshot


BUILD = {
    IDLE: idle,
    LOADED: loaded,
    RUNNING: running,
    OFFLINE: offline,
    KILLED: killed,
    PROCESSING: processing,
}


def statuses(snapshot: Snapshot) -> list[StepStatus]:
    return [s.status for s in snapshot.steps or ()]


def finish_in_flight(snapshot: Snapshot, ok: bool = True, message: str = "") -> Snapshot:
    assert snapshot.steps is not None and snapshot.steps.in_flight is not None
    return step_finished(snapshot, snapshot.steps.in_flight.id, ok, message)


def drive(snapshot: Snapshot) -> Snapshot:
    """Run the engine with succeeding steps until it has nothing to execute."""
    while (pulled := next_step(snapshot)) is not None:
        snapshot = step_finished(pulled[0], pulled[1].id, True)
    return snapshot


# -- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """The row of one (state, command): answer and state, and for a hook its failure too."""

    response: str
    state: State | None  # None: unchanged
    failure: tuple[str, State] | None = None  # set exactly when a hook runs


U = Expect("Unhandled", None)
EDIT = Expect("Ok", None)


def hooked(ok: tuple[str, State], failed: tuple[str, State]) -> Expect:
    return Expect(ok[0], ok[1], failed)


EDITORS = (
    C.ADD,
    C.PREPEND,
    C.REPLACE,
    C.INSERT_AFTER,
    C.DELETE,
    C.ADD_BREAKPOINT,
    C.REMOVE_BREAKPOINT,
)


def column(state: State) -> dict[CommandName, Expect]:
    """The state machine table (docs/architecture.md), one column; the rest is Unhandled."""
    mode = {
        C.DIAGNOSTIC_MODE: hooked(("Ok", state), ("DiagnosticHookFailed", state)),
        C.OPERATIONS_MODE: hooked(("Ok", state), ("OperationsHookFailed", state)),
        C.SHUTDOWN: hooked(("Ok", KILLED), ("Ok", KILLED)),
    }
    started = ("Started", RUNNING)
    editing = dict.fromkeys(EDITORS, EDIT)
    rows: dict[State, dict[CommandName, Expect]] = {
        IDLE: {
            C.LOAD_SEQUENCE: Expect("Ok", LOADED),
            C.SUBMIT: hooked(started, ("NewSequenceHookFailed", IDLE)),
            C.GO_OFFLINE: hooked(("Ok", OFFLINE), ("GoOfflineHookFailed", IDLE)),
            **mode,
        },
        LOADED: {
            C.LOAD_SEQUENCE: Expect("Ok", LOADED),
            C.START_SEQUENCE: hooked(started, ("NewSequenceHookFailed", LOADED)),
            C.SUBMIT: hooked(started, ("NewSequenceHookFailed", IDLE)),
            **editing,
            C.RESET: Expect("Ok", IDLE),
            C.GO_OFFLINE: hooked(("Ok", OFFLINE), ("GoOfflineHookFailed", LOADED)),
            **mode,
        },
        RUNNING: {
            **editing,
            C.RESET: Expect("Ok", RUNNING),
            C.PAUSE: Expect("Ok", RUNNING),
            C.RESUME: Expect("Ok", RUNNING),
            C.ABORT_SEQUENCE: hooked(("Ok", RUNNING), ("Ok", RUNNING)),
            C.STOP: hooked(("Ok", RUNNING), ("Ok", RUNNING)),
            **mode,
        },
        OFFLINE: {
            C.GO_ONLINE: hooked(("Ok", IDLE), ("GoOnlineHookFailed", OFFLINE)),
            **mode,
        },
        KILLED: {},
        PROCESSING: {C.SHUTDOWN: mode[C.SHUTDOWN]},
    }
    return rows[state]


TABLE = {(s, c): column(s).get(c, U) for s in BUILD for c in CommandName}
CELLS = sorted(
    TABLE, key=lambda cell: (list(BUILD).index(cell[0]), list(CommandName).index(cell[1]))
)
HOOK_CELLS = [cell for cell in CELLS if TABLE[cell].failure is not None]


def cell_id(cell: tuple[State, CommandName]) -> str:
    return f"{cell[0]}-{cell[1]}"


def test_the_table_covers_every_state_and_command() -> None:
    assert len(CELLS) == 6 * 20


@pytest.mark.parametrize("cell", CELLS, ids=cell_id)
def test_each_command_in_each_state_answers_and_moves_as_the_table_says(
    cell: tuple[State, CommandName],
) -> None:
    state, command = cell
    expect = TABLE[cell]
    before = BUILD[state]()
    assert before.display_state is state
    decision = decide(before, request(command, before))
    if expect.failure is not None:
        decision = hook(decision)
        assert decision.call.handler is HANDLER_OF[command]
        assert decision.snapshot.display_state is PROCESSING
        assert decision.snapshot.state is before.state
        decision = decision.on_success()
    decision = done(decision)
    assert type(decision.response).__name__ == expect.response
    assert decision.response.to_json()["type"] == expect.response
    assert decision.snapshot.display_state is (expect.state or state)
    if expect is U:
        assert decision.snapshot == before
        assert decision.response == Unhandled(state, command.message_type)


@pytest.mark.parametrize("cell", HOOK_CELLS, ids=cell_id)
def test_a_failing_hook_answers_and_lands_as_the_table_says(
    cell: tuple[State, CommandName],
) -> None:
    state, command = cell
    failure = TABLE[cell].failure
    assert failure is not None
    result = hook(decide(BUILD[state](), request(command))).on_failure("hook said no")
    assert type(result.response).__name__ == failure[0]
    assert result.snapshot.display_state is failure[1]
    if failure[0].endswith("HookFailed"):
        assert result.response.to_json() == {"type": failure[0], "msg": "hook said no"}


@pytest.mark.parametrize("cell", CELLS, ids=cell_id)
def test_accepts_matches_the_table(cell: tuple[State, CommandName]) -> None:
    assert accepts(*cell) is (TABLE[cell] is not U)


def test_unhandled_names_the_esw_message_type_and_state() -> None:
    answer = done(decide(offline(), request(C.SUBMIT))).response
    assert answer.to_json() == {
        "type": "Unhandled",
        "state": "Offline",
        "messageType": "SubmitSequence",
        "msg": "Sequencer can not accept 'SubmitSequence' message in 'Offline' state",
    }


def test_message_types_are_the_esw_class_names() -> None:
    assert [c.message_type for c in CommandName] == [
        "LoadSequence",
        "StartSequence",
        "SubmitSequence",
        "Add",
        "Prepend",
        "Replace",
        "InsertAfter",
        "Delete",
        "AddBreakpoint",
        "RemoveBreakpoint",
        "Reset",
        "Pause",
        "Resume",
        "AbortSequence",
        "Stop",
        "GoOnline",
        "GoOffline",
        "Shutdown",
        "DiagnosticMode",
        "OperationsMode",
    ]


def test_hook_names_are_those_of_the_child_protocol() -> None:
    assert {str(h) for h in HANDLER_OF.values()} == {
        "new_sequence",
        "go_online",
        "go_offline",
        "abort_sequence",
        "stop",
        "shutdown",
        "diagnostic_mode",
        "operations_mode",
    }


# -- load / start / submit (checklist 1-11) --------------------------------------------------


def test_a_new_sequencer_is_idle_with_no_sequence() -> None:
    assert idle().display_state is IDLE
    assert idle().steps is None
    assert idle().is_available and idle().is_online


def test_load_holds_all_steps_pending_and_does_not_start_them() -> None:
    snapshot = loaded("a", "b")
    assert statuses(snapshot) == [StepStatus.PENDING] * 2
    assert next_step(snapshot) is None


def test_load_in_loaded_replaces_the_sequence() -> None:
    again = run(loaded("a", "b"), C.LOAD_SEQUENCE, commands=commands("z")).snapshot
    assert [s.command for s in again.steps or ()] == ["z"]


def test_start_runs_new_sequence_then_answers_started_with_a_fresh_run_id() -> None:
    decision = hook(decide(loaded(), request(C.START_SEQUENCE)))
    assert decision.call.handler is Handler.NEW_SEQUENCE
    result = decision.on_success()
    assert result.response == Started(decision.call.run_id or "")
    assert result.snapshot.run_id == decision.call.run_id
    assert query(result.snapshot, result.snapshot.run_id or "") == result.response


def test_start_failing_keeps_the_loaded_list_and_says_why() -> None:
    before = loaded()
    result = hook(decide(before, request(C.START_SEQUENCE))).on_failure("no telescope")
    assert result.response == NewSequenceHookFailed("no telescope")
    assert result.snapshot == before


def test_a_hook_failure_without_a_message_gets_a_default_one() -> None:
    result = hook(decide(loaded(), request(C.START_SEQUENCE))).on_failure("")
    assert result.response == NewSequenceHookFailed(
        "New sequence handler failed to start successfully"
    )


def test_submit_in_loaded_replaces_the_loaded_list() -> None:
    result = run(loaded("a"), C.SUBMIT, commands=commands("s1", "s2")).snapshot
    assert [s.command for s in result.steps or ()] == ["s1", "s2"]
    assert result.state is RUNNING


def test_submit_failing_from_loaded_lands_idle_without_the_unstarted_list() -> None:
    result = run(loaded(), C.SUBMIT, ok=False).snapshot
    assert result.state is IDLE
    assert result.steps is None


def test_submit_failing_from_idle_keeps_the_last_finished_run() -> None:
    finished = drive(started("a"))
    result = run(finished, C.SUBMIT, ok=False)
    assert result.response == NewSequenceHookFailed("hook said no")
    assert result.snapshot == finished


def test_the_submitted_list_is_not_visible_before_new_sequence_succeeds() -> None:
    decision = hook(decide(loaded("a"), request(C.SUBMIT, commands=commands("z"))))
    assert [s.command for s in decision.snapshot.steps or ()] == ["a"]


# -- execution, completion, queries (checklist 12-17) ----------------------------------------


def test_all_steps_succeeding_completes_the_run_and_keeps_the_list() -> None:
    snapshot = drive(started("a", "b"))
    run_id = snapshot.run_id or ""
    assert snapshot.state is IDLE
    assert statuses(snapshot) == [StepStatus.SUCCESS] * 2
    assert snapshot.run_result == Completed(run_id)
    assert query(snapshot, run_id) == Completed(run_id)
    assert query_final(snapshot, run_id) == Completed(run_id)


def test_steps_run_one_at_a_time_in_order() -> None:
    snapshot = started("a", "b")
    pulled = next_step(snapshot)
    assert pulled is not None and pulled[1].command == "a"
    assert pulled[1].status is StepStatus.IN_FLIGHT
    assert next_step(pulled[0]) is None


def test_a_failing_step_short_circuits_the_run_with_an_error_naming_it() -> None:
    snapshot = running("a", "b", "c")
    snapshot = finish_in_flight(snapshot)
    pulled = next_step(snapshot)
    assert pulled is not None
    snapshot = step_finished(pulled[0], pulled[1].id, False, "motor stalled")
    assert snapshot.state is IDLE
    assert statuses(snapshot) == [StepStatus.SUCCESS, StepStatus.FAILURE, StepStatus.PENDING]
    run_id = snapshot.run_id or ""
    expected = Error(run_id, f"StepId: {pulled[1].id}, CommandName: b, reason: motor stalled")
    assert query_final(snapshot, run_id) == expected
    assert expected.to_json() == {"type": "Error", "runId": run_id, "msg": expected.msg}
    assert next_step(snapshot) is None


def test_query_answers_started_while_running_and_query_final_waits() -> None:
    snapshot = running()
    run_id = snapshot.run_id or ""
    assert query(snapshot, run_id) == Started(run_id)
    assert query_final(snapshot, run_id) is None


@pytest.mark.parametrize(
    "snapshot", [idle(), running(), drive(started())], ids=["idle", "running", "finished"]
)
def test_query_for_an_unknown_run_id_is_invalid(snapshot: Snapshot) -> None:
    answer = query(snapshot, "r-unknown")
    assert answer == Invalid("r-unknown")
    assert query_final(snapshot, "r-unknown") == answer
    assert answer.to_json() == {
        "type": "Invalid",
        "runId": "r-unknown",
        "msg": "Sequencer is not running any sequence with runId r-unknown",
    }


def test_the_last_run_stays_queryable_after_a_new_load_and_after_go_offline() -> None:
    finished = drive(started("a"))
    run_id = finished.run_id or ""
    reloaded = run(finished, C.LOAD_SEQUENCE).snapshot
    assert query(reloaded, run_id) == Completed(run_id)
    gone = run(finished, C.GO_OFFLINE).snapshot
    assert gone.steps is None
    assert query_final(gone, run_id) == Completed(run_id)


def test_steps_added_while_running_run_before_the_run_completes() -> None:
    snapshot = run(running("a"), C.ADD, commands=commands("late")).snapshot
    snapshot = drive(finish_in_flight(snapshot))
    assert [s.command for s in snapshot.steps or ()] == ["a", "late"]
    assert snapshot.run_result == Completed(snapshot.run_id or "")


def test_a_new_run_gets_a_new_run_id() -> None:
    first = drive(started("a"))
    second = run(first, C.SUBMIT, commands=commands("b")).snapshot
    assert second.run_id != first.run_id
    assert query(second, first.run_id or "") == Invalid(first.run_id or "")


def test_starting_an_emptied_list_completes_at_once() -> None:
    snapshot = loaded("a")
    emptied = run(snapshot, C.DELETE, id=(snapshot.steps or ()).steps[0].id).snapshot
    result = run(emptied, C.START_SEQUENCE)
    assert isinstance(result.response, Started)
    assert result.snapshot.state is IDLE
    assert result.snapshot.run_result == Completed(result.response.run_id)


# -- editor through the machine (checklist 18-28) --------------------------------------------


@pytest.mark.parametrize("build", [loaded, running], ids=["Loaded", "Running"])
@pytest.mark.parametrize(
    "command", [C.REPLACE, C.INSERT_AFTER, C.DELETE, C.ADD_BREAKPOINT, C.REMOVE_BREAKPOINT]
)
def test_an_unknown_step_id_answers_id_does_not_exist_with_404(build: Any, command: Any) -> None:
    before = build()
    result = run(before, command, id="nope")
    assert result.response == IdDoesNotExist("nope")
    assert result.response.to_json() == {"type": "IdDoesNotExist", "id": "nope"}
    assert http_status(result.response) == 404
    assert result.snapshot == before


@pytest.mark.parametrize("command", [C.REPLACE, C.DELETE, C.ADD_BREAKPOINT])
def test_editing_the_in_flight_step_answers_cannot_operate_with_409(command: Any) -> None:
    before = running("a", "b")
    in_flight = before.steps.in_flight if before.steps else None
    assert in_flight is not None
    result = run(before, command, id=in_flight.id)
    assert result.response == CannotOperateOnAnInFlightOrFinishedStep()
    assert http_status(result.response) == 409
    assert result.snapshot == before


def test_insert_after_a_step_followed_by_a_finished_one_cannot_operate() -> None:
    snapshot = finish_in_flight(running("a", "b", "c"))
    pulled = next_step(snapshot)
    assert pulled is not None
    first = (pulled[0].steps or ()).steps[0]
    result = run(pulled[0], C.INSERT_AFTER, id=first.id)
    assert isinstance(result.response, CannotOperateOnAnInFlightOrFinishedStep)


def test_editor_commands_after_a_run_finished_are_unhandled_in_idle() -> None:
    finished = drive(started("a"))
    for command in EDITORS:
        answer = run(finished, command).response
        assert answer == Unhandled(IDLE, command.message_type)


def test_reset_in_loaded_clears_the_list_and_goes_idle() -> None:
    result = run(loaded(), C.RESET).snapshot
    assert (result.state, result.steps) == (IDLE, None)


def test_reset_in_running_drops_pending_steps_and_keeps_the_in_flight_one() -> None:
    result = run(running("a", "b", "c"), C.RESET).snapshot
    assert statuses(result) == [StepStatus.IN_FLIGHT]
    assert result.state is RUNNING
    assert finish_in_flight(result).run_result == Completed(result.run_id or "")


def test_editing_a_running_list_so_that_it_is_finished_completes_the_run() -> None:
    snapshot = run(running("a", "b"), C.PAUSE).snapshot
    snapshot = finish_in_flight(snapshot)
    assert snapshot.state is RUNNING  # held at the breakpoint before "b"
    last = (snapshot.steps or ()).steps[-1]
    result = run(snapshot, C.DELETE, id=last.id)
    assert result.response == Ok()
    assert result.snapshot.state is IDLE
    assert result.snapshot.run_result == Completed(snapshot.run_id or "")


def test_reset_while_paused_with_nothing_in_flight_completes_the_run() -> None:
    snapshot = finish_in_flight(run(running("a", "b"), C.PAUSE).snapshot)
    result = run(snapshot, C.RESET).snapshot
    assert result.state is IDLE
    assert statuses(result) == [StepStatus.SUCCESS]


# -- pause / resume / breakpoints (checklist 29-32) ------------------------------------------


def test_pause_halts_after_the_current_step_and_resume_continues() -> None:
    snapshot = run(running("a", "b"), C.PAUSE).snapshot
    snapshot = finish_in_flight(snapshot)
    assert next_step(snapshot) is None
    assert snapshot.state is RUNNING
    resumed = run(snapshot, C.RESUME).snapshot
    pulled = next_step(resumed)
    assert pulled is not None and pulled[1].command == "b"


def test_pause_with_no_pending_step_cannot_operate() -> None:
    result = run(running("a"), C.PAUSE)
    assert result.response == CannotOperateOnAnInFlightOrFinishedStep()


def test_resume_with_nothing_paused_is_ok() -> None:
    assert run(running("a"), C.RESUME).response == Ok()


def test_a_breakpoint_stops_before_its_step_and_removing_it_lets_the_step_run() -> None:
    snapshot = running("a", "b", "c")
    third = (snapshot.steps or ()).steps[2]
    snapshot = run(snapshot, C.ADD_BREAKPOINT, id=third.id).snapshot
    snapshot = drive(finish_in_flight(snapshot))
    assert statuses(snapshot) == [StepStatus.SUCCESS, StepStatus.SUCCESS, StepStatus.PENDING]
    assert snapshot.state is RUNNING
    snapshot = run(snapshot, C.REMOVE_BREAKPOINT, id=third.id).snapshot
    assert drive(snapshot).run_result == Completed(snapshot.run_id or "")


def test_a_breakpoint_on_the_first_step_holds_the_run_before_it_starts() -> None:
    snapshot = loaded("a", "b")
    first = (snapshot.steps or ()).steps[0]
    snapshot = run(snapshot, C.ADD_BREAKPOINT, id=first.id).snapshot
    snapshot = run(snapshot, C.START_SEQUENCE).snapshot
    assert next_step(snapshot) is None
    pulled = next_step(run(snapshot, C.RESUME).snapshot)
    assert pulled is not None and pulled[1].command == "a"


# -- abort / stop (checklist 33-37) ----------------------------------------------------------


@pytest.mark.parametrize("command", [C.ABORT_SEQUENCE, C.STOP])
@pytest.mark.parametrize("ok", [True, False], ids=["hook-ok", "hook-fails"])
def test_abort_and_stop_drop_pending_steps_and_let_the_in_flight_one_finish(
    command: CommandName, ok: bool
) -> None:
    result = run(running("a", "b", "c"), command, ok=ok)
    assert result.response == Ok()
    assert result.snapshot.state is RUNNING
    assert statuses(result.snapshot) == [StepStatus.IN_FLIGHT]
    finished = finish_in_flight(result.snapshot)
    assert finished.state is IDLE
    assert finished.run_result == Completed(finished.run_id or "")


@pytest.mark.parametrize("command", [C.ABORT_SEQUENCE, C.STOP])
def test_abort_before_any_step_started_completes_the_run_instead_of_hanging(
    command: CommandName,
) -> None:
    result = run(started("a", "b"), command)
    assert result.snapshot.state is IDLE
    assert result.snapshot.steps is not None and len(result.snapshot.steps) == 0
    assert result.snapshot.run_result == Completed(result.snapshot.run_id or "")


def test_stop_works_while_paused() -> None:
    snapshot = finish_in_flight(run(running("a", "b"), C.PAUSE).snapshot)
    result = run(snapshot, C.STOP).snapshot
    assert result.state is IDLE
    assert statuses(result) == [StepStatus.SUCCESS]


def test_a_step_result_during_abort_is_kept_and_the_run_completes_when_the_hook_ends() -> None:
    decision = hook(decide(running("a", "b"), request(C.ABORT_SEQUENCE)))
    during = finish_in_flight(decision.snapshot)
    assert during.display_state is PROCESSING  # completion waits for the hook
    assert statuses(during) == [StepStatus.SUCCESS, StepStatus.PENDING]
    assert next_step(during) is None  # no new step while a hook runs
    result = decision.on_success(during)
    assert result.snapshot.state is IDLE
    assert statuses(result.snapshot) == [StepStatus.SUCCESS]


def test_the_step_list_stays_readable_while_processing() -> None:
    before = running("a", "b")
    decision = hook(decide(before, request(C.STOP)))
    assert decision.snapshot.steps == before.steps
    assert decision.snapshot.to_json()["stepList"] == before.to_json()["stepList"]


# -- online / offline / modes (checklist 38-50) ----------------------------------------------


def test_go_offline_clears_the_list_and_go_online_returns_to_idle() -> None:
    snapshot = run(loaded(), C.GO_OFFLINE).snapshot
    assert (snapshot.state, snapshot.steps, snapshot.is_online) == (OFFLINE, None, False)
    back = run(snapshot, C.GO_ONLINE).snapshot
    assert back.state is IDLE and back.is_online
    assert run(back, C.LOAD_SEQUENCE).snapshot.state is LOADED


def test_go_offline_failing_keeps_the_state_and_the_list() -> None:
    before = loaded()
    result = run(before, C.GO_OFFLINE, ok=False)
    assert result.response == GoOfflineHookFailed("hook said no")
    assert result.snapshot == before


def test_go_online_failing_stays_offline() -> None:
    result = run(offline(), C.GO_ONLINE, ok=False)
    assert result.response == GoOnlineHookFailed("hook said no")
    assert result.snapshot.state is OFFLINE


def test_diagnostic_mode_passes_start_time_and_hint_to_the_hook() -> None:
    decision = hook(decide(running(), request(C.DIAGNOSTIC_MODE, hint="focus")))
    assert decision.call.handler is Handler.DIAGNOSTIC_MODE
    assert decision.call.args == {"startTime": "2026-01-01T00:00:00+00:00", "hint": "focus"}


@pytest.mark.parametrize(
    ("command", "failed"),
    [(C.DIAGNOSTIC_MODE, DiagnosticHookFailed), (C.OPERATIONS_MODE, OperationsHookFailed)],
)
def test_mode_hooks_failing_answer_their_failure_and_keep_the_state(
    command: CommandName, failed: type
) -> None:
    before = running()
    result = run(before, command, ok=False)
    assert result.response == failed("hook said no")
    assert http_status(result.response) == 422
    assert result.snapshot == before


def test_a_run_that_finished_during_a_mode_hook_completes_when_the_hook_ends() -> None:
    decision = hook(decide(running("a"), request(C.OPERATIONS_MODE)))
    during = finish_in_flight(decision.snapshot)
    assert during.state is RUNNING
    assert decision.on_success(during).snapshot.state is IDLE


def test_the_state_path_through_a_run_and_offline_and_back() -> None:
    path = [idle()]
    path.append(run(path[-1], C.LOAD_SEQUENCE).snapshot)
    path.append(run(path[-1], C.START_SEQUENCE).snapshot)
    path.append(drive(path[-1]))
    path.append(run(path[-1], C.GO_OFFLINE).snapshot)
    path.append(run(path[-1], C.GO_ONLINE).snapshot)
    assert [s.display_state for s in path] == [IDLE, LOADED, RUNNING, IDLE, OFFLINE, IDLE]


# -- Processing and shutdown -----------------------------------------------------------------


@pytest.mark.parametrize("command", [c for c in CommandName if c is not C.SHUTDOWN])
def test_while_a_hook_runs_every_command_but_shutdown_is_unhandled_in_processing(
    command: CommandName,
) -> None:
    before = processing()
    result = done(decide(before, request(command, before)))
    assert result.response == Unhandled(PROCESSING, command.message_type)
    assert result.snapshot == before


def test_shutdown_during_a_hook_supersedes_it() -> None:
    start = hook(decide(loaded(), request(C.START_SEQUENCE)))
    shutdown = hook(decide(start.snapshot, request(C.SHUTDOWN)))
    late = start.on_success(shutdown.snapshot)
    assert late.response == Unhandled(PROCESSING, "StartSequence")
    assert late.snapshot == shutdown.snapshot
    gone = shutdown.on_success(late.snapshot)
    assert gone.snapshot.state is KILLED
    assert start.on_failure("x", gone.snapshot).response == Unhandled(KILLED, "StartSequence")


def test_a_second_shutdown_also_answers_ok() -> None:
    first = hook(decide(running(), request(C.SHUTDOWN)))
    second = hook(decide(first.snapshot, request(C.SHUTDOWN)))
    end = second.on_success()
    assert first.on_success(end.snapshot) == Done(Ok(), end.snapshot)


def test_shutdown_while_running_gives_the_run_a_final_error_for_query_final() -> None:
    snapshot = running()
    result = run(snapshot, C.SHUTDOWN).snapshot
    answer = query_final(result, snapshot.run_id or "")
    assert isinstance(answer, Error)
    assert "shut down" in answer.msg


def test_after_killed_step_results_and_engine_do_nothing() -> None:
    snapshot = run(running("a"), C.SHUTDOWN).snapshot
    assert finish_in_flight(snapshot) == snapshot
    assert next_step(snapshot) is None


def test_completing_a_hook_twice_changes_nothing_the_second_time() -> None:
    decision = hook(decide(offline(), request(C.GO_ONLINE)))
    first = decision.on_success()
    again = complete_handler(first.snapshot, decision.call, ok=True)
    assert again == Done(Unhandled(IDLE, "GoOnline"), first.snapshot)


# -- requests, responses, persistence --------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "body", "message"),
    [
        ("launch", None, "unknown sequencer command 'launch'"),
        ("add", None, "commands: expected a list, got null"),
        ("replace", {"commands": commands("x")}, "id: expected the id of a step"),
        ("delete", {"id": ""}, "id: expected the id of a step"),
        ("insertAfter", {"id": "s"}, "commands: missing"),
        ("diagnosticMode", {"hint": "x"}, "startTime: expected an ISO 8601 time, got None"),
        ("diagnosticMode", {"startTime": "yesterday"}, "startTime: expected an ISO 8601 time"),
        ("diagnosticMode", {"startTime": "2026-01-01T00:00:00Z", "hint": 3}, "hint: expected"),
    ],
)
def test_request_parse_names_the_problem(command: str, body: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Request.parse(command, body)


def test_request_parse_ignores_bodies_of_commands_that_take_none() -> None:
    assert Request.parse("startSequence", "anything") == Request(C.START_SEQUENCE)
    assert Request.parse("diagnosticMode", {"startTime": "2026-01-01T00:00:00Z"}).args == {
        "startTime": "2026-01-01T00:00:00Z",
        "hint": "",
    }


@pytest.mark.parametrize(
    ("response", "status"),
    [
        (Ok(), 200),
        (Started("r"), 200),
        (Completed("r"), 200),
        (Error("r", "m"), 200),
        (Invalid("r"), 200),
        (Unhandled(IDLE, "Add"), 409),
        (CannotOperateOnAnInFlightOrFinishedStep(), 409),
        (IdDoesNotExist("s"), 404),
        (GoOnlineHookFailed("m"), 422),
        (GoOfflineHookFailed("m"), 422),
        (DiagnosticHookFailed("m"), 422),
        (OperationsHookFailed("m"), 422),
        (NewSequenceHookFailed("m"), 422),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, int) else str(v),
)
def test_http_status_of_each_response(response: Any, status: int) -> None:
    assert http_status(response) == status


def test_responses_serialise_to_the_design_shapes() -> None:
    assert Ok().to_json() == {"type": "Ok"}
    assert Started("r1").to_json() == {"type": "Started", "runId": "r1"}
    assert Completed("r1").to_json() == {"type": "Completed", "runId": "r1"}
    assert CannotOperateOnAnInFlightOrFinishedStep().to_json() == {
        "type": "CannotOperateOnAnInFlightOrFinishedStep"
    }
    assert GoOfflineHookFailed("m").to_json() == {"type": "GoOfflineHookFailed", "msg": "m"}


@pytest.mark.parametrize("build", [idle, loaded, running, offline, killed, processing])
def test_a_snapshot_round_trips_through_json(build: Any) -> None:
    snapshot = build()
    assert Snapshot.from_json(snapshot.to_json()) == snapshot


def test_a_pending_submit_round_trips_with_its_list() -> None:
    decision = hook(decide(idle(), request(C.SUBMIT)))
    restored = Snapshot.from_json(decision.snapshot.to_json())
    assert restored.pending == decision.call
    assert isinstance(restored.pending, PendingCall)
    assert complete_handler(restored, restored.pending, ok=True).snapshot.state is RUNNING


def test_a_stored_processing_state_is_rejected() -> None:
    with pytest.raises(ValueError, match="Processing"):
        Snapshot.from_json({"state": "Processing", "pending": None})


# -- random walk -----------------------------------------------------------------------------


def allowed_outcomes(state: State, command: CommandName) -> tuple[set[str], set[State]] | None:
    """Responses and stable states a command may produce at once; None when a hook runs."""
    expect = TABLE[(state, command)]
    if expect.failure is not None:
        return None
    states = {expect.state or state}
    answers = {expect.response}
    if expect is EDIT or command is C.PAUSE:
        answers |= {"IdDoesNotExist", "CannotOperateOnAnInFlightOrFinishedStep"}
    if state is RUNNING and expect is not U:
        states.add(IDLE)  # an edit may finish the run
    return answers, states


def hook_outcomes(state: State, command: CommandName, ok: bool) -> tuple[str, set[State]]:
    expect = TABLE[(state, command)]
    assert expect.failure is not None and expect.state is not None
    answer, lands = (expect.response, expect.state) if ok else expect.failure
    states = {lands}
    if lands is RUNNING or (command in (C.DIAGNOSTIC_MODE, C.OPERATIONS_MODE) and state is RUNNING):
        states.add(IDLE)  # the run may finish at once, or finished while the hook ran
    return answer, states


class Walk:
    """Drives one sequencer with random commands, hook ends and step results."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.snapshot = Snapshot()
        self.hooks: list[tuple[RunHandler, State]] = []
        self.seen: dict[str, StepStatus] = {}
        self.commands_sent = 0

    def step(self) -> None:
        before = self.snapshot
        roll = self.rng.random()
        if self.hooks and self.rng.random() < 0.5:
            # Hooks end soon, as they do in a real sequencer: most commands meet no Processing.
            self.end_hook()
        elif roll < 0.6:
            self.send_command()
        elif roll < 0.8:
            pulled = next_step(self.snapshot)
            if self.snapshot.display_state is not RUNNING:
                assert pulled is None  # only a Running sequencer with no hook running executes
            if pulled is not None:
                assert pulled[1].status is StepStatus.IN_FLIGHT
                self.snapshot = pulled[0]
        else:
            self.finish_step()
        self.check(before)

    def send_command(self) -> None:
        before = self.snapshot
        command = self.rng.choice(list(CommandName))
        useful = [c for c in CommandName if TABLE[(before.display_state, c)] is not U]
        if self.rng.random() < 0.7 and len(useful) > 1:
            # Mostly commands the state accepts, so runs get far; shutdown stays rare.
            command = self.rng.choice([c for c in useful if c is not C.SHUTDOWN])
        body: dict[str, Any] = {"id": self.pick_id()}
        body["commands"] = commands(
            *(f"c{self.rng.randrange(99)}" for _ in range(self.rng.randint(1, 3)))
        )
        decision = decide(before, request(command, before, **body))
        self.commands_sent += 1
        shown = before.display_state
        if shown is KILLED or (shown is PROCESSING and command is not C.SHUTDOWN):
            assert done(decision).response == Unhandled(shown, command.message_type)
            assert decision.snapshot == before
            return
        outcomes = allowed_outcomes(before.state, command)
        if outcomes is None:
            decision = hook(decision)
            assert decision.snapshot.display_state is PROCESSING
            assert decision.snapshot.state is before.state
            self.hooks.append((decision, before.state))
        else:
            decision = done(decision)
            answers, states = outcomes
            assert type(decision.response).__name__ in answers, (before.state, command)
            assert decision.snapshot.display_state in states, (before.state, command)
            if not isinstance(decision.response, Ok):
                assert decision.snapshot == before
        self.snapshot = decision.snapshot

    def end_hook(self) -> None:
        decision, origin = self.hooks.pop(self.rng.randrange(len(self.hooks)))
        ok = self.rng.random() < 0.6
        current = self.snapshot
        result = decision.on_success(current) if ok else decision.on_failure("no", current)
        if current.pending != decision.call:
            assert result.snapshot == current
            expected = Ok() if decision.call.command is C.SHUTDOWN else None
            assert result.response == (
                expected or Unhandled(current.display_state, decision.call.command.message_type)
            )
        else:
            answer, states = hook_outcomes(origin, decision.call.command, ok)
            assert type(result.response).__name__ == answer
            assert result.snapshot.display_state in states
        self.snapshot = result.snapshot

    def finish_step(self) -> None:
        steps = self.snapshot.steps
        if steps is None or steps.in_flight is None:
            return
        before = self.snapshot
        ok = self.rng.random() < 0.8
        self.snapshot = step_finished(before, steps.in_flight.id, ok, "failed at random")
        if before.state is RUNNING and before.pending is None:
            assert self.snapshot.state in (RUNNING, IDLE)
        else:
            assert self.snapshot.state is before.state

    def pick_id(self) -> str:
        steps = self.snapshot.steps
        if steps and self.rng.random() < 0.9:
            return self.rng.choice(steps.steps).id
        return "bogus"

    def check(self, before: Snapshot) -> None:
        now = self.snapshot
        assert now.state is not PROCESSING
        assert (now.display_state is PROCESSING) is (now.pending is not None)
        if before.state is KILLED:
            assert now == before  # final: nothing moves any more
        if now.state is OFFLINE:
            assert now.steps is None
        if now.state is RUNNING:
            assert now.run_id is not None and now.run_result is None
            assert now.steps is not None
            if now.pending is None:
                assert not now.steps.is_finished
        elif now.run_id is not None:
            assert now.run_result is not None
        steps = list(now.steps or ())
        assert sum(s.status is StepStatus.IN_FLIGHT for s in steps) <= 1
        self.check_statuses(before, steps)

    def check_statuses(self, before: Snapshot, steps: list[Any]) -> None:
        old = {s.id: s.status for s in before.steps or ()}
        new = {s.id: s.status for s in steps}
        if old and new and old.keys() & new.keys():
            # The same list, edited: only Pending steps may go, statuses only move forward.
            assert all(old[i] is StepStatus.PENDING for i in old.keys() - new.keys())
        for step_id, status in new.items():
            previous = self.seen.get(step_id, StepStatus.PENDING)
            assert status is previous or is_forward_move(previous, status)
            self.seen[step_id] = status


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_random_commands_only_make_transitions_the_table_allows(seed: int) -> None:
    walk = Walk(seed)
    visited: set[State] = set()
    while walk.commands_sent < 2000:
        walk.step()
        visited.add(walk.snapshot.display_state)
        if walk.snapshot.state is KILLED and walk.rng.random() < 0.5:
            walk.snapshot, walk.hooks = Snapshot(), []  # a fresh sequencer takes its place
    assert visited == set(State)


def test_accepted_in_never_lists_killed_or_processing() -> None:
    assert all(not ({KILLED, PROCESSING} & states) for states in ACCEPTED_IN.values())
