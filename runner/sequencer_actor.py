"""Sequencer actors: one per sequencer, living in the worker's supervisor loop.

An actor owns its sequencer's child process (a script-mode instance, runner/PROTOCOL.md) and
is the only place where that sequencer's commands, handler results, step results and process
exit are applied. They all go through one asyncio queue, handled one at a time, and each change
is decided and persisted by `sequencer_store.apply` under the sequencer's row lock. So commands
never interleave, whatever arrives at the same time.

Handler calls do not block the queue: a command whose hook runs is persisted as Processing,
its CALL goes to the child, and its CALL_DONE comes back later through the queue. Meanwhile other
commands are answered from the table (Unhandled, except shutdown) and step results are applied.

Database work runs on the database threads (core/db_threads.py), never on the loop; each job is
one transaction, retried once on a fresh connection when the connection was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings

from core.db_threads import db_call_retrying
from core.protocol import Message
from runner import control
from runner.supervisor import Child, Supervisor, register_launcher
from runner.upstream import Upstream
from sequences import sequencer_store as store
from sequences.models import Sequencer
from sequences.sequencers import claim_start
from sequences.statemachine import (
    CommandName,
    Decision,
    Done,
    Request,
    Response,
    RunHandler,
    Snapshot,
    Started,
    State,
    complete_handler,
    decide,
    http_status,
    next_step,
    step_finished,
)
from sequences.steplist import Step, StepType

log = logging.getLogger(__name__)

T = TypeVar("T")

# A shutdown proceeds (→ Killed) even when its hook hangs or waits behind a long step.
SHUTDOWN_HOOK_TIMEOUT = 5.0

ACTORS: dict[str, SequencerActor] = {}


class ScriptExited(Exception):
    """The child ended before its script was loaded."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# -- queue items ---------------------------------------------------------------------------


@dataclass
class _Command:
    name: str
    body: Any
    user_id: int | None
    reply: str | None = None
    # Set when another sequencer's script sent it (signed by that sequencer's supervisor).
    upstream: dict[str, Any] | None = None


@dataclass
class _CallDone:
    call_id: str
    ok: bool
    error: str


@dataclass
class _Exited:
    code: int
    status: str
    reason: str


@dataclass
class _HookCall:
    """A command waiting for its hook in the child."""

    decision: RunHandler
    command: _Command


@dataclass
class _StepCall:
    step_id: str


