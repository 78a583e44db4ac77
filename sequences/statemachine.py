"""The sequencer state machine of docs/architecture.md, as pure decisions: no Django, no I/O.

A sequencer is a `Snapshot` (stable state, step list, run id and result, and the handler call in
progress, if any). An actor that serialises commands drives it:

    decision = decide(snapshot, Request.parse("startSequence"))
    if isinstance(decision, RunHandler):
        save(decision.snapshot)                       # shows Processing
        ok, error = call_script(decision.call)        # new_sequence, in the child
        decision = decision.on_success(load()) if ok else decision.on_failure(error, load())
    save(decision.snapshot); reply(decision.response)

and runs the engine with `next_step` / `step_finished`, answering `query` / `query_final`.
The outcome of a handler is applied to the snapshot *current when it ends* (`complete_handler`),
because step results keep arriving while a handler runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from sequences.steplist import (
    Command,
    Step,
    StepList,
    StepNotEditableError,
    StepStatus,
    UnknownStepError,
    commands_from_json,
)


class State(StrEnum):
    IDLE = "Idle"
    LOADED = "Loaded"
    RUNNING = "Running"
    OFFLINE = "Offline"
    KILLED = "Killed"
    # Never stored as a snapshot's state: it is how any state shows while a handler runs.
    PROCESSING = "Processing"


class CommandName(StrEnum):
    """Sequencer commands, spelled as in the API routes."""

    LOAD_SEQUENCE = "loadSequence"
    START_SEQUENCE = "startSequence"
    SUBMIT = "submit"
    ADD = "add"
    PREPEND = "prepend"
    REPLACE = "replace"
    INSERT_AFTER = "insertAfter"
    DELETE = "delete"
    ADD_BREAKPOINT = "addBreakpoint"
    REMOVE_BREAKPOINT = "removeBreakpoint"
    RESET = "reset"
    PAUSE = "pause"
    RESUME = "resume"
    ABORT_SEQUENCE = "abortSequence"
    STOP = "stop"
    GO_ONLINE = "goOnline"
    GO_OFFLINE = "goOffline"
    SHUTDOWN = "shutdown"
    DIAGNOSTIC_MODE = "diagnosticMode"
    OPERATIONS_MODE = "operationsMode"

    @property
    def message_type(self) -> str:
        """The ESW message class name, as shown in `Unhandled.messageType`."""
        return _MESSAGE_TYPES[self]


_MESSAGE_TYPES = {
    CommandName.LOAD_SEQUENCE: "LoadSequence",
    CommandName.START_SEQUENCE: "StartSequence",
    CommandName.SUBMIT: "SubmitSequence",
    CommandName.ADD: "Add",
    CommandName.PREPEND: "Prepend",
    CommandName.REPLACE: "Replace",
    CommandName.INSERT_AFTER: "InsertAfter",
    CommandName.DELETE: "Delete",
    CommandName.ADD_BREAKPOINT: "AddBreakpoint",
    CommandName.REMOVE_BREAKPOINT: "RemoveBreakpoint",
    CommandName.RESET: "Reset",
    CommandName.PAUSE: "Pause",
    CommandName.RESUME: "Resume",
    CommandName.ABORT_SEQUENCE: "AbortSequence",
    CommandName.STOP: "Stop",
    CommandName.GO_ONLINE: "GoOnline",
    CommandName.GO_OFFLINE: "GoOffline",
    CommandName.SHUTDOWN: "Shutdown",
    CommandName.DIAGNOSTIC_MODE: "DiagnosticMode",
    CommandName.OPERATIONS_MODE: "OperationsMode",
}


class Handler(StrEnum):
    """Script hooks, named as in the child runtime protocol (runner/PROTOCOL.md, 6001)."""

    NEW_SEQUENCE = "new_sequence"
    GO_ONLINE = "go_online"
    GO_OFFLINE = "go_offline"
    ABORT_SEQUENCE = "abort_sequence"
    STOP = "stop"
    SHUTDOWN = "shutdown"
    DIAGNOSTIC_MODE = "diagnostic_mode"
    OPERATIONS_MODE = "operations_mode"


_I, _L, _R, _O = State.IDLE, State.LOADED, State.RUNNING, State.OFFLINE
_EDITING = frozenset({_L, _R})
_ONLINE_OR_OFFLINE = frozenset({_I, _L, _R, _O})

# The columns of the state machine table (docs/architecture.md) that do not answer
# Unhandled (Killed accepts nothing).
ACCEPTED_IN: dict[CommandName, frozenset[State]] = {
    CommandName.LOAD_SEQUENCE: frozenset({_I, _L}),
    CommandName.START_SEQUENCE: frozenset({_L}),
    CommandName.SUBMIT: frozenset({_I, _L}),
    CommandName.ADD: _EDITING,
    CommandName.PREPEND: _EDITING,
    CommandName.REPLACE: _EDITING,
    CommandName.INSERT_AFTER: _EDITING,
    CommandName.DELETE: _EDITING,
    CommandName.ADD_BREAKPOINT: _EDITING,
    CommandName.REMOVE_BREAKPOINT: _EDITING,
    CommandName.RESET: _EDITING,
    CommandName.PAUSE: frozenset({_R}),
    CommandName.RESUME: frozenset({_R}),
    CommandName.ABORT_SEQUENCE: frozenset({_R}),
    CommandName.STOP: frozenset({_R}),
    CommandName.GO_ONLINE: frozenset({_O}),
    CommandName.GO_OFFLINE: frozenset({_I, _L}),
    CommandName.SHUTDOWN: _ONLINE_OR_OFFLINE,
    CommandName.DIAGNOSTIC_MODE: _ONLINE_OR_OFFLINE,
    CommandName.OPERATIONS_MODE: _ONLINE_OR_OFFLINE,
}

# Commands that run a script hook before they answer.
HANDLER_OF: dict[CommandName, Handler] = {
    CommandName.START_SEQUENCE: Handler.NEW_SEQUENCE,
    CommandName.SUBMIT: Handler.NEW_SEQUENCE,
    CommandName.ABORT_SEQUENCE: Handler.ABORT_SEQUENCE,
    CommandName.STOP: Handler.STOP,
    CommandName.GO_ONLINE: Handler.GO_ONLINE,
    CommandName.GO_OFFLINE: Handler.GO_OFFLINE,
    CommandName.SHUTDOWN: Handler.SHUTDOWN,
    CommandName.DIAGNOSTIC_MODE: Handler.DIAGNOSTIC_MODE,
    CommandName.OPERATIONS_MODE: Handler.OPERATIONS_MODE,
}


def accepts(state: State, command: CommandName) -> bool:
    """Whether `command` gets past Unhandled in a shown state (for enabling buttons)."""
    if state is State.PROCESSING:
        return command is CommandName.SHUTDOWN
    return state in ACCEPTED_IN[command]


# -- responses -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ok:
    def to_json(self) -> dict[str, Any]:
        return {"type": "Ok"}


@dataclass(frozen=True)
class Started:
    run_id: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "Started", "runId": self.run_id}


@dataclass(frozen=True)
class Unhandled:
    """A message the state does not accept; a sequence component answers it too."""

    state: StrEnum  # a sequencer's State, or a component's ComponentState
    message_type: str

    @property
    def msg(self) -> str:
        return f"Sequencer can not accept '{self.message_type}' message in '{self.state}' state"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "Unhandled",
            "state": str(self.state),
            "messageType": self.message_type,
            "msg": self.msg,
        }


@dataclass(frozen=True)
class IdDoesNotExist:
    id: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "IdDoesNotExist", "id": self.id}


@dataclass(frozen=True)
class CannotOperateOnAnInFlightOrFinishedStep:
    def to_json(self) -> dict[str, Any]:
        return {"type": "CannotOperateOnAnInFlightOrFinishedStep"}


@dataclass(frozen=True)
class HookFailed:
    """Base of the `...HookFailed` responses; the type is the class name."""

    msg: str

    def to_json(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "msg": self.msg}


@dataclass(frozen=True)
class GoOnlineHookFailed(HookFailed):
    pass


@dataclass(frozen=True)
class GoOfflineHookFailed(HookFailed):
    pass


@dataclass(frozen=True)
class DiagnosticHookFailed(HookFailed):
    pass


@dataclass(frozen=True)
class OperationsHookFailed(HookFailed):
    pass


@dataclass(frozen=True)
class NewSequenceHookFailed(HookFailed):
    pass


@dataclass(frozen=True)
class Completed:
    """Final result of a run whose steps all succeeded (or that was aborted cleanly)."""

    run_id: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "Completed", "runId": self.run_id}


@dataclass(frozen=True)
class Error:
    """Final result of a run that failed (wire name `Error`, as in CSW's SubmitResponse)."""

    run_id: str
    msg: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "Error", "runId": self.run_id, "msg": self.msg}


