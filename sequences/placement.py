"""Placement: which worker takes a start.

Each worker publishes its room on `hub:room:<queue>` (live.py): its free places, the memory it
has available and its labels (`HUB_WORKER_LABELS`). The web chooses one worker that fits the
start (its `placement`: labels every one of which the worker must have, and/or a worker's name)
and has a free place, and pushes the start onto that worker's own list; the worker checks the
placement again when it pops it. The web (`instances.push_start`) and the worker
(`runner.supervisor`) share what is here: the placement's shape and the fit.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from core.labels import LABEL_RULE, is_label
from sequences.errors import HubError
from sequences.live import WorkerRoom

MAX_LABELS = 32
MAX_WORKER_NAME = 200  # Worker.name's length
PLACEMENT_KEYS = ("labels", "worker")


@dataclass(frozen=True)
class Placement:
    """Where a start may run: on a worker that has every one of `labels`, and is named
    `worker` when that is set. The empty placement fits every worker."""

    labels: tuple[str, ...] = ()
    worker: str = ""  # a worker's name, or its host's

    def __bool__(self) -> bool:
        return bool(self.labels or self.worker)

    def to_json(self) -> dict[str, Any]:
        """As the start body says it (and the row and the start request keep it)."""
        data: dict[str, Any] = {}
        if self.labels:
            data["labels"] = list(self.labels)
        if self.worker:
            data["worker"] = self.worker
        return data

    def describe(self) -> str:
        parts = []
        if self.labels:
            parts.append(f"labels {', '.join(self.labels)}")
        if self.worker:
            parts.append(f"name or host {self.worker}")
        return " and ".join(parts) or "no placement"


def invalid(message: str) -> HubError:
    # The start body's other fields are refused the same way (instances.invalid).
    return HubError(422, "INVALID_CONFIG", message)


def parse_placement(value: Any, field: str = "placement") -> Placement:
    """`{"labels": ["gpu", "zone=a"], "worker": "<name>"}`, each key optional; None or `{}` is
    no placement. INVALID_CONFIG naming the field otherwise."""
    if value is None:
        return Placement()
    if not isinstance(value, dict):
        raise invalid(
            f'{field} must be a JSON object like {{"labels": ["gpu"], "worker": "<name>"}}, '
            f"got {type(value).__name__}"
        )
    unknown = sorted(set(value) - set(PLACEMENT_KEYS))
    if unknown:
        raise invalid(f"{field}.{unknown[0]} is not a placement field: use labels, worker")
    labels = value.get("labels")
    if labels is None:
        labels = []
    if not isinstance(labels, list):
        raise invalid(f"{field}.labels must be an array of labels, got {type(labels).__name__}")
    if len(labels) > MAX_LABELS:
        raise invalid(f"{field}.labels has {len(labels)} labels, at most {MAX_LABELS}")
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise invalid(f"{field}.labels[{i}] must be a string, got {type(label).__name__}")
        if not is_label(label):
            raise invalid(f"{field}.labels[{i}] {label[:40]!r} is not a label: {LABEL_RULE}")
    worker = value.get("worker")
    if worker is None:
        worker = ""
    if not isinstance(worker, str) or len(worker) > MAX_WORKER_NAME:
        raise invalid(
            f"{field}.worker must be a worker's name (up to {MAX_WORKER_NAME} characters)"
        )
    # Order and repeats do not change where a start may run.
    return Placement(labels=tuple(dict.fromkeys(labels)), worker=worker)


def misfit(placement: Placement, name: str, labels: Iterable[str], host: str = "") -> str | None:
    """Why the worker `name` on `host` with `labels` may not run a start placed so, or None.
    `placement.worker` names the worker or its host (a worker's name changes when it
    restarts; its host's stays)."""
    if placement.worker and placement.worker not in (name, host):
        return f"the start is for worker {placement.worker}, not {name}"
    lacking = [label for label in placement.labels if label not in set(labels)]
    if lacking:
        return f"worker {name} does not have labels {', '.join(lacking)}"
    return None


@dataclass(frozen=True)
class Choice:
    """What the web does with a start: push it to `worker`'s own list; refuse it with
    `refusal` (507); or, with neither, use the queue's shared list (`shared`: workers with
    room that do not read lists of their own) or wait for a worker to publish its room."""

    worker: str = ""
    refusal: str = ""
    shared: bool = False


def _shown(rooms: list[WorkerRoom], limit: int = 8) -> str:
    shown = [f"{r.name} [{', '.join(r.labels)}]" for r in rooms[:limit]]
    if len(rooms) > limit:
        shown.append(f"and {len(rooms) - limit} more")
    return ", ".join(shown) or "none"


def choose(
    rooms: list[WorkerRoom],
    placement: Placement,
    queue: str,
    memory_mb: int | None = None,
    placing: Mapping[str, int] | None = None,
    skip: Iterable[str] = (),
) -> Choice:
    """The worker to offer a start to: among the live workers that fit its placement and
    have a free place, the one with the most free places, less the starts this web is
    offering it now (`placing`: what the workers' published room does not show yet), so a
    burst spreads; one with the memory the start's limit names first; ties at random.
    `skip`: workers that did not take this start when offered (unless no other is left).
    A draining worker is left out: it is going away, so it is neither room nor a reason to
    refuse (the start waits for the worker that takes its place)."""
    rooms = [r for r in rooms if not r.draining]
    if not rooms:
        return Choice()
    fitting = [r for r in rooms if misfit(placement, r.name, r.labels, r.host) is None]
    if placement:
        # A worker that does not publish its labels (an older one) cannot check a placement.
        fitting = [r for r in fitting if r.own_list]
        if not fitting:
            return Choice(
                refusal=f"no live worker of queue {queue} has {placement.describe()} "
                f"(live: {_shown(rooms)})"
            )
    with_room = [r for r in fitting if r.free > 0]
    if not with_room:
        which = f"that has {placement.describe()} " if placement else ""
        return Choice(
            refusal=f"every worker of queue {queue} {which}is at its capacity "
            f"({len(fitting)} live, no free place): try again when an instance ends"
        )
    own = [r for r in with_room if r.own_list]
    if not own:
        return Choice(shared=True)
    skipped = set(skip)
    candidates = [r for r in own if r.name not in skipped] or own
    placing = placing or {}

    def rank(room: WorkerRoom) -> tuple[bool, int, int]:
        enough = memory_mb is None or room.memory_mb < 0 or room.memory_mb >= memory_mb
        return (enough, room.free - placing.get(room.name, 0), max(room.memory_mb, 0) >> 10)

    best = max(rank(r) for r in candidates)
    return Choice(worker=random.choice([r for r in candidates if rank(r) == best]).name)