class SequencerActor:
    def __init__(self, sup: Supervisor, sequencer_id: str, instance_id: str, child: Child) -> None:
        self.sup = sup
        self.id = sequencer_id
        self.instance_id = instance_id
        self.child = child
        self.loop = sup.loop
        self.queue: asyncio.Queue[_Command | _CallDone | _Exited] = asyncio.Queue()
        self.calls: dict[str, _HookCall | _StepCall] = {}
        self.step_call: str | None = None
        self.snapshot: Snapshot | None = None  # last persisted, to skip needless engine checks
        self.handlers: dict[str, Any] = {}
        self.loaded: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.exited = False
        self.upstream = Upstream(self)  # this script's commands to other sequencers
        child.on_message = self._on_message
        child.on_exit = self._on_exit
        self.task = self.loop.create_task(self._run())

    # -- from the child (called in the loop by the supervisor) ---------------------------
    def _on_message(self, code: int, data: Any) -> None:
        if code == Message.SCRIPT_LOADED:
            self.handlers = data if isinstance(data, dict) else {}
        elif code == Message.PING:
            if not self.loaded.done():
                self.loaded.set_result(self.handlers)
        elif code == Message.SEQ_REQUEST:
            self.upstream.request(data)
        elif code == Message.CALL_DONE and isinstance(data, dict):
            error = data.get("error")
            self.queue.put_nowait(
                _CallDone(str(data.get("call")), bool(data.get("ok")), str(error or ""))
            )

    def _on_exit(self, code: int, status: str, reason: str) -> None:
        if not self.loaded.done():
            self.loaded.set_exception(ScriptExited(code, reason))
        self.queue.put_nowait(_Exited(code, status, reason))

    # -- from the web ----------------------------------------------------------------------
    def submit(
        self,
        name: str,
        body: Any,
        user_id: int | None,
        reply: str | None,
        upstream: dict[str, Any] | None = None,
    ) -> None:
        self.queue.put_nowait(_Command(name, body, user_id, reply, upstream))

    def step_in_flight(self) -> str | None:
        """The id of the step whose handler runs now, if any."""
        entry = self.calls.get(self.step_call) if self.step_call else None
        return entry.step_id if isinstance(entry, _StepCall) else None

    # -- the loop --------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                if isinstance(item, _Command):
                    await self._command(item)
                elif isinstance(item, _CallDone):
                    await self._call_done(item)
                else:
                    await self._exit(item)
                    return
                await self._engine()
            except Exception as exc:
                log.exception("sequencer %s: %s failed", self.id, type(item).__name__)
                if isinstance(item, _Command) and item.reply:
                    await self.sup.reply(
                        item.reply,
                        {
                            "ok": False,
                            "status": 500,
                            "code": "SEQUENCER_ERROR",
                            "error": f"{type(exc).__name__}: {exc}",
                        },
                    )

    async def _db(self, fn: Callable[[], T]) -> T:
        # The database threads are shared by every actor of this worker: each actor awaits its
        # own jobs one by one, so its changes stay in order; sequencers write side by side.
        return await db_call_retrying(fn)

    async def _apply(
        self,
        change: Callable[[Snapshot], tuple[Snapshot, T]],
        command: str,
        user_id: int | None = None,
        response: Callable[[T], dict[str, Any] | None] | None = None,
        reason: str | None = None,
        upstream: dict[str, Any] | None = None,
    ) -> store.Applied[T]:
        applied = await self._db(
            lambda: store.apply(self.id, change, command, user_id, response, reason, upstream)
        )
        self.snapshot = applied.after
        if applied.view is not None:
            await store.afan_out(applied.view)
        return applied

    async def _answer(self, command: _Command, response: Response) -> None:
        if isinstance(response, Started):
            self.upstream.run_started(response.run_id, command.upstream)
        if command.reply:
            await self.sup.reply(
                command.reply,
                {"ok": True, "response": response.to_json(), "status": http_status(response)},
            )

    # -- commands --------------------------------------------------------------------------
    async def _command(self, item: _Command) -> None:
        try:
            request = Request.parse(item.name, item.body)
        except ValueError as exc:
            if item.reply:
                await self.sup.reply(
                    item.reply,
                    {"ok": False, "status": 400, "code": "INVALID_REQUEST", "error": str(exc)},
                )
            return

        def change(snapshot: Snapshot) -> tuple[Snapshot, Decision]:
            decision = decide(snapshot, request)
            return decision.snapshot, decision

        applied = await self._apply(
            change, item.name, item.user_id, _decision_json, upstream=_recorded(item.upstream)
        )
        decision = applied.result
        if isinstance(decision, Done):
            await self._answer(item, decision.response)
            return
        call = decision.call
        self.calls[call.call_id] = _HookCall(decision, item)
        self.sup.send(
            self.child,
            Message.CALL,
            {
                "call": call.call_id,
                "handler": str(call.handler),
                "step": None,
                "args": dict(call.args),
            },
        )
        if call.command is CommandName.SHUTDOWN:
            self.loop.call_later(
                SHUTDOWN_HOOK_TIMEOUT,
                self.queue.put_nowait,
                _CallDone(call.call_id, False, "the shutdown handler did not finish in time"),
            )

    async def _call_done(self, item: _CallDone) -> None:
        entry = self.calls.pop(item.call_id, None)
        if isinstance(entry, _StepCall):
            self.step_call = None
            await self._apply(
                lambda s: (step_finished(s, entry.step_id, item.ok, item.error), None),
                "stepFinished",
            )
        elif isinstance(entry, _HookCall):
            await self._hook_done(entry, item.ok, item.error)

    async def _hook_done(self, entry: _HookCall, ok: bool, error: str) -> None:
        decision = entry.decision

        reason = None
        if decision.call.command is CommandName.SHUTDOWN:
            reason = "shut down by command"

        def change(snapshot: Snapshot) -> tuple[Snapshot, Done]:
            done = decision.on_success(snapshot) if ok else decision.on_failure(error, snapshot)
            after = done.snapshot
            if after.state is State.KILLED:
                # A step still in flight will never report: its process is about to go.
                after = store.killed(after, reason or "shut down")
            return after, done

        applied = await self._apply(
            change,
            entry.command.name,
            entry.command.user_id,
            _done_json,
            reason,
            _recorded(entry.command.upstream),
        )
        await self._answer(entry.command, applied.result.response)
        if applied.after.state is State.KILLED:
            await self._kill_process()

    async def _kill_process(self) -> None:
        if not self.exited:
            await control.kill(self.sup, {"id": self.instance_id}, b"")

    # -- the step engine -------------------------------------------------------------------
    async def _engine(self) -> None:
        """Start the next executable step when nothing is in flight."""
        snap = self.snapshot
        if self.exited or self.step_call is not None:
            return
        if snap is not None and (snap.state is not State.RUNNING or snap.pending is not None):
            return

        def change(snapshot: Snapshot) -> tuple[Snapshot, Step | None]:
            found = next_step(snapshot)
            return (snapshot, None) if found is None else found

        applied = await self._apply(change, "stepStarted")
        step = applied.result
        if step is None:
            return
        call_id = str(uuid.uuid4())
        self.calls[call_id] = _StepCall(step.id)
        self.step_call = call_id
        handler = "setup" if step.type is StepType.SETUP else "observe"
        self.sup.send(
            self.child,
            Message.CALL,
            {
                "call": call_id,
                "handler": handler,
                "args": {},
                "step": {
                    "id": step.id,
                    "type": str(step.type),
                    "command": step.command,
                    "params": step.params,
                },
            },
        )

    # -- the end ---------------------------------------------------------------------------
    async def _exit(self, item: _Exited) -> None:
        self.exited = True
        ACTORS.pop(self.id, None)
        self.upstream.cancel()  # its waits on other sequencers end with it; their runs go on
        if not self.loaded.done():
            why = f"the script failed to load: {item.reason} (exit code {item.code})"
        elif self.child.end_note:
            why = f"its process was stopped: {self.child.end_note}"
        elif getattr(self.sup, "_stopping", False):
            why = f"worker shutdown: its worker {self.sup.name} shut down"
        else:
            why = f"its process ended: {item.reason} (exit code {item.code})"
        applied = await self._apply(
            lambda s: (store.killed(s, why), None), "processExit", reason=why
        )
        # Commands still waiting for a hook get their answer in the final state.
        for entry in list(self.calls.values()):
            if isinstance(entry, _HookCall):
                done = complete_handler(applied.after, entry.decision.call, ok=False)
                await self._answer(entry.command, done.response)
        self.calls.clear()

    async def record_loaded(self, handlers: dict[str, Any]) -> None:
        await self._db(lambda: Sequencer.objects.filter(pk=self.id).update(handlers=handlers))


