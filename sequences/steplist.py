"""A sequencer's step list: steps, their statuses, and the ESW editor rules.

Pure and immutable: every operation returns a new `StepList` and leaves the old one untouched,
so a caller can compute a change, persist it, and simply drop it if anything else fails.
Editor refusals are raised as `UnknownStepError` / `StepNotEditableError`.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, TypeVar

_E = TypeVar("_E", bound=StrEnum)


class StepType(StrEnum):
    SETUP = "Setup"
    OBSERVE = "Observe"


class StepStatus(StrEnum):
    PENDING = "Pending"
    IN_FLIGHT = "InFlight"
    SUCCESS = "Success"
    FAILURE = "Failure"

    @property
    def is_finished(self) -> bool:
        return self in (StepStatus.SUCCESS, StepStatus.FAILURE)


# The only moves a step makes; any other update is ignored, as ESW's `withStatus` does.
_FORWARD: dict[StepStatus, frozenset[StepStatus]] = {
    StepStatus.PENDING: frozenset({StepStatus.IN_FLIGHT}),
    StepStatus.IN_FLIGHT: frozenset({StepStatus.SUCCESS, StepStatus.FAILURE}),
    StepStatus.SUCCESS: frozenset(),
    StepStatus.FAILURE: frozenset(),
}


def is_forward_move(old: StepStatus, new: StepStatus) -> bool:
    """Whether a step may go from `old` to `new` (Pending → InFlight → Success | Failure)."""
    return new in _FORWARD[old]


class StepListError(Exception):
    """An editor operation that the rules refuse."""


class UnknownStepError(StepListError):
    """No step has this id (ESW `IdDoesNotExist`)."""

    def __init__(self, step_id: str) -> None:
        super().__init__(f"no step with id {step_id!r}")
        self.step_id = step_id


class StepNotEditableError(StepListError):
    """The step is InFlight or finished (ESW `CannotOperateOnAnInFlightOrFinishedStep`)."""


@dataclass(frozen=True)
class Command:
    """What a client asks a step to do: `{type, command, params}`."""

    type: StepType
    command: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One step of a list. `params` is treated as read-only; `message` is set on Failure."""

    id: str
    type: StepType
    command: str
    params: dict[str, Any]
    status: StepStatus = StepStatus.PENDING
    has_breakpoint: bool = False
    message: str | None = None

    @classmethod
    def new(cls, command: Command) -> Step:
        """A Pending step for `command`, with a fresh uuid."""
        return cls(str(uuid.uuid4()), command.type, command.command, dict(command.params))

    @property
    def is_pending(self) -> bool:
        return self.status is StepStatus.PENDING

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": str(self.type),
            "command": self.command,
            "params": _copy_json(self.params),
            "status": str(self.status),
            "hasBreakpoint": self.has_breakpoint,
            "message": self.message,
        }

    @classmethod
    def from_json(cls, value: Any, where: str = "step") -> Step:
        """Read a step written by `to_json`; `ValueError` names the first bad field."""
        obj = _expect_object(value, where)
        message = obj.get("message")
        if message is not None and not isinstance(message, str):
            raise ValueError(f"{where}.message: expected a string or null, got {_kind(message)}")
        has_breakpoint = obj.get("hasBreakpoint", False)
        if not isinstance(has_breakpoint, bool):
            raise ValueError(
                f"{where}.hasBreakpoint: expected a boolean, got {_kind(has_breakpoint)}"
            )
        command = _command_from_json(obj, where)
        return cls(
            id=_non_empty_string(obj, "id", where),
            type=command.type,
            command=command.command,
            params=command.params,
            status=_enum_field(obj, "status", StepStatus, where),
            has_breakpoint=has_breakpoint,
            message=message,
        )


