"""Sequencer persistence: snapshot ⇄ rows, transition history, and change notices.

Shared by the worker's sequencer actors and the web (which only ever marks a sequencer Killed
when its process is gone). Every change goes through `apply`, which re-reads the row under a
row lock, so two writers (two workers, or a worker and the web) can never interleave: each
change is decided on the state the previous one left. After the commit the change is appended
to the Redis stream `seqev:<id>` (sequences/live.py), durable enough for readers that
reconnect (events ndjson, queryFinal), and the caller fans it out on the channel layer
(at-most-once, for pages).

Synchronous on purpose: the actor calls it from a thread, the web through `sync_to_async`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from asgiref.sync import async_to_sync
from django.db import transaction
from django.utils import timezone

from sequences import live, notices
from sequences.models import SequenceComponent, Sequencer, SequencerTransition
from sequences.models import Step as StepRow
from sequences.statemachine import (
    KILLED_MID_RUN,
    Error,
    PendingCall,
    Snapshot,
    State,
    run_outcome,
    run_result_from_json,
)
from sequences.steplist import Step, StepList, StepStatus, StepType

log = logging.getLogger(__name__)

T = TypeVar("T")

EVENTS_MAXLEN = 1000  # change notices kept per sequencer; readers fall back to the database


def events_key(sequencer_id: str) -> str:
    """Redis stream of change notices `{d: json}` for one sequencer."""
    return live.sequencer_events_key(sequencer_id)


# -- snapshot ⇄ rows -----------------------------------------------------------------------


def snapshot_of(row: Sequencer) -> Snapshot:
    """The state machine's view of a row (reads its Step rows)."""
    steps = None
    if row.has_step_list:
        # `.all()` (ordered by position in Meta) so a prefetched list is used as is.
        steps = StepList(tuple(_step_of(r) for r in row.steps.all()))
    result = run_result_from_json(row.run_result) if row.run_result else None
    pending = PendingCall.from_json(row.pending) if row.pending else None
    state = State(row.state)
    if state is State.PROCESSING:  # never stored, but a hand-edited row must not break reads
        state = State.IDLE
    return Snapshot(state, steps, row.run_id or None, result, pending, row.run_end)


def _step_of(row: StepRow) -> Step:
    status = StepStatus(row.status)
    return Step(
        id=row.step_id,
        type=StepType(row.type),
        command=row.command,
        params=row.params or {},
        status=status,
        has_breakpoint=row.has_breakpoint,
        message=row.message if status is StepStatus.FAILURE else None,
    )


def _save(row: Sequencer, before: Snapshot, after: Snapshot, reason: str | None) -> None:
    now = timezone.now()
    row.state = str(after.state)
    row.processing = str(after.pending.command) if after.pending else ""
    row.pending = after.pending.to_json() if after.pending else None
    row.run_id = after.run_id or ""
    row.run_result = after.run_result.to_json() if after.run_result else None
    row.run_end = after.run_end
    row.has_step_list = after.steps is not None
    row.version += 1
    if after.state is State.KILLED and before.state is not State.KILLED:
        row.ended = now
    if reason is not None:
        row.reason = reason[:500]
    row.save()
    if before.steps != after.steps:
        _save_steps(row, after.steps, now)


def _save_steps(row: Sequencer, steps: StepList | None, now: Any) -> None:
    """Bring the Step rows in line with `steps`, keeping each step's start and end times."""
    existing = {r.step_id: r for r in row.steps.all()}
    created: list[StepRow] = []
    changed: list[StepRow] = []
    for position, step in enumerate(steps or ()):
        r = existing.pop(step.id, None)
        if r is None:
            r = StepRow(sequencer=row, step_id=step.id)
            created.append(r)
        elif _same(r, step, position):
            continue
        else:
            changed.append(r)
        r.position = position
        r.type = str(step.type)
        r.command = step.command
        r.params = step.params
        r.status = str(step.status)
        r.has_breakpoint = step.has_breakpoint
        r.message = step.message or ""
        if step.status is not StepStatus.PENDING and r.started is None:
            r.started = now
        if step.status.is_finished and r.ended is None:
            r.ended = now
    if existing:
        StepRow.objects.filter(pk__in=[r.pk for r in existing.values()]).delete()
    if created:
        StepRow.objects.bulk_create(created)
    if changed:
        StepRow.objects.bulk_update(
            changed,
            [
                "position",
                "type",
                "command",
                "params",
                "status",
                "has_breakpoint",
                "message",
                "started",
                "ended",
            ],
        )


