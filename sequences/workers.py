"""Workers, web side: what the API, the Workers page and the CLI show of them, and the drain.

A worker's row (models.Worker) is written by the worker itself (at start, at each heartbeat,
when its drain ends); the web adds when a drain was taken. Its free places come from what it
publishes in Redis (`hub:room:<queue>`). A drain is the control operation `drain` on the
worker's own list (runner/drain.py), signed like every control message; the web waits for the
worker's answer, so a drain that returns was taken.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone
from redis.exceptions import RedisError

from core.db_threads import db_call
from sequences import live
from sequences.errors import HubError
from sequences.instances import wait_reply
from sequences.models import LIVE_STATUSES, Instance, Sequencer, Worker

DEFAULT_DRAIN_DEADLINE = 300.0  # seconds the instances of a drained worker may still run
MAX_DRAIN_DEADLINE = 7 * 24 * 3600.0
DRAIN_REPLY_TIMEOUT = 5.0
STATES = ("live", "draining", "silent", "drained", "stopped")


def worker_not_found(name: str) -> HubError:
    return HubError(404, "NOT_FOUND", f"no worker named {name!r}: see GET /workers")


def list_workers() -> list[Worker]:
    """Every worker the hub knows, running ones first, then by name."""
    return sorted(Worker.objects.all(), key=lambda w: (w.stopped is not None, w.name))


def get_worker(name: str) -> Worker:
    worker = Worker.objects.filter(name=name).first()
    if worker is None:
        raise worker_not_found(name)
    return worker


def state(worker: Worker, now: datetime | None = None) -> str:
    """live (its heartbeat is fresh), draining, silent (no heartbeat for HUB_LOST_AFTER),
    drained (it exited after a drain) or stopped (it ended otherwise, or was found lost)."""
    if worker.drained is not None:
        return "drained"
    if worker.stopped is not None:
        return "stopped"
    now = now or timezone.now()
    if worker.last_seen < now - timedelta(seconds=settings.HUB_LOST_AFTER):
        return "silent"
    return "draining" if worker.draining is not None else "live"


def free_places() -> dict[str, int]:
    """What each live worker of the hub's queue last published as its free places (0 for a
    draining one)."""
    try:
        entries = cast(
            "dict[bytes, bytes]",
            live.sync_client().hgetall(live.room_key(settings.CELERY_TASK_DEFAULT_QUEUE)),
        )
    except RedisError:
        return {}
    now = time.time()
    free: dict[str, int] = {}
    for name, value in entries.items():
        parts = value.split()
        try:
            if len(parts) >= 2 and float(parts[1]) >= now:
                free[name.decode()] = int(parts[0])
        except ValueError:
            continue
    return free


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def describe(worker: Worker, free: dict[str, int] | None = None) -> dict[str, Any]:
    """`{name, hostname, pid, state, capacity, running, free, load, labels, sandbox, started,
    lastSeen, stopped, draining, drainDeadline, drained}`."""
    shown = state(worker)
    places = (free if free is not None else free_places()).get(worker.name)
    if shown not in ("live", "draining"):
        places = 0
    return {
        "name": worker.name,
        "hostname": worker.hostname,
        "pid": worker.pid,
        "state": shown,
        "capacity": worker.capacity,
        "running": worker.running,
        "free": places,
        "load": round(worker.running / worker.capacity, 3) if worker.capacity else None,
        # Placement by labels (HUB_WORKER_LABELS) adds the field; none before it.
        "labels": worker.labels or [],
        "sandbox": (worker.sandbox or {}).get("summary", ""),
        "started": _iso(worker.started),
        "lastSeen": _iso(worker.last_seen),
        "stopped": _iso(worker.stopped),
        "draining": _iso(worker.draining),
        "drainDeadline": _iso(worker.drain_deadline),
        "drained": _iso(worker.drained),
    }


def list_json() -> list[dict[str, Any]]:
    free = free_places()
    return [describe(w, free) for w in list_workers()]


def running_instances(worker: Worker) -> QuerySet[Instance]:
    return Instance.objects.filter(worker=worker.name, status__in=LIVE_STATUSES, kind="sequence")


def running_sequencers(worker: Worker) -> QuerySet[Sequencer]:
    return Sequencer.objects.filter(
        instance__worker=worker.name, instance__status__in=LIVE_STATUSES
    ).exclude(state="Killed")


def detail_json(worker: Worker) -> dict[str, Any]:
    """`describe`, with the ids of the instances it runs and its sequencers (`{id, prefix,
    state}`)."""
    data = describe(worker)
    data["instances"] = list(running_instances(worker).values_list("id", flat=True))
    data["sequencers"] = [
        {"id": s.id, "prefix": s.prefix, "state": s.shown_state} for s in running_sequencers(worker)
    ]
    return data


def parse_deadline(raw: bytes) -> float:
    """The drain body `{"deadline": seconds}` (all optional): the deadline in seconds, or 400
    INVALID_REQUEST naming the field."""
    body: Any = {}
    if raw.strip():
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise HubError(400, "INVALID_REQUEST", f"body is not valid JSON: {exc}") from None
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise HubError(400, "INVALID_REQUEST", 'body must be a JSON object like {"deadline": 60}')
    return check_deadline(body.get("deadline"))


def check_deadline(value: Any) -> float:
    if value is None:
        return DEFAULT_DRAIN_DEADLINE
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_DRAIN_DEADLINE
    ):
        raise HubError(
            400,
            "INVALID_REQUEST",
            f"deadline must be a number of seconds from 0 to {MAX_DRAIN_DEADLINE:.0f}, "
            f"got {value!r}",
        )
    return float(value)


def _drainable(name: str) -> Worker:
    worker = get_worker(name)
    shown = state(worker)
    if shown in ("drained", "stopped"):
        raise HubError(409, "WORKER_STOPPED", f"worker {name} is {shown}: nothing to drain")
    return worker


def _record_drain(name: str, deadline: float) -> Worker:
    now = timezone.now()
    Worker.objects.filter(name=name, draining__isnull=True).update(draining=now)
    Worker.objects.filter(name=name).update(drain_deadline=datetime.fromtimestamp(deadline, tz=UTC))
    return get_worker(name)


async def drain(name: str, deadline: float) -> dict[str, Any]:
    """Ask the worker `name` to drain: no more starts; what it runs may finish within
    `deadline` seconds and is stopped then; it exits when empty. Answers its description,
    once the worker took the drain (404 for no such worker, 409 for one that stopped, 503
    when it does not answer: a silent worker's list keeps nothing)."""
    await db_call(_drainable, name)
    token = live.new_token()
    key = live.control_key(name)
    message = live.encode_control(key, {"op": "drain", "deadline": deadline, "reply": token})
    client = live.async_client()
    await client.rpush(key, message)
    answer = await wait_reply(token, DRAIN_REPLY_TIMEOUT)
    if answer is None:
        # Taken back if it was not popped, so a worker that comes back later does not drain
        # for a request nobody waits for.
        await client.lrem(key, 1, cast(str, message))
        raise HubError(
            503,
            "WORKER_SILENT",
            f"worker {name} did not answer within {DRAIN_REPLY_TIMEOUT:.0f} s: is it running?",
        )
    if not answer.get("ok"):
        raise HubError(500, "DRAIN_FAILED", str(answer.get("error", "the drain failed")))
    worker = await db_call(_record_drain, name, float(answer["deadline"]))
    data = await db_call(describe, worker)
    data["state"] = "draining"  # its heartbeat's row may be a moment older than its answer
    return data