@dataclass(frozen=True)
class StepList:
    """An ordered, immutable list of steps with the ESW editor and execution rules."""

    steps: tuple[Step, ...] = ()

    @classmethod
    def from_commands(cls, commands: Iterable[Command]) -> StepList:
        return cls(tuple(Step.new(c) for c in commands))

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def get(self, step_id: str) -> Step:
        return self.steps[self._index(step_id)]

    def find(self, step_id: str) -> Step | None:
        return next((s for s in self.steps if s.id == step_id), None)

    # -- editor operations (tmt-esw.md §2) ---------------------------------------------------

    def add(self, commands: Iterable[Command]) -> StepList:
        """Append new steps at the end."""
        return self._splice(len(self.steps), 0, commands)

    def prepend(self, commands: Iterable[Command]) -> StepList:
        """Insert new steps before the first Pending step, or at the end when none is pending."""
        first = next((i for i, s in enumerate(self.steps) if s.is_pending), len(self.steps))
        return self._splice(first, 0, commands)

    def replace(self, step_id: str, commands: Iterable[Command]) -> StepList:
        """Replace a Pending step by new steps at the same position."""
        return self._splice(self._pending_index(step_id), 1, commands)

    def insert_after(self, step_id: str, commands: Iterable[Command]) -> StepList:
        """Insert new steps after a step; the step after it must be Pending, or it must be last."""
        index = self._index(step_id)
        following = self.steps[index + 1] if index + 1 < len(self.steps) else None
        if following is not None and not following.is_pending:
            raise StepNotEditableError(f"the step after {step_id!r} is {following.status}")
        return self._splice(index + 1, 0, commands)

    def delete(self, step_id: str) -> StepList:
        """Remove a Pending step."""
        return self._splice(self._pending_index(step_id), 1, ())

    def add_breakpoint(self, step_id: str) -> StepList:
        """Put a breakpoint on a Pending step: execution stops before it."""
        return self._with_step(self._pending_index(step_id), has_breakpoint=True)

    def remove_breakpoint(self, step_id: str) -> StepList:
        """Clear the breakpoint of any step; a no-op when it has none."""
        return self._with_step(self._index(step_id), has_breakpoint=False)

    def discard_pending(self) -> StepList:
        """Drop every Pending step (reset in Running, abort, stop)."""
        return StepList(tuple(s for s in self.steps if not s.is_pending))

    def pause(self) -> StepList:
        """Breakpoint on the next Pending step; `StepNotEditableError` when there is none."""
        step = self.next_pending
        if step is None:
            raise StepNotEditableError("no pending step to pause before")
        return self.add_breakpoint(step.id)

    def resume(self) -> StepList:
        """Clear the breakpoint of the next Pending step; a no-op when there is none."""
        step = self.next_pending
        return self if step is None else self.remove_breakpoint(step.id)

    # -- queries -----------------------------------------------------------------------------

    @property
    def next_pending(self) -> Step | None:
        return next((s for s in self.steps if s.is_pending), None)

    @property
    def is_paused(self) -> bool:
        step = self.next_pending
        return step is not None and step.has_breakpoint

    @property
    def is_in_flight(self) -> bool:
        return any(s.status is StepStatus.IN_FLIGHT for s in self.steps)

    @property
    def in_flight(self) -> Step | None:
        return next((s for s in self.steps if s.status is StepStatus.IN_FLIGHT), None)

    @property
    def first_failure(self) -> Step | None:
        return next((s for s in self.steps if s.status is StepStatus.FAILURE), None)

    @property
    def is_finished(self) -> bool:
        """Nothing in flight, and nothing left to run: all steps finished or one failed.

        Unlike ESW an empty list counts as finished, so a run whose pending steps were all
        dropped before any step started completes instead of hanging in Running.
        """
        if self.is_in_flight:
            return False
        return self.first_failure is not None or self.next_pending is None

    @property
    def next_executable(self) -> Step | None:
        """The step the engine may start now: none while one is in flight, after a failure
        (the rest stay Pending), or when the next Pending step has a breakpoint."""
        if self.is_in_flight or self.first_failure is not None or self.is_paused:
            return None
        return self.next_pending

    # -- execution ---------------------------------------------------------------------------

    def mark_in_flight(self, step_id: str) -> StepList:
        """Start a Pending step; ignored when another step is already in flight."""
        if self.is_in_flight:
            return self
        return self._move(step_id, StepStatus.IN_FLIGHT, None)

    def mark_success(self, step_id: str) -> StepList:
        return self._move(step_id, StepStatus.SUCCESS, None)

    def mark_failure(self, step_id: str, message: str) -> StepList:
        return self._move(step_id, StepStatus.FAILURE, message)

    # -- JSON --------------------------------------------------------------------------------

    def to_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.steps]

    @classmethod
    def from_json(cls, value: Any) -> StepList:
        """Read a list written by `to_json`; `ValueError` on bad shape, duplicate ids or more
        than one InFlight step (either would break the execution rules)."""
        if not isinstance(value, list):
            raise ValueError(f"stepList: expected a list, got {_kind(value)}")
        steps = tuple(Step.from_json(v, f"stepList[{i}]") for i, v in enumerate(value))
        if len({s.id for s in steps}) != len(steps):
            raise ValueError("stepList: step ids must be unique")
        if sum(s.status is StepStatus.IN_FLIGHT for s in steps) > 1:
            raise ValueError("stepList: at most one step can be InFlight")
        return cls(steps)

    # -- helpers -----------------------------------------------------------------------------

    def _index(self, step_id: str) -> int:
        for i, step in enumerate(self.steps):
            if step.id == step_id:
                return i
        raise UnknownStepError(step_id)

    def _pending_index(self, step_id: str) -> int:
        index = self._index(step_id)
        if not self.steps[index].is_pending:
            raise StepNotEditableError(f"step {step_id!r} is {self.steps[index].status}")
        return index

    def _splice(self, index: int, remove: int, commands: Iterable[Command]) -> StepList:
        new = tuple(Step.new(c) for c in commands)
        return StepList((*self.steps[:index], *new, *self.steps[index + remove :]))

    def _with_step(self, index: int, **changes: Any) -> StepList:
        step = replace(self.steps[index], **changes)
        return StepList((*self.steps[:index], step, *self.steps[index + 1 :]))

    def _move(self, step_id: str, status: StepStatus, message: str | None) -> StepList:
        # Unknown ids are ignored too: a late result for a step that is gone changes nothing.
        step = self.find(step_id)
        if step is None or not is_forward_move(step.status, status):
            return self
        return self._with_step(self._index(step_id), status=status, message=message)