def _same(r: StepRow, step: Step, position: int) -> bool:
    return (
        r.position == position
        and r.status == str(step.status)
        and r.has_breakpoint == step.has_breakpoint
        and (r.message or "") == (step.message or "")
        and r.command == step.command
        and r.type == str(step.type)
        and r.params == step.params
    )


# -- the public view -----------------------------------------------------------------------


def describe(row: Sequencer, snapshot: Snapshot | None = None) -> dict[str, Any]:
    """The API's sequencer JSON (docs/api.md), step list included."""
    snap = snapshot if snapshot is not None else snapshot_of(row)
    script = row.script
    instance = row.instance
    return {
        "id": row.id,
        "prefix": row.prefix,
        "state": str(snap.display_state),
        "runId": snap.run_id,
        "runResult": snap.run_result.to_json() if snap.run_result else None,
        # How the run ended, for people (Completed, Failed at step N, Aborted, Stopped, ...).
        "runOutcome": _run_outcome_json(snap),
        "isOnline": snap.is_online,
        "isAvailable": snap.is_available,
        "processing": str(snap.pending.command) if snap.pending else None,
        "script": {"id": script.id, "name": script.name} if script else None,
        "component": row.component.name if row.component_id and row.component else None,
        "instance": row.instance_id,
        "worker": instance.worker if instance else "",
        "handlers": row.handlers or {},
        "reason": row.reason,
        "version": row.version,
        "upstream": row.upstream_id,
        "created": row.created.isoformat() if row.created else None,
        "ended": row.ended.isoformat() if row.ended else None,
        "stepList": snap.steps.to_json() if snap.steps is not None else None,
    }


def _run_outcome_json(snapshot: Snapshot) -> dict[str, Any] | None:
    found = run_outcome(snapshot)
    return found.to_json() if found else None


def event_of(row: Sequencer, snapshot: Snapshot) -> dict[str, Any]:
    """One line of the events stream: `{state, stepList}` plus what tells lines apart."""
    return {
        "id": row.id,
        "state": str(snapshot.display_state),
        "stepList": snapshot.steps.to_json() if snapshot.steps is not None else None,
        "runId": snapshot.run_id,
        "runResult": snapshot.run_result.to_json() if snapshot.run_result else None,
        "version": row.version,
        "reason": row.reason,
    }


# -- changes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Applied(Generic[T]):
    """What `apply` did: the snapshots around the change, the change's own result, and the
    sequencer view to fan out (None when nothing changed)."""

    before: Snapshot
    after: Snapshot
    result: T
    view: dict[str, Any] | None


def apply(
    sequencer_id: str,
    change: Callable[[Snapshot], tuple[Snapshot, T]],
    command: str,
    user_id: int | None = None,
    response: Callable[[T], dict[str, Any] | None] | None = None,
    reason: str | None = None,
    upstream: dict[str, Any] | None = None,
) -> Applied[T]:
    """Decide and persist one change of a sequencer under its row lock.

    `change` gets the current snapshot and returns the new one and a result. When the shown
    state moves, a transition row records `command`, `user_id` (or `upstream`, the sequencer
    whose script sent the command) and `response(result)`.
    """
    with transaction.atomic():
        # Lock the sequencer row only: the joined rows are nullable (PostgreSQL refuses FOR
        # UPDATE on the nullable side of an outer join) and others write them.
        row = (
            Sequencer.objects.select_for_update(of=("self",))
            .select_related("script", "component", "instance")
            .get(pk=sequencer_id)
        )
        before = snapshot_of(row)
        after, result = change(before)
        linked = _link_upstream(row, upstream)
        if after == before:
            return Applied(before, before, result, describe(row, after) if linked else None)
        _save(row, before, after, reason)
        if after.state is State.KILLED and before.state is not State.KILLED:
            _free_component(row, reason or row.reason)
        if before.display_state != after.display_state:
            SequencerTransition.objects.create(
                sequencer=row,
                from_state=str(before.display_state),
                to_state=str(after.display_state),
                command=command[:40],
                response=response(result) if response else None,
                user_id=user_id,
                upstream=upstream,
            )
    publish_event(row.id, event_of(row, after), final=after.state is State.KILLED)
    return Applied(before, after, result, describe(row, after))