def _recorded(upstream: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a transition keeps of the upstream: who, which run and which step."""
    if not upstream:
        return None
    return {k: upstream.get(k) for k in ("id", "prefix", "runId", "step")}


def _decision_json(decision: Decision) -> dict[str, Any] | None:
    return decision.response.to_json() if isinstance(decision, Done) else None


def _done_json(done: Done) -> dict[str, Any]:
    return done.response.to_json()


# -- entry points ------------------------------------------------------------------------


async def launch(
    sup: Supervisor,
    sequencer_id: str,
    instance_id: str,
    spec: dict[str, Any],
    argv: list[str] | None,
    timeout: float,
) -> dict[str, Any]:
    """Fork the sequencer's child, attach its actor, and wait until the script is loaded
    (SCRIPT_LOADED, then PING) or the child ends. Returns the reply for the web."""
    child = await sup.spawn(instance_id, spec, kind="script", argv=argv)
    actor = SequencerActor(sup, sequencer_id, instance_id, child)
    ACTORS[sequencer_id] = actor
    try:
        handlers = await asyncio.wait_for(asyncio.shield(actor.loaded), timeout)
    except ScriptExited as exc:
        await _drained(actor)
        return {"ok": False, "exitCode": exc.code, "reason": exc.reason, "pid": child.pid}
    except TimeoutError:
        await actor._kill_process()
        await _drained(actor)
        return {
            "ok": False,
            "reason": f"the script did not load within {timeout:.0f} s",
            "pid": child.pid,
        }
    await actor.record_loaded(handlers)
    return {"ok": True, "worker": sup.name, "pid": child.pid, "handlers": handlers}


async def start_script(sup: Supervisor, req: dict[str, Any]) -> dict[str, Any]:
    """The supervisor's intake checked and claimed (in Redis) this start of a sequencer's
    script: claim the instance's row too, then launch. The answer for the web is
    `{"ok": true, "worker", "pid", "handlers"}`, or `{"ok": false, ...}` with `exitCode` /
    `reason` (the web then reads the child's stderr for the message) or `error`."""
    iid, sequencer_id = str(req["id"]), str(req["sequencer"]["id"])
    claimed = await db_call_retrying(claim_start, sequencer_id, iid, sup.name)
    if not claimed:
        log.warning("refused a start for sequencer %s: its row is not waiting", sequencer_id)
        return {
            "ok": False,
            "status": 404,
            "code": "NOT_FOUND",
            "error": "the sequencer's process already started",
        }
    spec, argv = await sup.child_spec(req)
    answer = await launch(sup, sequencer_id, iid, spec, argv, float(settings.HUB_START_TIMEOUT))
    if answer.get("pid"):
        sup.writer.update(iid, pid=answer["pid"])
    return answer


async def _drained(actor: SequencerActor) -> None:
    # The web reads the sequencer right after our answer: let the actor record the end first.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(actor.task), 10)


@control.op("seqcmd")
async def seqcmd(sup: Supervisor, header: dict[str, Any], payload: bytes) -> None:
    """Control op `seqcmd`: `{id, command, body, user, reply, upstream?}` → the actor's queue.
    `upstream` names the sequencer whose script sent it (runner/upstream.py); the message is
    signed, so a child cannot forge one."""
    actor = ACTORS.get(str(header.get("id")))
    if actor is None:
        if header.get("reply"):
            await sup.reply(
                header["reply"],
                {
                    "ok": False,
                    "status": 409,
                    "code": "NOT_RUNNING",
                    "error": f"sequencer {header.get('id')} has no process on worker {sup.name}",
                },
            )
        return
    user = header.get("user")
    upstream = header.get("upstream")
    actor.submit(
        str(header.get("command", "")),
        header.get("body"),
        user if isinstance(user, int) else None,
        header.get("reply"),
        upstream if isinstance(upstream, dict) else None,
    )


register_launcher("script", start_script)
