"""The sequence component state machine of docs/architecture.md, as pure decisions: no I/O.

A component is Idle (no sequencer) or Running (hosts one). The caller performs the side
effects a decision asks for, in order: `unload` (shut the hosted sequencer down, → Killed; a
failing shutdown hook does not stop it), then `load` (start a sequencer with the script), and
answers with `decision.loaded(...)` after a load, else with `decision.response`:

    decision = decide_component(component.state, ComponentCommand.LOAD_SCRIPT)
    if decision.unload:
        shutdown_sequencer()
    if decision.load:
        ok, sequencer, error = start_sequencer(script, prefix)
        state, response = decision.loaded(ok, sequencer, error)
    else:
        state, response = decision.state, decision.response
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sequences.statemachine import Ok as ComponentOk
from sequences.statemachine import Unhandled


class ComponentState(StrEnum):
    IDLE = "Idle"
    RUNNING = "Running"


class ComponentCommand(StrEnum):
    """Component messages, spelled as ESW's message classes (their `Unhandled.messageType`)."""

    LOAD_SCRIPT = "LoadScript"
    UNLOAD_SCRIPT = "UnloadScript"
    RESTART = "RestartScript"
    GET_STATUS = "GetStatus"


@dataclass(frozen=True)
class SequencerLocation:
    """The sequencer now hosted; `sequencer` is the caller's JSON for it."""

    sequencer: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"type": "SequencerLocation", "sequencer": dict(self.sequencer)}


@dataclass(frozen=True)
class LoadingScriptFailed:
    msg: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "LoadingScriptFailed", "msg": self.msg}


@dataclass(frozen=True)
class ComponentUnhandled(Unhandled):
    @property
    def msg(self) -> str:
        # ESW's wording for components, which ends without "state".
        return f"Sequence Component can not accept '{self.message_type}' message in '{self.state}'"


@dataclass(frozen=True)
class ComponentStatus:
    """GetStatus: the state and the hosted sequencer (None in Idle); the API adds the name."""

    state: ComponentState
    sequencer: Mapping[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        sequencer = None if self.sequencer is None else dict(self.sequencer)
        return {"state": str(self.state), "sequencer": sequencer}


ComponentResponse = (
    ComponentOk | SequencerLocation | LoadingScriptFailed | ComponentUnhandled | ComponentStatus
)


def component_http_status(response: ComponentResponse) -> int:
    """200 success, 409 Unhandled, 422 LoadingScriptFailed (docs/api.md)."""
    if isinstance(response, ComponentUnhandled):
        return 409
    if isinstance(response, LoadingScriptFailed):
        return 422
    return 200


@dataclass(frozen=True)
class ComponentDecision:
    """What to do for one message. `state` / `response` are final unless `load` is set."""

    state: ComponentState
    response: ComponentResponse | None
    unload: bool = False
    load: bool = False

    def loaded(
        self, ok: bool, sequencer: Mapping[str, Any] | None = None, error: str = ""
    ) -> tuple[ComponentState, ComponentResponse]:
        """Outcome of the load: Running with the new sequencer, or Idle with the error.

        A failed restart also ends Idle: the old sequencer is gone, so the component must not
        keep claiming to host it (an ESW quirk).
        """
        if ok and sequencer is not None:
            return ComponentState.RUNNING, SequencerLocation(sequencer)
        return ComponentState.IDLE, LoadingScriptFailed(error or "the script failed to load")


def decide_component(
    state: ComponentState,
    command: ComponentCommand,
    sequencer: Mapping[str, Any] | None = None,
) -> ComponentDecision:
    """Apply the component table to one message; `sequencer` is the hosted one, for GetStatus."""
    idle, running = ComponentState.IDLE, ComponentState.RUNNING
    if command is ComponentCommand.GET_STATUS:
        hosted = sequencer if state is running else None
        return ComponentDecision(state, ComponentStatus(state, hosted))
    if command is ComponentCommand.UNLOAD_SCRIPT:
        return ComponentDecision(idle, ComponentOk(), unload=state is running)
    # LoadScript needs Idle; RestartScript needs Running. Otherwise nothing changes.
    wanted = idle if command is ComponentCommand.LOAD_SCRIPT else running
    if state is not wanted:
        return ComponentDecision(state, ComponentUnhandled(state, str(command)))
    return ComponentDecision(state, None, unload=state is running, load=True)