@dataclass(frozen=True)
class Invalid:
    """Answer to a query for a run id this sequencer does not know."""

    run_id: str

    @property
    def msg(self) -> str:
        return f"Sequencer is not running any sequence with runId {self.run_id}"

    def to_json(self) -> dict[str, Any]:
        return {"type": "Invalid", "runId": self.run_id, "msg": self.msg}


Response = (
    Ok | Started | Unhandled | IdDoesNotExist | CannotOperateOnAnInFlightOrFinishedStep | HookFailed
)
RunResult = Completed | Error
QueryResponse = Started | Completed | Error | Invalid


def http_status(response: Response | QueryResponse) -> int:
    """200 success, 409 Unhandled / CannotOperate…, 404 IdDoesNotExist, 422 hook failed.

    Query answers (Started, Completed, Error, Invalid) are 200: the query itself succeeded.
    """
    if isinstance(response, Unhandled | CannotOperateOnAnInFlightOrFinishedStep):
        return 409
    if isinstance(response, IdDoesNotExist):
        return 404
    if isinstance(response, HookFailed):
        return 422
    return 200


def run_result_from_json(value: Any) -> RunResult:
    """Read a `Completed` / `Error` written by `to_json` (as stored in a database)."""
    if not isinstance(value, Mapping) or not isinstance(value.get("runId"), str):
        raise ValueError("runResult: expected {type, runId, ...}")
    if value.get("type") == "Completed":
        return Completed(value["runId"])
    if value.get("type") == "Error" and isinstance(value.get("msg"), str):
        return Error(value["runId"], value["msg"])
    raise ValueError(f"runResult: unknown result {value!r}")