# -- parsing client input ------------------------------------------------------------------


def commands_from_json(value: Any) -> tuple[Command, ...]:
    """Validate `[{type, command, params}]` or `{"commands": [...]}` into commands.

    `params` may be left out (→ `{}`); other keys of a command are ignored, so a step read back
    from `getSequence` can be sent again. Raises `ValueError` naming the first problem.
    """
    if isinstance(value, Mapping):
        if "commands" not in value:
            raise ValueError('commands: missing (expected {"commands": [...]})')
        value = value["commands"]
    if not isinstance(value, list):
        raise ValueError(f"commands: expected a list, got {_kind(value)}")
    if not value:
        raise ValueError("commands: expected at least one command")
    return tuple(_command_from_json(item, f"commands[{i}]") for i, item in enumerate(value))


def _command_from_json(value: Any, where: str) -> Command:
    obj = _expect_object(value, where)
    params = obj.get("params", {})
    if not isinstance(params, Mapping):
        raise ValueError(f"{where}.params: expected an object, got {_kind(params)}")
    _check_json_value(params, f"{where}.params")
    return Command(
        type=_enum_field(obj, "type", StepType, where),
        command=_non_empty_string(obj, "command", where),
        params=_copy_json(dict(params)),
    )


def _expect_object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected an object, got {_kind(value)}")
    return value


def _non_empty_string(obj: Mapping[str, Any], key: str, where: str) -> str:
    if key not in obj:
        raise ValueError(f"{where}.{key}: missing")
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}.{key}: expected a non-empty string, got {_kind(value)}")
    return value


def _enum_field(obj: Mapping[str, Any], key: str, enum: type[_E], where: str) -> _E:
    choices = " or ".join(repr(str(m)) for m in enum)
    if key not in obj:
        raise ValueError(f"{where}.{key}: missing (expected {choices})")
    value = obj[key]
    try:
        return enum(value)
    except ValueError:
        raise ValueError(f"{where}.{key}: expected {choices}, got {value!r}") from None


def _check_json_value(value: Any, where: str) -> None:
    """Params must survive a JSON round trip unchanged: they go to a database and a child."""
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value} is not a JSON number")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json_value(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: object keys must be strings, got {key!r}")
            _check_json_value(item, f"{where}.{key}")
        return
    raise ValueError(f"{where}: {type(value).__name__} is not a JSON value")


def _copy_json(value: Any) -> Any:
    # A deep copy of plain JSON data, so no caller can change a step's params behind its back.
    if isinstance(value, Mapping):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy_json(v) for v in value]
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
