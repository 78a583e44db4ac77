"""Step list: ESW editor rules (tmt-esw.md §2, checklist 18-31), execution queries, JSON."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from sequences.steplist import (
    Command,
    Step,
    StepList,
    StepNotEditableError,
    StepStatus,
    StepType,
    UnknownStepError,
    commands_from_json,
    is_forward_move,
)

P, F, S, X = StepStatus.PENDING, StepStatus.IN_FLIGHT, StepStatus.SUCCESS, StepStatus.FAILURE


def cmds(*names: str) -> tuple[Command, ...]:
    return tuple(Command(StepType.SETUP, name, {"n": name}) for name in names)


def make(*statuses: StepStatus) -> StepList:
    """A list of steps named s0, s1, ... driven through the allowed moves to `statuses`."""
    steps = StepList.from_commands(cmds(*(f"s{i}" for i in range(len(statuses)))))
    for step, status in zip(steps.steps, statuses, strict=True):
        if status is not P:
            steps = steps.mark_in_flight(step.id)
        if status is S:
            steps = steps.mark_success(step.id)
        if status is X:
            steps = steps.mark_failure(step.id, "boom")
    return steps


def names(steps: StepList) -> list[str]:
    return [s.command for s in steps]


def ids(steps: StepList) -> list[str]:
    return [s.id for s in steps]


# -- building --------------------------------------------------------------------------------


def test_new_steps_are_pending_without_breakpoint_and_have_distinct_uuid_ids() -> None:
    steps = StepList.from_commands(cmds("a", "b", "c"))
    assert [s.status for s in steps] == [P, P, P]
    assert not any(s.has_breakpoint for s in steps)
    assert len(set(ids(steps))) == 3
    assert all(str(uuid.UUID(i)) == i for i in ids(steps))


def test_operations_leave_the_original_list_untouched() -> None:
    steps = make(P, P)
    before = steps.to_json()
    steps.add(cmds("x"))
    steps.delete(steps.steps[0].id)
    steps.add_breakpoint(steps.steps[1].id)
    steps.mark_in_flight(steps.steps[0].id)
    assert steps.to_json() == before


# -- editor rules ----------------------------------------------------------------------------


def test_add_appends_new_steps_at_the_end() -> None:
    steps = make(S, F, P).add(cmds("x", "y"))
    assert names(steps) == ["s0", "s1", "s2", "x", "y"]
    assert [s.status for s in steps][-2:] == [P, P]


def test_prepend_puts_new_steps_before_the_first_pending_step() -> None:
    assert names(make(S, F, P, P).prepend(cmds("x"))) == ["s0", "s1", "x", "s2", "s3"]


def test_prepend_puts_new_steps_at_the_end_when_none_is_pending() -> None:
    assert names(make(S, F).prepend(cmds("x", "y"))) == ["s0", "s1", "x", "y"]


def test_replace_swaps_a_pending_step_for_new_steps_at_the_same_position() -> None:
    steps = make(S, P, P)
    replaced = steps.replace(steps.steps[1].id, cmds("x", "y"))
    assert names(replaced) == ["s0", "x", "y", "s2"]
    assert steps.steps[1].id not in ids(replaced)


@pytest.mark.parametrize("status", [F, S, X])
def test_replace_refuses_an_in_flight_or_finished_step(status: StepStatus) -> None:
    steps = make(status, P)
    with pytest.raises(StepNotEditableError):
        steps.replace(steps.steps[0].id, cmds("x"))


def test_delete_removes_a_pending_step() -> None:
    steps = make(S, P, P)
    assert names(steps.delete(steps.steps[1].id)) == ["s0", "s2"]


@pytest.mark.parametrize("status", [F, S, X])
def test_delete_refuses_an_in_flight_or_finished_step(status: StepStatus) -> None:
    steps = make(status)
    with pytest.raises(StepNotEditableError):
        steps.delete(steps.steps[0].id)


def test_insert_after_puts_new_steps_right_after_the_target_when_the_next_is_pending() -> None:
    steps = make(S, P, P)
    assert names(steps.insert_after(steps.steps[1].id, cmds("x"))) == ["s0", "s1", "x", "s2"]


@pytest.mark.parametrize("status", [F, S, X])
def test_insert_after_a_finished_or_in_flight_target_is_allowed_when_the_next_is_pending(
    status: StepStatus,
) -> None:
    steps = make(status, P)
    assert names(steps.insert_after(steps.steps[0].id, cmds("x"))) == ["s0", "x", "s1"]


@pytest.mark.parametrize("status", [P, F, S])
def test_insert_after_the_last_step_is_allowed_whatever_its_status(status: StepStatus) -> None:
    steps = make(S, status) if status is not S else make(S, S)
    assert names(steps.insert_after(steps.steps[-1].id, cmds("x"))) == ["s0", "s1", "x"]


@pytest.mark.parametrize("status", [F, S])
def test_insert_after_refuses_when_the_following_step_is_in_flight_or_finished(
    status: StepStatus,
) -> None:
    steps = make(S, status, P)
    with pytest.raises(StepNotEditableError):
        steps.insert_after(steps.steps[0].id, cmds("x"))


def test_add_breakpoint_flags_a_pending_step() -> None:
    steps = make(S, P)
    assert [s.has_breakpoint for s in steps.add_breakpoint(steps.steps[1].id)] == [False, True]


@pytest.mark.parametrize("status", [F, S, X])
def test_add_breakpoint_refuses_an_in_flight_or_finished_step(status: StepStatus) -> None:
    steps = make(status)
    with pytest.raises(StepNotEditableError):
        steps.add_breakpoint(steps.steps[0].id)


@pytest.mark.parametrize("status", [P, F, S, X])
def test_remove_breakpoint_works_on_any_step_even_without_a_breakpoint(
    status: StepStatus,
) -> None:
    steps = make(status)
    assert steps.remove_breakpoint(steps.steps[0].id) == steps


def test_remove_breakpoint_clears_the_flag() -> None:
    steps = make(P)
    step_id = steps.steps[0].id
    assert not steps.add_breakpoint(step_id).remove_breakpoint(step_id).steps[0].has_breakpoint


@pytest.mark.parametrize(
    "operation",
    [
        lambda s: s.replace("nope", cmds("x")),
        lambda s: s.insert_after("nope", cmds("x")),
        lambda s: s.delete("nope"),
        lambda s: s.add_breakpoint("nope"),
        lambda s: s.remove_breakpoint("nope"),
        lambda s: s.get("nope"),
    ],
    ids=["replace", "insert_after", "delete", "add_breakpoint", "remove_breakpoint", "get"],
)
def test_operations_on_an_unknown_id_raise_unknown_step_naming_the_id(operation: Any) -> None:
    with pytest.raises(UnknownStepError) as raised:
        operation(make(S, P))
    assert raised.value.step_id == "nope"


def test_unknown_id_is_reported_before_the_status_rule() -> None:
    with pytest.raises(UnknownStepError):
        make(S).delete("nope")


def test_discard_pending_keeps_finished_and_in_flight_steps() -> None:
    assert [s.status for s in make(S, X, F, P, P).discard_pending()] == [S, X, F]


# -- pause, resume, breakpoints --------------------------------------------------------------


def test_pause_puts_a_breakpoint_on_the_step_after_the_one_in_flight() -> None:
    paused = make(S, F, P, P).pause()
    assert [s.has_breakpoint for s in paused] == [False, False, True, False]
    assert paused.is_paused


def test_pause_with_no_pending_step_is_refused() -> None:
    with pytest.raises(StepNotEditableError):
        make(S, F).pause()


def test_resume_clears_the_breakpoint_of_the_next_pending_step() -> None:
    resumed = make(F, P).pause().resume()
    assert not resumed.is_paused
    assert not any(s.has_breakpoint for s in resumed)


def test_resume_with_nothing_to_resume_is_a_no_op() -> None:
    steps = make(S, F)
    assert steps.resume() == steps
    unpaused = make(P)
    assert unpaused.resume() == unpaused


def test_next_executable_is_the_first_pending_step() -> None:
    steps = make(S, P, P)
    assert steps.next_pending == steps.next_executable == steps.steps[1]


def test_nothing_is_executable_while_a_step_is_in_flight() -> None:
    steps = make(S, F, P)
    assert steps.is_in_flight
    assert steps.in_flight == steps.steps[1]
    assert steps.next_executable is None


def test_a_breakpoint_stops_execution_before_its_step_until_removed() -> None:
    steps = make(S, P, P)
    held = steps.add_breakpoint(steps.steps[1].id)
    assert held.is_paused
    assert held.next_pending == held.steps[1]
    assert held.next_executable is None
    released = held.remove_breakpoint(steps.steps[1].id)
    assert released.next_executable == released.steps[1]


def test_a_breakpoint_on_a_later_step_does_not_pause() -> None:
    steps = make(P, P)
    later = steps.add_breakpoint(steps.steps[1].id)
    assert not later.is_paused
    assert later.next_executable == later.steps[0]


def test_nothing_is_executable_after_a_failure_the_rest_stays_pending() -> None:
    steps = make(S, X, P)
    assert steps.next_pending == steps.steps[2]
    assert steps.next_executable is None
    assert steps.first_failure == steps.steps[1]


@pytest.mark.parametrize(
    ("statuses", "finished"),
    [
        ((S, S), True),
        ((S, X, P, P), True),
        ((), True),
        ((S, F), False),
        ((S, P), False),
        ((P,), False),
    ],
    ids=["all-success", "failure-rest-pending", "empty", "in-flight", "pending", "fresh"],
)
def test_a_list_is_finished_when_nothing_is_left_to_run(
    statuses: tuple[StepStatus, ...], finished: bool
) -> None:
    assert make(*statuses).is_finished is finished


# -- status moves ----------------------------------------------------------------------------


def test_steps_move_pending_to_in_flight_to_success_or_failure() -> None:
    steps = make(P, P)
    a, b = ids(steps)
    steps = steps.mark_in_flight(a).mark_success(a).mark_in_flight(b).mark_failure(b, "why")
    assert [s.status for s in steps] == [S, X]
    assert steps.steps[1].message == "why"
    assert steps.steps[0].message is None


@pytest.mark.parametrize(
    ("start", "move"),
    [
        (P, "success"),
        (P, "failure"),
        (F, "in_flight"),
        (S, "in_flight"),
        (S, "failure"),
        (X, "success"),
        (X, "in_flight"),
    ],
)
def test_status_moves_that_are_not_forward_are_ignored(start: StepStatus, move: str) -> None:
    steps = make(start)
    step_id = steps.steps[0].id
    moved = {
        "in_flight": lambda: steps.mark_in_flight(step_id),
        "success": lambda: steps.mark_success(step_id),
        "failure": lambda: steps.mark_failure(step_id, "x"),
    }[move]()
    assert moved == steps


def test_a_second_step_cannot_go_in_flight_while_one_is() -> None:
    steps = make(F, P)
    assert steps.mark_in_flight(steps.steps[1].id) == steps


def test_results_for_unknown_steps_are_ignored() -> None:
    steps = make(F)
    assert steps.mark_success("gone") == steps
    assert steps.mark_failure("gone", "x") == steps
    assert steps.mark_in_flight("gone") == steps


def test_forward_moves_are_exactly_the_allowed_transitions() -> None:
    allowed = {(a, b) for a in StepStatus for b in StepStatus if is_forward_move(a, b)}
    assert allowed == {(P, F), (F, S), (F, X)}


# -- JSON ------------------------------------------------------------------------------------


def test_step_json_has_the_api_keys_and_values() -> None:
    steps = make(S, X, P)
    steps = steps.add_breakpoint(steps.steps[2].id)
    data = steps.to_json()
    assert [list(d) for d in data] == [
        ["id", "type", "command", "params", "status", "hasBreakpoint", "message"]
    ] * 3
    assert data[1] == {
        "id": steps.steps[1].id,
        "type": "Setup",
        "command": "s1",
        "params": {"n": "s1"},
        "status": "Failure",
        "hasBreakpoint": False,
        "message": "boom",
    }
    assert data[2]["hasBreakpoint"] is True
    assert data[2]["status"] == "Pending"


def test_step_list_json_round_trips() -> None:
    steps = make(S, X, P).add(cmds("deep"))
    assert StepList.from_json(steps.to_json()) == steps


def test_to_json_copies_params_so_callers_cannot_change_a_step() -> None:
    steps = StepList.from_commands(commands_from_json([{"type": "Setup", "command": "a"}]))
    steps.to_json()[0]["params"]["x"] = 1
    assert steps.steps[0].params == {}


@pytest.mark.parametrize(
    ("mangle", "problem"),
    [
        (lambda d: d.__setitem__(1, dict(d[0])), "unique"),
        (lambda d: [s.__setitem__("status", "InFlight") for s in d], "at most one"),
        (lambda d: d[0].__setitem__("status", "Done"), "stepList[0].status"),
        (lambda d: d[0].__setitem__("hasBreakpoint", "yes"), "stepList[0].hasBreakpoint"),
        (lambda d: d[1].__setitem__("message", 3), "stepList[1].message"),
        (lambda d: d[1].pop("id"), "stepList[1].id: missing"),
    ],
)
def test_from_json_rejects_corrupt_lists(mangle: Any, problem: str) -> None:
    data = make(P, P).to_json()
    mangle(data)
    with pytest.raises(ValueError, match=re.escape(problem)):
        StepList.from_json(data)


def test_from_json_rejects_a_non_list() -> None:
    with pytest.raises(ValueError, match="expected a list"):
        StepList.from_json({"steps": []})


def test_step_from_json_reads_one_step() -> None:
    step = make(X).steps[0]
    assert Step.from_json(step.to_json()) == step


# -- parsing client input --------------------------------------------------------------------


def test_commands_from_json_accepts_a_list_or_an_object_with_commands() -> None:
    items = [
        {"type": "Setup", "command": "move", "params": {"x": 1.5, "axes": ["a", None]}},
        {"type": "Observe", "command": "expose"},
    ]
    expected = (
        Command(StepType.SETUP, "move", {"x": 1.5, "axes": ["a", None]}),
        Command(StepType.OBSERVE, "expose", {}),
    )
    assert commands_from_json(items) == expected
    assert commands_from_json({"commands": items}) == expected


def test_commands_from_json_ignores_extra_keys_so_read_steps_can_be_sent_again() -> None:
    step = make(S).to_json()
    assert commands_from_json(step) == (Command(StepType.SETUP, "s0", {"n": "s0"}),)


def test_commands_from_json_copies_params() -> None:
    params: dict[str, Any] = {"deep": {"x": 1}}
    (command,) = commands_from_json([{"type": "Setup", "command": "a", "params": params}])
    params["deep"]["x"] = 2
    assert command.params == {"deep": {"x": 1}}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("move", "commands: expected a list, got a string"),
        ({"steps": []}, "commands: missing"),
        ([], "commands: expected at least one command"),
        ({"commands": None}, "commands: expected a list, got null"),
        ([7], r"commands\[0\]: expected an object, got a number"),
        ([{"command": "a"}], r"commands\[0\]\.type: missing \(expected 'Setup' or 'Observe'\)"),
        (
            [{"type": "Setup", "command": "a"}, {"type": "setup", "command": "b"}],
            r"commands\[1\]\.type: expected 'Setup' or 'Observe', got 'setup'",
        ),
        ([{"type": "Setup"}], r"commands\[0\]\.command: missing"),
        (
            [{"type": "Setup", "command": ""}],
            r"commands\[0\]\.command: expected a non-empty string, got an empty string",
        ),
        (
            [{"type": "Setup", "command": 5}],
            r"commands\[0\]\.command: expected a non-empty string, got a number",
        ),
        (
            [{"type": "Setup", "command": "a", "params": [1]}],
            r"commands\[0\]\.params: expected an object, got a list",
        ),
        (
            [{"type": "Setup", "command": "a", "params": "x=1"}],
            r"commands\[0\]\.params: expected an object, got a string",
        ),
        (
            [{"type": "Setup", "command": "a", "params": {"x": float("nan")}}],
            r"commands\[0\]\.params\.x: nan is not a JSON number",
        ),
        (
            [{"type": "Setup", "command": "a", "params": {"x": [{1: 2}]}}],
            r"commands\[0\]\.params\.x\[0\]: object keys must be strings",
        ),
        (
            [{"type": "Setup", "command": "a", "params": {"x": {1, 2}}}],
            r"commands\[0\]\.params\.x: set is not a JSON value",
        ),
    ],
)
def test_commands_from_json_names_the_problem(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        commands_from_json(value)