# -- requests ------------------------------------------------------------------------------


_TAKES_COMMANDS = frozenset(
    {
        CommandName.LOAD_SEQUENCE,
        CommandName.SUBMIT,
        CommandName.ADD,
        CommandName.PREPEND,
        CommandName.REPLACE,
        CommandName.INSERT_AFTER,
    }
)
_TAKES_ID = frozenset(
    {
        CommandName.REPLACE,
        CommandName.INSERT_AFTER,
        CommandName.DELETE,
        CommandName.ADD_BREAKPOINT,
        CommandName.REMOVE_BREAKPOINT,
    }
)


@dataclass(frozen=True)
class Request:
    """A validated command with its payload."""

    command: CommandName
    commands: tuple[Command, ...] = ()
    step_id: str | None = None
    args: dict[str, Any] = field(default_factory=dict)  # hook arguments (diagnosticMode)

    @classmethod
    def parse(cls, command: str, body: Any = None) -> Request:
        """Validate an API body (docs/api.md) for `command`; `ValueError` names the problem.

        Bodies of commands that take none are ignored. diagnosticMode needs `startTime`
        (ISO 8601); `hint` defaults to "".
        """
        try:
            name = CommandName(command)
        except ValueError:
            raise ValueError(f"unknown sequencer command {command!r}") from None
        commands = commands_from_json(body) if name in _TAKES_COMMANDS else ()
        step_id = _step_id(body) if name in _TAKES_ID else None
        args = _diagnostic_args(body) if name is CommandName.DIAGNOSTIC_MODE else {}
        return cls(name, commands, step_id, args)


def _step_id(body: Any) -> str:
    value = body.get("id") if isinstance(body, Mapping) else None
    if not isinstance(value, str) or not value:
        raise ValueError("id: expected the id of a step (a non-empty string)")
    return value


