"""Sequencers that command sequencers: a script's requests for another sequencer.

A script runs in a sandboxed child with no Redis and no key: it cannot reach another sequencer
and must not be able to forge a command. `sequencer.sequencer("IRIS.darknight")` in a script
sends a request (`SEQ_REQUEST`, runner/PROTOCOL.md) on its control socket; its own supervisor
checks it here and sends the command through `sequences.sequencers.command`, the very function
the API's sequencer routes call (the same parsing, the same state machine in the downstream's
actor, the same signed control message to whichever worker runs the downstream), then answers
`SEQ_ANSWER`. The child only ever learns the typed answer.

Authority (docs/scripts.md, "Commanding other sequencers"): a script may send any sequencer
command but `shutdown` to any live sequencer of its hub (components stay the admin's), and read
any sequencer's state and runs. It is recorded as itself: the downstream's transitions and the
audit log name the upstream sequencer, its run and its step, never a user; the supervisor, not
the child, says which run and step (it knows what it sent the child).

Failure semantics (decided here, tested in tests/runner/test_upstream.py):
- an unknown target answers NOT_FOUND; a Killed one Unhandled(Killed); an Offline one
  Unhandled(Offline): the script gets a `SequencerError` and, unless it catches it, its step fails
  with that message;
- a command to itself, or to a sequencer that (transitively) waits on this one's run, is refused
  with CYCLE at once: a cycle never deadlocks. Chains deeper than MAX_CHAIN are refused too;
- `submitAndWait` / `queryFinal` wait at most `timeout` s (at most an hour): at the deadline the
  answer is the run's `Started`, flagged `timedOut`, and the downstream's run goes on;
- the upstream shut down or killed while it waits: its waits are cancelled with its process,
  the downstream's run goes on; an abort of the upstream lets its in-flight step (the wait)
  finish, as for any step;
- two upstreams on one downstream are serialised by the downstream's actor: the second submit
  gets Unhandled(Running) while the first's run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from core.db_threads import db_call
from core.protocol import Message
from sequences import hub_events, sequencers
from sequences import sequencer_store as store
from sequences.errors import HubError
from sequences.models import Sequencer
from sequences.statemachine import CommandName, State

if TYPE_CHECKING:
    from runner.sequencer_actor import SequencerActor

log = logging.getLogger(__name__)

# What a script may send: every sequencer command but shutdown, and four of its own.
COMMANDS = {str(c) for c in CommandName} - {str(CommandName.SHUTDOWN)}
SUBMIT_AND_WAIT, QUERY_FINAL, QUERY, GET_STATE = "submitAndWait", "queryFinal", "query", "getState"
READS = {QUERY, GET_STATE}  # harmless in a cycle: they answer at once
ALL = COMMANDS | {SUBMIT_AND_WAIT, QUERY_FINAL, QUERY, GET_STATE}
MAX_IN_FLIGHT = 32  # requests one script may have waiting at once
MAX_CHAIN = 8  # upstreams above a sequencer, at most
MAX_TARGET = 200
DEFAULT_WAIT = 60.0


def refused(status: int, code: str, error: str) -> dict[str, Any]:
    return {"ok": False, "status": status, "code": code, "error": error}


class Upstream:
    """One sequencer's requests to others, served in its supervisor's loop."""

    def __init__(self, actor: SequencerActor) -> None:
        self.actor = actor
        self.tasks: set[asyncio.Task[None]] = set()
        self.prefix: str | None = None
        # The chain of upstreams above this sequencer's current run (ids, outermost first),
        # as the signed command that started the run said; empty for a run a user started.
        self.chain: list[str] = []
        self.chain_run: str | None = None

    # -- from the actor ----------------------------------------------------------------------
    def request(self, data: Any) -> None:
        """A SEQ_REQUEST from the child (hostile input: checked before anything is done)."""
        if not isinstance(data, dict):
            return
        req = data.get("req")
        if len(self.tasks) >= MAX_IN_FLIGHT:
            self._send(
                req,
                refused(429, "TOO_MANY", f"more than {MAX_IN_FLIGHT} requests waiting at once"),
            )
            return
        task = self.actor.loop.create_task(self._serve(req, data))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def run_started(self, run_id: str, upstream: dict[str, Any] | None) -> None:
        """A run began: remember the chain of upstreams above it (none if a user began it)."""
        chain = upstream.get("chain") if upstream else None
        self.chain = [str(c) for c in chain][:MAX_CHAIN] if isinstance(chain, list) else []
        self.chain_run = run_id

    def cancel(self) -> None:
        """The process is gone: nobody waits for these answers any more."""
        for task in list(self.tasks):
            task.cancel()

    # -- serving -------------------------------------------------------------------------------
    def _send(self, req: Any, answer: dict[str, Any]) -> None:
        if not self.actor.exited:
            self.actor.sup.send(self.actor.child, Message.SEQ_ANSWER, {**answer, "req": req})

    async def _serve(self, req: Any, data: dict[str, Any]) -> None:
        command = data.get("command")
        # Only a known name reaches the audit log: what a hostile script sends is not ours
        # to record verbatim.
        name = command if isinstance(command, str) and command in ALL else "request"
        target = data.get("target")
        row: Sequencer | None = None
        try:
            row, answer = await self._handle(data)
        except HubError as exc:
            answer = refused(exc.status, exc.code, exc.message)
        except Exception as exc:  # a bad request must never take the actor down
            log.exception("sequencer %s: a script's request failed", self.actor.id)
            answer = refused(500, "SEQUENCER_ERROR", f"{type(exc).__name__}: {exc}")
        self._send(req, answer)
        if name not in READS | {QUERY_FINAL}:
            shown = target if isinstance(target, str) else ""
            await self._audit(name, row, shown[:MAX_TARGET], answer)

    async def _handle(self, data: dict[str, Any]) -> tuple[Sequencer | None, dict[str, Any]]:
        command, target, body = data.get("command"), data.get("target"), data.get("body")
        if not isinstance(command, str) or command not in ALL:
            if command == str(CommandName.SHUTDOWN):
                raise HubError(
                    403,
                    "FORBIDDEN",
                    "a script may not shut a sequencer down (its component's admin may)",
                )
            raise HubError(404, "NOT_FOUND", f"unknown sequencer command {command!r}")
        if not isinstance(target, str) or not target or len(target) > MAX_TARGET:
            raise HubError(400, "INVALID_REQUEST", "target: expected a sequencer prefix or id")
        row = await sequencers.aget_sequencer(target)
        if command not in READS:
            self._check_cycle(row)
        if command == GET_STATE:
            return row, {"ok": True, "status": 200, "response": await db_call(_state, row)}
        if command == QUERY:
            answer = await db_call(sequencers.query, row, _run_id(data))
            return row, {"ok": True, "status": 200, "response": answer}
        timeout = _timeout(data.get("timeout"))
        if command == QUERY_FINAL:
            return row, await self._final(row, _run_id(data), timeout)
        upstream = await self._upstream()
        name = str(CommandName.SUBMIT) if command == SUBMIT_AND_WAIT else command
        started = time.monotonic()
        response, status = await sequencers.command(row, name, body, None, upstream=upstream)
        if command != SUBMIT_AND_WAIT or response.get("type") != "Started":
            return row, {"ok": True, "status": status, "response": response}
        left = max(0.0, timeout - (time.monotonic() - started))
        return row, await self._final(row, str(response["runId"]), left)

    async def _final(self, row: Sequencer, run_id: str, timeout: float) -> dict[str, Any]:
        answer = await sequencers.query_final(row, run_id, timeout)
        result: dict[str, Any] = {"ok": True, "status": 200, "response": answer}
        if answer.get("type") == "Started":
            result["timedOut"] = True
        return result

    def _check_cycle(self, row: Sequencer) -> None:
        if row.id == self.actor.id:
            raise HubError(409, "CYCLE", f"sequencer {row.prefix} may not command itself")
        chain = self._current_chain()
        if row.id in chain:
            raise HubError(
                409,
                "CYCLE",
                f"sequencer {row.prefix} waits (through its run) on this sequencer: commanding "
                "it back would be a cycle",
            )
        if len(chain) >= MAX_CHAIN:
            raise HubError(
                409, "CYCLE", f"more than {MAX_CHAIN} sequencers above this one: refused"
            )

    def _current_chain(self) -> list[str]:
        snap = self.actor.snapshot
        if snap is not None and snap.state is State.RUNNING and snap.run_id == self.chain_run:
            return self.chain
        return []

    async def _upstream(self) -> dict[str, Any]:
        """Who is commanding: this sequencer, its run and the step in flight, as the actor
        knows them (not as the child says)."""
        if self.prefix is None:
            prefix = await db_call(
                lambda: (
                    Sequencer.objects.filter(pk=self.actor.id)
                    .values_list("prefix", flat=True)
                    .first()
                )
            )
            self.prefix = prefix or self.actor.id
        snap = self.actor.snapshot
        run_id = snap.run_id if snap is not None and snap.state is State.RUNNING else None
        return {
            "id": self.actor.id,
            "prefix": self.prefix,
            "runId": run_id,
            "step": self.actor.step_in_flight(),
            "chain": [*self._current_chain(), self.actor.id],
        }

    async def _audit(
        self, command: str, row: Sequencer | None, target: str, answer: dict[str, Any]
    ) -> None:
        response = answer.get("response") or {}
        ok = answer.get("ok") and int(answer.get("status", 500)) == 200
        detail: dict[str, Any] = {
            "prefix": row.prefix if row is not None else target,
            "upstream": self.prefix or self.actor.id,
            "upstreamId": self.actor.id,
        }
        if response.get("type"):
            detail["response"] = response["type"]
        if not answer.get("ok"):
            detail["error"] = answer.get("error")
        with contextlib.suppress(Exception):
            await db_call(
                hub_events.record,
                f"sequencer.{command}",
                row.id if row is not None else target,
                actor=self.prefix or self.actor.id,
                via="sequencer",
                outcome="ok" if ok else "refused",
                **detail,
            )


def _state(row: Sequencer) -> dict[str, Any]:
    view = store.describe(row)
    return {
        "type": "State",
        "state": view["state"],
        "runId": view["runId"],
        "runResult": view["runResult"],
        "isOnline": view["isOnline"],
        "stepList": view["stepList"],
    }


def _run_id(data: dict[str, Any]) -> str:
    run_id = data.get("runId")
    if not isinstance(run_id, str) or not run_id:
        raise HubError(400, "INVALID_REQUEST", "runId: expected the run id a submit answered")
    return run_id


def _timeout(value: Any) -> float:
    if value is None:
        return DEFAULT_WAIT
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise HubError(400, "INVALID_REQUEST", f"timeout: expected seconds >= 0, got {value!r}")
    return min(float(value), sequencers.QUERY_FINAL_MAX)