def _link_upstream(row: Sequencer, upstream: dict[str, Any] | None) -> bool:
    """Remember which sequencer commanded this one last (its page lists the link); whether
    the link changed."""
    if not upstream or row.upstream_id == upstream.get("id"):
        return False
    if not Sequencer.objects.filter(pk=upstream.get("id")).exists():
        return False
    Sequencer.objects.filter(pk=row.pk).update(upstream_id=upstream["id"])
    row.upstream_id = upstream["id"]
    return True


def _free_component(row: Sequencer, reason: str) -> None:
    """A Killed sequencer's component no longer hosts it: Running → Idle, with the reason, so
    no component says Running beside a Killed sequencer (whatever killed it: a shutdown
    command, its process's end, its worker lost or shut down). Only the component's newest
    sequencer frees it: an older one killed late must not unload its successor."""
    component_id = row.component_id
    if component_id is None:
        return
    newest = (
        Sequencer.objects.filter(component_id=component_id)
        .order_by("-created")
        .values_list("id", flat=True)
        .first()
    )
    if newest != row.id:
        return
    freed = SequenceComponent.objects.filter(pk=component_id, state="Running").update(
        state="Idle", reason=f"sequencer {row.prefix} was killed: {reason}"[:500]
    )
    if freed:
        transaction.on_commit(lambda: _announce_component(component_id))


def _announce_component(component_id: int) -> None:
    name = SequenceComponent.objects.filter(pk=component_id).values_list("name", flat=True).first()
    if name is None:
        return
    try:
        notices.send({"type": notices.COMPONENTS_CHANGED, "name": name}, notices.COMPONENTS)
    except Exception:
        log.exception("could not announce a change of component %s", name)


def record_transition(
    sequencer_id: str,
    from_state: str,
    to_state: str,
    command: str,
    user_id: int | None = None,
    response: dict[str, Any] | None = None,
) -> None:
    """A transition that no snapshot change carries (a sequencer coming to life: '' → Idle)."""
    SequencerTransition.objects.create(
        sequencer_id=sequencer_id,
        from_state=from_state,
        to_state=to_state,
        command=command[:40],
        response=response,
        user_id=user_id,
    )


def killed(snapshot: Snapshot, reason: str) -> Snapshot:
    """Killed because the process is gone (or going): the in-flight step fails, a running run
    ends in Error (so queryFinal waiters get an answer), a hook in progress is dropped.
    Idempotent, so it also tidies a sequencer a shutdown already made Killed."""
    steps = snapshot.steps
    if steps is not None and steps.in_flight is not None:
        steps = steps.mark_failure(steps.in_flight.id, reason)
    result = snapshot.run_result
    if snapshot.state is State.RUNNING and snapshot.run_id and result is None:
        result = Error(snapshot.run_id, f"{KILLED_MID_RUN} before the sequence finished: {reason}")
    return replace(snapshot, state=State.KILLED, steps=steps, run_result=result, pending=None)


def mark_killed(
    sequencer_id: str, reason: str, command: str, user_id: int | None = None
) -> Applied[None]:
    """Mark one sequencer Killed (its process is gone) and tell watchers."""
    applied = apply(
        sequencer_id,
        lambda s: (killed(s, reason), None),
        command=command,
        user_id=user_id,
        reason=reason,
    )
    if applied.view is not None:
        fan_out(applied.view)
    return applied


# -- notices -------------------------------------------------------------------------------


def publish_event(sequencer_id: str, event: dict[str, Any], final: bool = False) -> None:
    """Append a change notice to the sequencer's Redis stream (best effort: readers also poll
    the database, so a lost notice only delays them)."""
    key = events_key(sequencer_id)
    try:
        client = live.sync_client()
        pipe = client.pipeline(transaction=False)
        pipe.xadd(key, {"d": json.dumps(event)}, maxlen=EVENTS_MAXLEN, approximate=True)
        if final:
            pipe.expire(key, 86400)
        pipe.execute()
    except Exception:
        log.exception("could not publish a change of sequencer %s", sequencer_id)


def channel_message(view: dict[str, Any]) -> dict[str, Any]:
    return {"type": notices.SEQUENCER_CHANGED, "id": view["id"], "snapshot": view}


async def afan_out(view: dict[str, Any]) -> None:
    """Push a change to the sequencer's page group and to the sequencer list (at-most-once)."""
    await notices.asend(
        channel_message(view), notices.sequencer_group(view["id"]), notices.SEQUENCERS
    )


def fan_out(view: dict[str, Any]) -> None:
    """`afan_out` from synchronous code (web threads, Celery tasks)."""
    try:
        async_to_sync(afan_out)(view)
    except Exception:
        log.exception("could not fan out a change of sequencer %s", view.get("id"))