def _diagnostic_args(body: Any) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise ValueError('expected {"startTime": iso8601, "hint": "..."}')
    start_time, hint = body.get("startTime"), body.get("hint", "")
    try:
        datetime.fromisoformat(start_time)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"startTime: expected an ISO 8601 time, got {start_time!r}") from None
    if not isinstance(hint, str):
        raise ValueError(f"hint: expected a string, got {hint!r}")
    return {"startTime": start_time, "hint": hint}


# -- the sequencer snapshot ----------------------------------------------------------------


@dataclass(frozen=True)
class PendingCall:
    """A command waiting for its script hook; stored in the snapshot so it survives a restart.

    `call_id` doubles as the `call` id of the child protocol. `run_id` and `steps` are what a
    start/submit installs on success, decided up front so the reply and the list ids are stable.
    """

    call_id: str
    command: CommandName
    handler: Handler
    args: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    steps: StepList | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "callId": self.call_id,
            "command": str(self.command),
            "handler": str(self.handler),
            "args": dict(self.args),
            "runId": self.run_id,
            "stepList": None if self.steps is None else self.steps.to_json(),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> PendingCall:
        steps = value.get("stepList")
        return cls(
            call_id=value["callId"],
            command=CommandName(value["command"]),
            handler=Handler(value["handler"]),
            args=dict(value.get("args") or {}),
            run_id=value.get("runId"),
            steps=None if steps is None else StepList.from_json(steps),
        )


