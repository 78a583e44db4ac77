"""How an instance ended, for the API, the console and the audit log.

The outcome (core.protocol.Ending) and what ended it (core.protocol.EndedBy) are derived from
what the worker records (status, exit code, reason: `core.protocol.ending`), so every row has
one, those written before outcomes existed too. The one thing the worker cannot know is which
user asked: the web records the username of a stop or kill request on the row (`ended_by`), and
it is named where the outcome is that request's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Q

from core.protocol import (
    DRAINED,
    EXIT_REASONS,
    WORKER_SHUTDOWN,
    EndedBy,
    Ending,
    Exit,
    ending,
)
from sequences.models import Instance, InstanceStatus

# The words a badge shows for each outcome.
LABELS = {
    Ending.COMPLETED: "completed",
    Ending.FAILED: "failed",
    Ending.STOPPED: "stopped",
    Ending.KILLED: "killed",
    Ending.LOST: "lost",
    Ending.REFUSED: "refused",
}


@dataclass(frozen=True)
class Ended:
    outcome: str  # an Ending name
    kind: str  # an EndedBy name
    user: str | None  # who asked, where the hub knows it (kind user or timeout)
    text: str  # "killed at alice's request", for people

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "user": self.user, "text": self.text}


def ended(instance: Instance) -> Ended | None:
    """How `instance` ended, or None while it runs."""
    found = ending(instance.status, instance.exit_code, instance.reason)
    if found is None:
        return None
    outcome, kind = found
    user = (instance.ended_by or None) if kind in (EndedBy.USER, EndedBy.TIMEOUT) else None
    return Ended(outcome, kind, user, _text(outcome, kind, user, instance))


def _text(outcome: str, kind: str, user: str | None, instance: Instance) -> str:
    asked = f"at {user}'s request" if user else "on request"
    if kind == EndedBy.USER:
        if outcome == Ending.STOPPED:
            return f"stopped {asked}: its stop handlers ran"
        # No user recorded: a kill from before outcomes, or a SIGKILL nobody at the hub sent.
        return f"killed {asked}" if user else "killed (no kill request recorded)"
    if kind == EndedBy.TIMEOUT:
        return f"stopped {asked}: killed when the stop timeout passed"
    worker = f"its worker {instance.worker}" if instance.worker else "its worker"
    if kind == EndedBy.WORKER_LOST:
        return f"{worker} was lost"
    if kind == EndedBy.SHUTDOWN:
        return f"{worker} shut down"
    if kind == EndedBy.DRAIN:
        return f"{outcome} when its worker's drain deadline passed"
    if kind == EndedBy.SIGNAL:
        return "killed by a signal the hub did not send"
    if kind == EndedBy.HUB:
        if outcome == Ending.REFUSED:
            return "refused: no worker had room for it"
        return "the hub could not start it"
    if outcome == Ending.FAILED:
        return "the sequence failed"
    return "the sequence finished"


def outcome_json(instance: Instance) -> dict[str, Any]:
    """The API's `outcome` and `endedBy` (only added fields: STH clients ignore them)."""
    found = ended(instance)
    if found is None:
        return {}
    return {"outcome": found.outcome, "endedBy": found.to_json()}


_STOPPED = Q(exit_code=Exit.STOPPED) | Q(reason__startswith=EXIT_REASONS[Exit.STOPPED].reason)
_HUB_KILLED = Q(reason=WORKER_SHUTDOWN.reason) | Q(reason__endswith=DRAINED)


def outcome_q(outcome: str) -> Q:
    """The rows of one outcome, as `core.protocol.ending` decides it (a test holds the two
    together), so the console filters in the database."""
    done = Q(status=InstanceStatus.COMPLETED)
    errored = Q(status=InstanceStatus.ERRORED)
    if outcome == Ending.LOST:
        return Q(status=InstanceStatus.LOST)
    if outcome == Ending.REFUSED:
        return errored & Q(exit_code=Exit.REFUSED)
    if outcome == Ending.FAILED:
        return errored & ~Q(exit_code=Exit.REFUSED)
    if outcome == Ending.STOPPED:
        return done & _STOPPED
    if outcome == Ending.KILLED:
        return done & ~_STOPPED & (Q(exit_code=Exit.KILLED) | _HUB_KILLED)
    if outcome == Ending.COMPLETED:
        return done & ~_STOPPED & ~Q(exit_code=Exit.KILLED) & ~_HUB_KILLED
    raise ValueError(f"outcome: {outcome!r} is not one of {', '.join(Ending.ALL)}")
