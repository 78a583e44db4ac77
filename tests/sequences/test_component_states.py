"""Sequence component state machine (docs/architecture.md)."""

from __future__ import annotations

from typing import Any

import pytest

from sequences.component_states import (
    ComponentCommand,
    ComponentDecision,
    ComponentOk,
    ComponentState,
    ComponentStatus,
    ComponentUnhandled,
    LoadingScriptFailed,
    SequencerLocation,
    component_http_status,
    decide_component,
)

IDLE, RUNNING = ComponentState.IDLE, ComponentState.RUNNING
SEQUENCER = {"id": "s1", "prefix": "ESW.darknight", "state": "Idle"}


def test_load_script_in_idle_starts_a_sequencer_and_runs() -> None:
    decision = decide_component(IDLE, ComponentCommand.LOAD_SCRIPT)
    assert (decision.load, decision.unload, decision.response) == (True, False, None)
    state, response = decision.loaded(True, SEQUENCER)
    assert state is RUNNING
    assert response.to_json() == {"type": "SequencerLocation", "sequencer": SEQUENCER}
    assert component_http_status(response) == 200


def test_a_script_failing_to_load_leaves_the_component_idle_with_the_reason() -> None:
    state, response = decide_component(IDLE, ComponentCommand.LOAD_SCRIPT).loaded(
        False, None, "script() raised ValueError: no"
    )
    assert state is IDLE
    assert response == LoadingScriptFailed("script() raised ValueError: no")
    assert response.to_json() == {"type": "LoadingScriptFailed", "msg": response.msg}
    assert component_http_status(response) == 422


def test_load_script_while_running_is_unhandled_and_changes_nothing() -> None:
    decision = decide_component(RUNNING, ComponentCommand.LOAD_SCRIPT)
    assert decision == ComponentDecision(RUNNING, ComponentUnhandled(RUNNING, "LoadScript"))
    assert decision.response is not None
    assert decision.response.to_json() == {
        "type": "Unhandled",
        "state": "Running",
        "messageType": "LoadScript",
        "msg": "Sequence Component can not accept 'LoadScript' message in 'Running'",
    }
    assert component_http_status(decision.response) == 409


def test_unload_script_shuts_the_sequencer_down_and_goes_idle() -> None:
    decision = decide_component(RUNNING, ComponentCommand.UNLOAD_SCRIPT)
    assert decision == ComponentDecision(IDLE, ComponentOk(), unload=True)


def test_unload_script_in_idle_is_a_no_op_ok() -> None:
    decision = decide_component(IDLE, ComponentCommand.UNLOAD_SCRIPT)
    assert decision == ComponentDecision(IDLE, ComponentOk())


def test_restart_unloads_then_loads_the_same_script_again() -> None:
    decision = decide_component(RUNNING, ComponentCommand.RESTART)
    assert (decision.unload, decision.load, decision.response) == (True, True, None)
    assert decision.loaded(True, SEQUENCER) == (RUNNING, SequencerLocation(SEQUENCER))


def test_a_failed_restart_leaves_the_component_idle_not_claiming_a_dead_sequencer() -> None:
    state, response = decide_component(RUNNING, ComponentCommand.RESTART).loaded(False)
    assert state is IDLE
    assert isinstance(response, LoadingScriptFailed) and response.msg


def test_restart_in_idle_is_unhandled() -> None:
    decision = decide_component(IDLE, ComponentCommand.RESTART)
    assert decision.response == ComponentUnhandled(IDLE, "RestartScript")
    assert (decision.state, decision.load, decision.unload) == (IDLE, False, False)


@pytest.mark.parametrize(
    ("state", "sequencer", "shown"), [(IDLE, None, None), (RUNNING, SEQUENCER, SEQUENCER)]
)
def test_get_status_shows_the_state_and_the_hosted_sequencer(
    state: ComponentState, sequencer: Any, shown: Any
) -> None:
    decision = decide_component(state, ComponentCommand.GET_STATUS, sequencer)
    assert decision == ComponentDecision(state, ComponentStatus(state, shown))
    assert decision.response is not None
    assert decision.response.to_json() == {"state": str(state), "sequencer": shown}


def test_get_status_in_idle_ignores_a_stale_sequencer() -> None:
    decision = decide_component(IDLE, ComponentCommand.GET_STATUS, SEQUENCER)
    assert decision.response == ComponentStatus(IDLE, None)


@pytest.mark.parametrize("state", list(ComponentState))
@pytest.mark.parametrize("command", list(ComponentCommand))
def test_every_message_in_every_state_ends_idle_or_running(
    state: ComponentState, command: ComponentCommand
) -> None:
    decision = decide_component(state, command, SEQUENCER)
    assert (decision.response is None) is decision.load
    outcomes = [decision.loaded(True, SEQUENCER), decision.loaded(False)] if decision.load else []
    assert all(s in (IDLE, RUNNING) for s, _ in outcomes)
    if isinstance(decision.response, ComponentUnhandled):
        assert decision.state is state and not decision.unload