@dataclass(frozen=True)
class Snapshot:
    """Everything the machine knows about one sequencer.

    `state` is the stable state (never Processing); `pending` is set while a hook runs.
    `steps` is None when no sequence is held (getSequence → null). `run_id` / `run_result` are
    the last run's, kept until the next run starts so queries about it keep answering.
    """

    state: State = State.IDLE
    steps: StepList | None = None
    run_id: str | None = None
    run_result: RunResult | None = None
    pending: PendingCall | None = None
    # How the run was cut short: RUN_ABORTED or RUN_STOPPED, else "" (its result says the
    # rest). ESW answers Completed for an aborted run; people need to see it was aborted.
    run_end: str = ""

    @property
    def display_state(self) -> State:
        """What clients see: Processing while a hook runs, else the stable state."""
        return State.PROCESSING if self.pending is not None else self.state

    @property
    def is_online(self) -> bool:
        return self.state not in (State.OFFLINE, State.KILLED)

    @property
    def is_available(self) -> bool:
        return self.display_state is State.IDLE

    def to_json(self) -> dict[str, Any]:
        """Round-trippable form for persistence (`displayState` is informative only)."""
        return {
            "state": str(self.state),
            "displayState": str(self.display_state),
            "stepList": None if self.steps is None else self.steps.to_json(),
            "runId": self.run_id,
            "runResult": None if self.run_result is None else self.run_result.to_json(),
            "pending": None if self.pending is None else self.pending.to_json(),
            "runEnd": self.run_end,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Snapshot:
        state = State(value["state"])
        if state is State.PROCESSING:
            raise ValueError("state: Processing is shown, never stored; store the stable state")
        steps, result, pending = value.get("stepList"), value.get("runResult"), value.get("pending")
        return cls(
            state=state,
            steps=None if steps is None else StepList.from_json(steps),
            run_id=value.get("runId"),
            run_result=None if result is None else run_result_from_json(result),
            pending=None if pending is None else PendingCall.from_json(pending),
            run_end=str(value.get("runEnd") or ""),
        )


# -- decisions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Done:
    """Answer `response` now; `snapshot` is the new state to persist."""

    response: Response
    snapshot: Snapshot


@dataclass(frozen=True)
class RunHandler:
    """Persist `snapshot` (it shows Processing), run `call.handler` with `call.args`, then
    finish with `on_success` / `on_failure`, passing the snapshot current at that moment."""

    call: PendingCall
    snapshot: Snapshot

    def on_success(self, current: Snapshot | None = None) -> Done:
        return complete_handler(self._now(current), self.call, ok=True)

    def on_failure(self, error: str = "", current: Snapshot | None = None) -> Done:
        return complete_handler(self._now(current), self.call, ok=False, error=error)

    def _now(self, current: Snapshot | None) -> Snapshot:
        return self.snapshot if current is None else current


Decision = Done | RunHandler


def decide(snapshot: Snapshot, request: Request) -> Decision:
    """Apply the state machine table to one command: an answer now, or a hook to run first."""
    command = request.command
    if not accepts(snapshot.display_state, command):
        return Done(Unhandled(snapshot.display_state, command.message_type), snapshot)
    if command in HANDLER_OF:
        return _start_handler(snapshot, request)
    return _IMMEDIATE[command](snapshot, request)


def _new_id() -> str:
    return str(uuid.uuid4())


def _start_handler(snapshot: Snapshot, request: Request) -> RunHandler:
    command = request.command
    starts_run = command in (CommandName.START_SEQUENCE, CommandName.SUBMIT)
    submitted = StepList.from_commands(request.commands) if command is CommandName.SUBMIT else None
    # A shutdown during another hook supersedes it; that hook's late end is then stale.
    call = PendingCall(
        call_id=_new_id(),
        command=command,
        handler=HANDLER_OF[command],
        args=dict(request.args),
        run_id=_new_id() if starts_run else None,
        steps=submitted,
    )
    return RunHandler(call, replace(snapshot, pending=call))


# -- commands answered at once -------------------------------------------------------------


def _load(snapshot: Snapshot, request: Request) -> Done:
    steps = StepList.from_commands(request.commands)
    return Done(Ok(), replace(snapshot, state=State.LOADED, steps=steps))


def _reset(snapshot: Snapshot, request: Request) -> Done:
    if snapshot.state is State.LOADED:
        return Done(Ok(), replace(snapshot, state=State.IDLE, steps=None))
    return _edit(snapshot, StepList.discard_pending)


def _editor(
    operation: Callable[[StepList, Request], StepList],
) -> Callable[[Snapshot, Request], Done]:
    def apply(snapshot: Snapshot, request: Request) -> Done:
        return _edit(snapshot, lambda steps: operation(steps, request))

    return apply


def _edit(snapshot: Snapshot, change: Callable[[StepList], StepList]) -> Done:
    """Apply an editor change, mapping refusals to typed answers; may complete a run."""
    try:
        steps = change(snapshot.steps or StepList())
    except UnknownStepError as error:
        return Done(IdDoesNotExist(error.step_id), snapshot)
    except StepNotEditableError:
        return Done(CannotOperateOnAnInFlightOrFinishedStep(), snapshot)
    return Done(Ok(), _settle(replace(snapshot, steps=steps)))


def _sid(request: Request) -> str:
    if request.step_id is None:
        raise ValueError(f"{request.command} needs a step id")
    return request.step_id


_IMMEDIATE: dict[CommandName, Callable[[Snapshot, Request], Done]] = {
    CommandName.LOAD_SEQUENCE: _load,
    CommandName.RESET: _reset,
    CommandName.ADD: _editor(lambda s, r: s.add(r.commands)),
    CommandName.PREPEND: _editor(lambda s, r: s.prepend(r.commands)),
    CommandName.REPLACE: _editor(lambda s, r: s.replace(_sid(r), r.commands)),
    CommandName.INSERT_AFTER: _editor(lambda s, r: s.insert_after(_sid(r), r.commands)),
    CommandName.DELETE: _editor(lambda s, r: s.delete(_sid(r))),
    CommandName.ADD_BREAKPOINT: _editor(lambda s, r: s.add_breakpoint(_sid(r))),
    CommandName.REMOVE_BREAKPOINT: _editor(lambda s, r: s.remove_breakpoint(_sid(r))),
    CommandName.PAUSE: _editor(lambda s, r: s.pause()),
    CommandName.RESUME: _editor(lambda s, r: s.resume()),
}


# -- hook outcomes -------------------------------------------------------------------------


def complete_handler(snapshot: Snapshot, call: PendingCall, ok: bool, error: str = "") -> Done:
    """Finish `call` on the current snapshot: its hook succeeded (`ok`) or failed with `error`.

    A call that is no longer pending (a shutdown superseded it, or it was already completed)
    changes nothing: it answers Unhandled in the shown state, or Ok for a shutdown.
    """
    if snapshot.pending is None or snapshot.pending.call_id != call.call_id:
        if call.command is CommandName.SHUTDOWN:
            return Done(Ok(), snapshot)
        return Done(Unhandled(snapshot.display_state, call.command.message_type), snapshot)
    base = replace(snapshot, pending=None)
    return _OUTCOMES[call.command](base, call, ok, error)


_Outcome = Callable[[Snapshot, PendingCall, bool, str], Done]


def _after_start(base: Snapshot, call: PendingCall, ok: bool, error: str) -> Done:
    if not ok:
        msg = error or "New sequence handler failed to start successfully"
        return Done(NewSequenceHookFailed(msg), base)
    return _begin_run(base, call, base.steps or StepList())


def _after_submit(base: Snapshot, call: PendingCall, ok: bool, error: str) -> Done:
    if not ok:
        msg = error or "New sequence handler failed to submit successfully"
        # From Loaded the held list was about to be replaced: drop it rather than keep an
        # unstarted list in Idle (an ESW quirk). From Idle the last run's list stays.
        steps = None if base.state is State.LOADED else base.steps
        return Done(NewSequenceHookFailed(msg), replace(base, state=State.IDLE, steps=steps))
    return _begin_run(base, call, call.steps or StepList())


def _begin_run(base: Snapshot, call: PendingCall, steps: StepList) -> Done:
    run_id = call.run_id or _new_id()
    running = replace(
        base, state=State.RUNNING, steps=steps, run_id=run_id, run_result=None, run_end=""
    )
    return Done(Started(run_id), _settle(running))


def _after_go_online(base: Snapshot, call: PendingCall, ok: bool, error: str) -> Done:
    if not ok:
        return Done(GoOnlineHookFailed(error or "go online handler failed"), base)
    return Done(Ok(), replace(base, state=State.IDLE))


def _after_go_offline(base: Snapshot, call: PendingCall, ok: bool, error: str) -> Done:
    if not ok:
        return Done(GoOfflineHookFailed(error or "go offline handler failed"), base)
    return Done(Ok(), replace(base, state=State.OFFLINE, steps=None))


def _after_mode(failed: type[HookFailed], default: str) -> _Outcome:
    def outcome(base: Snapshot, call: PendingCall, ok: bool, error: str) -> Done:
        # Step results may have finished the run while the hook ran: settle it now.
        return Done(Ok() if ok else failed(error or default), _settle(base))

    return outcome


def _after_abort(base: Snapshot, call: PendingCall, ok: bool, error: str) -> Done:
    # The hook's failure is ignored: pending steps go anyway; an in-flight step finishes.
    if base.state is State.RUNNING:
        how = RUN_ABORTED if call.command is CommandName.ABORT_SEQUENCE else RUN_STOPPED
        base = replace(base, run_end=how)
    return _edit(base, StepList.discard_pending)


def _after_shutdown(base: Snapshot, call: PendingCall, ok: bool, error: str) -> Done:
    # Killed whatever the hook did. A run still going gets a final result so that a
    # queryFinal waiter is answered instead of waiting forever.
    result = base.run_result
    if base.state is State.RUNNING and base.run_id is not None:
        result = Error(base.run_id, f"{SHUT_DOWN_MID_RUN} before the sequence finished")
    return Done(Ok(), replace(base, state=State.KILLED, run_result=result))


_OUTCOMES: dict[CommandName, _Outcome] = {
    CommandName.START_SEQUENCE: _after_start,
    CommandName.SUBMIT: _after_submit,
    CommandName.GO_ONLINE: _after_go_online,
    CommandName.GO_OFFLINE: _after_go_offline,
    CommandName.DIAGNOSTIC_MODE: _after_mode(
        DiagnosticHookFailed, "diagnostic mode handler failed"
    ),
    CommandName.OPERATIONS_MODE: _after_mode(
        OperationsHookFailed, "operations mode handler failed"
    ),
    CommandName.ABORT_SEQUENCE: _after_abort,
    CommandName.STOP: _after_abort,
    CommandName.SHUTDOWN: _after_shutdown,
}


# -- the engine ----------------------------------------------------------------------------


def _settle(snapshot: Snapshot) -> Snapshot:
    """Complete a run whose list is finished: Running → Idle with its final result.

    Deferred while a hook runs, so the stable state never changes under Processing.
    """
    if snapshot.state is not State.RUNNING or snapshot.pending is not None:
        return snapshot
    steps = snapshot.steps or StepList()
    if not steps.is_finished:
        return snapshot
    run_id = snapshot.run_id or ""
    failed = steps.first_failure
    result: RunResult = Completed(run_id)
    if failed is not None:
        reason = f"StepId: {failed.id}, CommandName: {failed.command}, reason: {failed.message}"
        result = Error(run_id, reason)
    return replace(snapshot, state=State.IDLE, run_result=result)


def next_step(snapshot: Snapshot) -> tuple[Snapshot, Step] | None:
    """The step to execute now, marked InFlight, or None: not Running, a hook is running,
    a step is already in flight, the list is paused at a breakpoint, or nothing is left."""
    if snapshot.state is not State.RUNNING or snapshot.pending is not None:
        return None
    steps = snapshot.steps or StepList()
    step = steps.next_executable
    if step is None:
        return None
    steps = steps.mark_in_flight(step.id)
    return replace(snapshot, steps=steps), steps.get(step.id)


def step_finished(snapshot: Snapshot, step_id: str, ok: bool, message: str = "") -> Snapshot:
    """Record a step's result (also while a hook runs) and complete the run if it is done.

    A result for a step that is not InFlight, or after Killed, changes nothing.
    """
    if snapshot.state is State.KILLED or snapshot.steps is None:
        return snapshot
    steps = snapshot.steps
    steps = steps.mark_success(step_id) if ok else steps.mark_failure(step_id, message)
    return _settle(replace(snapshot, steps=steps))


def query(snapshot: Snapshot, run_id: str) -> QueryResponse:
    """Started while the run goes on, its final result once finished, else Invalid."""
    if run_id != snapshot.run_id:
        return Invalid(run_id)
    return snapshot.run_result or Started(run_id)


def query_final(snapshot: Snapshot, run_id: str) -> QueryResponse | None:
    """Like `query`, but None while the run goes on: the caller waits and asks again after
    the next change."""
    answer = query(snapshot, run_id)
    return None if isinstance(answer, Started) else answer


# -- how a run ended, for people ----------------------------------------------------------

RUN_ABORTED = "aborted"  # abortSequence while Running
RUN_STOPPED = "stopped"  # stop while Running
# The start of the Error message of a run its sequencer's end cut short (a shutdown, or its
# process gone: sequencer_store.killed).
SHUT_DOWN_MID_RUN = "Sequencer was shut down"
KILLED_MID_RUN = "Sequencer was killed"


@dataclass(frozen=True)
class RunOutcome:
    """The console's word for the last run: `outcome` is completed, failed, aborted, stopped,
    killed, paused or running; `step` the 1-based step it failed at or waits before."""

    outcome: str
    label: str
    step: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "label": self.label, "step": self.step}


def run_outcome(snapshot: Snapshot) -> RunOutcome | None:
    """How the last run ended (or where it stands), or None when there was no run. Derived
    from the run's result, its step list and `run_end`; a run from before `run_end` existed
    that was aborted shows Completed, as ESW answers."""
    if snapshot.run_id is None:
        return None
    steps = list(snapshot.steps or ())
    result = snapshot.run_result
    if result is None:
        if snapshot.state is not State.RUNNING:
            return None
        if not any(s.status is StepStatus.IN_FLIGHT for s in steps):
            for number, step in enumerate(steps, 1):
                if step.is_pending:
                    if step.has_breakpoint:
                        return RunOutcome("paused", f"Paused before step {number}", number)
                    break
        return RunOutcome("running", "Running")
    if isinstance(result, Error):
        if result.msg.startswith((SHUT_DOWN_MID_RUN, KILLED_MID_RUN)):
            return RunOutcome("killed", "Killed")
        failed = next((n for n, s in enumerate(steps, 1) if s.status is StepStatus.FAILURE), None)
        if failed is None:
            return RunOutcome("failed", "Failed")
        return RunOutcome("failed", f"Failed at step {failed}", failed)
    if snapshot.run_end == RUN_ABORTED:
        return RunOutcome("aborted", "Aborted")
    if snapshot.run_end == RUN_STOPPED:
        return RunOutcome("stopped", "Stopped")
    return RunOutcome("completed", "Completed")
