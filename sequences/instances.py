"""Instances, web side: start, stop, kill, input, events, health, info.

The web never runs user code: it writes the row, pushes the start on the Redis list that the
supervisors inside the Celery workers read (`hub:start:<queue>`: no task dispatch on this hot
path), and routes control messages to the worker that owns the instance, also through Redis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterable, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError
from django.db.models import OuterRef, QuerySet, Subquery
from django.utils import timezone
from redis.exceptions import RedisError

from core.db_threads import db_call
from core.protocol import Exit
from sequences import live, notices, outcomes, placement, start_watch, topics
from sequences.catalog import get_sequence
from sequences.errors import HubError, not_found
from sequences.models import (
    LIVE_STATUSES,
    Instance,
    InstanceEvent,
    InstanceStatus,
    Sequence,
    Sequencer,
)
from sequences.placement import Placement
from sequences.restart_policy import NEVER, RestartPolicy, parse_restart

log = logging.getLogger(__name__)

MAX_ARGS_BYTES = 1 << 20
MAX_MEMORY_MB = 1 << 20  # a terabyte: anything larger is a typo, and past int() for inf


@dataclass
class StartRequest:
    args: list[Any]
    app_config: dict[str, Any]
    instance_id: str | None
    limits: dict[str, Any]
    output_topic: str = ""
    input_topic: str = ""
    # Set by `restart`, never from a body: the instance this start restarts.
    restarted_from: str | None = None
    # Where it may run: worker labels and/or a worker's name (sequences/placement.py).
    placement: Placement = dataclasses.field(default_factory=Placement)
    # `restart` in the body (sequences/restart_policy.py); the count is set by restarts only.
    restart: RestartPolicy = NEVER
    restart_count: int = 0


def invalid(message: str) -> HubError:
    return HubError(422, "INVALID_CONFIG", message)


def parse_start(raw: bytes) -> StartRequest:
    """Validate a start body: `{appConfig?, args?, instanceId?, limits?, outputTopic?,
    inputTopic?, placement?, restart?}`."""
    if len(raw) > MAX_ARGS_BYTES:
        raise invalid(f"start body is over {MAX_ARGS_BYTES} bytes")
    if raw.strip():
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise HubError(400, "INVALID_CONFIG", f"start body is not valid JSON: {exc}") from None
    else:
        body = {}
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise invalid('start body must be a JSON object like {"args": [...], "appConfig": {}}')
    args = body.get("args", [])
    if args is None:
        args = []
    if not isinstance(args, list):
        raise invalid(f"args must be a JSON array, got {type(args).__name__}")
    app_config = body.get("appConfig", {})
    if app_config is None:
        app_config = {}
    if not isinstance(app_config, dict):
        raise invalid(f"appConfig must be a JSON object, got {type(app_config).__name__}")
    iid = body.get("instanceId")
    if iid is not None and (
        not isinstance(iid, str)
        or not 1 <= len(iid) <= 64
        or not all(c.isalnum() or c in "-_" for c in iid)
    ):
        raise invalid("instanceId must be a string of up to 64 letters, digits, '-' or '_'")
    limits = clean_limits(body.get("limits") or {})
    named = {field: body.get(field) or "" for field in ("outputTopic", "inputTopic")}
    for field, name in named.items():
        if name and not topics.is_name(name):
            raise invalid(f"{field} must be a topic's name: {topics.NAME_RULE}")
    placed = placement.parse_placement(body.get("placement"))
    restart = parse_restart(body.get("restart"))
    return StartRequest(
        args=args,
        app_config=app_config,
        instance_id=iid,
        limits=limits,
        output_topic=named["outputTopic"],
        input_topic=named["inputTopic"],
        placement=placed,
        restart=restart,
    )


# The fewest processes and threads (`limits.pids`) an instance can start with: below it the
# runtime itself cannot, whatever the sequence does. Measured as root by starting a trivial
# sequence of each language with every value from 1 (tests/faults/test_sandbox.py starts both
# with MIN_PIDS): the Python runtime runs 3 threads (its main thread, a helper thread and the
# input reader), and with fewer ends "Runner failed with exit code 20" (can't start new
# thread); Node 20 runs 7 (main, 4 V8 platform workers, 2 more of its own), with 1 is
# aborted, with 2 to 5 never leaves "starting" and with 6 prints pthread_create errors. A Node
# sequence that reads files, resolves names or hashes also needs libuv's 4 pool threads (11
# in all), else it is aborted: docs/python.md says so rather than refuse 7 to 10, which suit
# sequences that do none of that.
MIN_PIDS = 7

# name: (smallest, largest, unit for the error, a whole number)
LIMITS: dict[str, tuple[float, float, str, bool]] = {
    # Megabytes, whole: the row and the info show the number the worker applies, and half a
    # megabyte more or less is no limit anyone means (a fraction was silently cut before).
    "memory": (16, MAX_MEMORY_MB, "a whole number of megabytes", True),
    "cpu": (0.01, 1024, "a number of CPUs (0.5 is half of one)", False),
    "pids": (MIN_PIDS, 1 << 20, "a whole number of processes and threads", True),
}


def _shown(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def clean_limits(limits: Any) -> dict[str, Any]:
    """`{"memory": MB, "cpu": CPUs, "pids": n}`, each optional; INVALID_CONFIG naming the
    field otherwise. Memory and pids must be whole numbers (`2.0` is, and becomes 2)."""
    if not isinstance(limits, dict):
        raise invalid('limits must be a JSON object like {"memory": 256, "cpu": 0.5, "pids": 64}')
    if limits.get("gpu") not in (None, False):
        raise invalid("limits.gpu: this hub has no GPUs to give; leave it out or false")
    unknown = sorted(set(limits) - set(LIMITS) - {"gpu"})
    if unknown:
        raise invalid(f"limits.{unknown[0]} is not a limit: use {', '.join(LIMITS)}")
    clean: dict[str, Any] = {}
    for name, (low, high, unit, whole) in LIMITS.items():
        if name not in limits:
            continue
        value = limits[name]
        # `not low <= value <= high` also refuses NaN and the infinity of `1e999`.
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
            or (whole and not float(value).is_integer())
        ):
            raise invalid(_limit_error(name, value, low, high, unit))
        clean[name] = int(value) if whole else float(value)
    return clean


def _limit_error(name: str, value: Any, low: float, high: float, unit: str) -> str:
    message = f"limits.{name} must be {unit} from {_shown(low)} to {_shown(high)}"
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if name == "pids" and number and value < MIN_PIDS:
        # The minimum is not arbitrary: say why, so nobody takes it for a typo in the range.
        message += (
            f"; {MIN_PIDS} is the fewest the Python and Node runtimes start with "
            "(a Node sequence that reads files needs 11)"
        )
    return message


# The HUB_MAX_INSTANCES check: counting every live row at every start cost more the more
# ran (an index scan over all of them, ~1 ms a start at 2 000). A count younger than
# LIVE_COUNT_SECONDS is reused, plus the starts this process made since, while it is below
# LIVE_COUNT_MARGIN of the limit; nearer, every start counts afresh, so a 507 is only ever
# answered on an exact count. (Other web processes' starts in that second are not seen: the
# margin is for them.)
LIVE_COUNT_SECONDS = 1.0
LIVE_COUNT_MARGIN = 0.9
_live_count_lock = threading.Lock()
_live_count: list[float] = [-LIVE_COUNT_SECONDS, 0]  # when counted, count + starts since


def _live_count_for_limit() -> int:
    now = time.monotonic()
    with _live_count_lock:
        counted_at, count = _live_count
        if (
            now - counted_at < LIVE_COUNT_SECONDS
            and count < settings.HUB_MAX_INSTANCES * LIVE_COUNT_MARGIN
        ):
            _live_count[1] = count + 1
            return int(count)
    fresh = Instance.objects.filter(status__in=LIVE_STATUSES).count()
    with _live_count_lock:
        _live_count[:] = [now, fresh + 1]
    return fresh


def _create(seq: Sequence | str, req: StartRequest, user: Any, kind: str) -> Instance:
    """The instance's row; `seq` may be an id or name still to look up (one database call)."""
    if isinstance(seq, str):
        seq = get_sequence(seq)
    live_count = _live_count_for_limit()
    if live_count >= settings.HUB_MAX_INSTANCES:
        raise HubError(
            507,
            "INSUFFICIENT_RESOURCES",
            f"the hub runs {live_count} instances, its limit (HUB_MAX_INSTANCES) is "
            f"{settings.HUB_MAX_INSTANCES}",
        )
    if req.instance_id and Instance.objects.filter(pk=req.instance_id).exists():
        raise HubError(409, "INSTANCE_EXISTS", f"Instance {req.instance_id} already exists")
    fields: dict[str, Any] = {}
    if req.instance_id:
        fields["id"] = req.instance_id
    try:
        return Instance.objects.create(
            sequence=seq,
            sequence_name=seq.name,
            kind=kind,
            args=effective_args(req.args, seq),
            app_config=req.app_config,
            limits=req.limits,
            created_by=user if getattr(user, "is_authenticated", False) else None,
            output_topic=req.output_topic,
            input_topic=req.input_topic,
            restarted_from_id=req.restarted_from,
            placement=req.placement.to_json(),
            restart_policy=req.restart.policy,
            restart_max=req.restart.max,
            restart_backoff=req.restart.backoff,
            restart_count=req.restart_count,
            **fields,
        )
    except IntegrityError as exc:
        if req.restarted_from is None or "restarted_from" not in str(exc):
            raise
        # The one-to-one link: a restart racing this one made its copy first.
        raise HubError(
            409, "ALREADY_RESTARTED", f"Instance {req.restarted_from} was restarted already"
        ) from None


def create_row(seq: Sequence | str, req: StartRequest, user: Any, kind: str) -> Instance:
    """The row of a start, without pushing it (restart policies push it themselves)."""
    return _create(seq, req, user, kind)


def effective_args(args: list[Any], seq: Sequence) -> list[Any]:
    """The start's args; when it gives none (no args, or `[]`), the package.json's "args"
    (STH's default args), so the instance's info shows what the sequence really got."""
    default = seq.config.get("args")
    return args if args or not isinstance(default, list) else default


def start_header(
    instance: Instance,
    seq: Sequence,
    token: str,
    timeout: float,
    sequencer: Sequencer | None = None,
    input_from: str = "",
) -> dict[str, Any]:
    """What a worker needs to start the instance without reading the database (it does read
    it when it has not unpacked the package yet). Past `expires` the web stopped waiting.
    A sequencer's script (kind "script") names its sequencer, whose actor takes the child."""
    header: dict[str, Any] = {
        "op": "start",
        "id": instance.id,
        "reply": token,
        "expires": time.time() + timeout,
        "kind": instance.kind,
        "args": instance.args,
        "appConfig": instance.app_config,
        "limits": instance.limits,
        "outputTopic": instance.output_topic,
        "inputTopic": instance.input_topic,
        "inputFrom": input_from,
        "sequence": {
            "id": seq.id,
            "sha256": seq.sha256,
            "main": seq.main,
            "language": seq.language,
            "config": seq.config,
        },
    }
    if instance.placement:
        header["placement"] = instance.placement
    if sequencer is not None:
        header["sequencer"] = {"id": sequencer.id, "prefix": sequencer.prefix}
    return header


def start_request(
    instance: Instance,
    seq: Sequence,
    token: str,
    timeout: float,
    dest: str,
    sequencer: Sequencer | None = None,
    input_from: str = "",
) -> bytes:
    """The start request (start_header) signed for the list `dest`."""
    header = start_header(instance, seq, token, timeout, sequencer, input_from)
    return live.encode_control(dest, header)


# How long a worker chosen for a start has to pop it before the web takes it back and places
# it again: a worker with a free place pops at once; one that does not died or filled up.
PLACE_WAIT = 1.0
# Starts this process has offered to each worker and not seen taken back or answered: the
# room a worker published does not show them yet, so a burst of starts spreads.
_placing: Counter[str] = Counter()


@start_watch.watched
async def push_start(
    instance: Instance,
    wait: float,
    sequencer: Sequencer | None = None,
    fresh: bool = False,
) -> dict[str, Any] | None:
    """Push the start of `instance` (its row made, its `sequence` loaded) to a worker of the
    workers' queue, and wait up to `wait` seconds for the worker's answer (None: nobody
    answered). `fresh`: first drop the live streams an earlier instance of the same id left.

    The request goes straight to a list a worker's supervisor pops, not through a Celery
    task: one push, one blocking pop for the answer. Instances and sequencer scripts alike.

    Placement: workers publish their free places, memory and labels (`hub:room:<queue>`).
    The web picks one that fits the start's placement and has a free place
    (`placement.choose`) and pushes the start onto that worker's own list
    (`hub:startto:<queue>:<worker>`); a worker that does not pop it within PLACE_WAIT (it
    died, or filled up meanwhile) has it taken back, and the start is placed again. When no
    live worker fits, or every one that fits is full, the start is refused at once with 507
    and the reason. No live worker at all is not "full": the web waits and answers NO_WORKER
    as before (a start without placement goes to the queue's shared list meanwhile, which
    any worker pops, as do older workers that publish no labels).
    """
    token = live.new_token()
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    # The row was made a moment ago with its sequence; only deleting the sequence unsets it.
    seq = cast(Sequence, instance.sequence)
    placed = placement.parse_placement(instance.placement or None)
    # The worker reads an input topic from where it stands now, not from where it stands when
    # the child is up: what a client sends (and ends) right after the start is not lost.
    cursor = await topics.start_cursor(instance.input_topic) if instance.input_topic else ""
    header = start_header(instance, seq, token, wait, sequencer, cursor)
    if fresh:
        await live.async_client().delete(*live.instance_keys(instance.id))
    memory = instance.limits.get("memory") if isinstance(instance.limits, dict) else None
    deadline = time.monotonic() + wait
    skip: set[str] = set()
    while (remaining := deadline - time.monotonic()) > 0:
        choice = placement.choose(await read_rooms(queue), placed, queue, memory, _placing, skip)
        if choice.refusal:
            return await _refuse_full(instance, choice.refusal)
        if choice.worker:
            taken, answer = await _offer(choice.worker, queue, header, token, deadline)
            if taken:
                return answer
            skip.add(choice.worker)
        elif placed:
            # No worker published its room (none running, or only older ones): a placed
            # start waits for one that can check its placement.
            await asyncio.sleep(min(0.5, remaining))
        else:
            return await _push_shared(instance, queue, header, token, deadline)
    return None


async def read_rooms(queue: str) -> list[live.WorkerRoom]:
    """The room each live worker serving `queue` published; none if Redis cannot say."""
    try:
        entries = await cast(
            "Awaitable[dict[bytes, bytes]]", live.async_client().hgetall(live.room_key(queue))
        )
    except RedisError:
        return []
    return live.live_rooms(entries, time.time())


async def _offer(
    worker: str, queue: str, header: dict[str, Any], token: str, deadline: float
) -> tuple[bool, dict[str, Any] | None]:
    """Push the start onto `worker`'s own list: (True, its answer or None at the deadline)
    once it popped the start; (False, None) when it did not within PLACE_WAIT and the start
    was taken back (LREM: only if it is still there, so never both run and placed again)."""
    dest = live.placed_start_key(queue, worker)
    request = live.encode_control(dest, header)
    client = live.async_client()
    _placing[worker] += 1
    try:
        pipe = client.pipeline(transaction=False)
        pipe.rpush(dest, request)
        # A worker that died leaves its list: it goes when no web can be waiting on it.
        pipe.expire(dest, int(float(header["expires"]) - time.time()) + 60)
        await pipe.execute()
        answer = await wait_reply(token, min(PLACE_WAIT, max(0.01, deadline - time.monotonic())))
        if answer is not None:
            return True, answer
        # (redis-py types the value as str; it sends bytes as they are.)
        if await client.lrem(dest, 1, cast(str, request)):
            return False, None
    finally:
        _placing[worker] -= 1
        if _placing[worker] <= 0:
            del _placing[worker]
    taken = await _await_claimed(str(header["id"]), token, deadline)
    if taken is SWALLOWED:
        log.warning(
            "start %s was popped from %s and never claimed: placing it again", header["id"], worker
        )
        return False, None
    return True, cast("dict[str, Any] | None", taken)


# A start popped but not claimed (`claim:<iid>`) within this many seconds was swallowed: a
# worker's connection that died with its blocking pop still open on Redis (a host gone
# without closing its sockets) takes the next item pushed, and nothing will ever run it.
CLAIM_WAIT = 3.0
SWALLOWED = object()


async def _await_claimed(iid: str, token: str, deadline: float) -> object:
    """The answer to a start that a worker popped (None at the deadline), or SWALLOWED when
    no worker claimed it within CLAIM_WAIT. Placing it again is safe: a start runs only
    where its claim is taken (SET NX), so should the slow taker wake up after all, one of
    the two finds the claim held and drops its copy without answering."""
    popped = time.monotonic()
    client = live.async_client()
    while (remaining := deadline - time.monotonic()) > 0:
        answer = await wait_reply(token, min(0.5, remaining))
        if answer is not None:
            return answer
        if time.monotonic() - popped >= CLAIM_WAIT:
            if not await client.exists(live.claim_key(iid)):
                return SWALLOWED
            remaining = deadline - time.monotonic()
            return await wait_reply(token, remaining) if remaining > 0 else None
    return None


async def _push_shared(
    instance: Instance, queue: str, header: dict[str, Any], token: str, deadline: float
) -> dict[str, Any] | None:
    """The start on the queue's shared list, which every worker serving the queue pops (those
    that publish no labels too): while it waits unpopped and every live worker says it is
    full, it is taken back and refused."""
    dest = live.start_key(queue)
    request = live.encode_control(dest, header)
    client = live.async_client()
    await client.rpush(dest, request)
    step = 0.2
    while (remaining := deadline - time.monotonic()) > 0:
        answer = await wait_reply(token, min(step, remaining))
        if answer is not None:
            return answer
        step = min(step * 2, 2.0)
        full = await cluster_full(queue)
        # LREM takes the request back only if no worker popped it: then none ever will.
        # (redis-py types the value as str; it sends bytes as they are.)
        if full is not None and await client.lrem(dest, 1, cast(str, request)):
            return await _refuse_full(instance, full)
        if await client.lpos(dest, cast(str, request)) is None:
            # Popped: wait for its answer, or push it again if it was swallowed.
            taken = await _await_claimed(instance.id, token, deadline)
            if taken is not SWALLOWED:
                return cast("dict[str, Any] | None", taken)
            log.warning(
                "start %s was popped from %s and never claimed: pushing it again", instance.id, dest
            )
            await client.rpush(dest, request)
    return None


async def cluster_full(queue: str) -> str | None:
    """Why no worker serving `queue` can take a start now (every live worker published 0 free
    places), or None: some worker has room, or no worker published anything (none running)."""
    # A draining worker is not "full": with it alone, a start waits for its replacement.
    room = {r.name: r.free for r in await read_rooms(queue) if not r.draining}
    if not room or any(free > 0 for free in room.values()):
        return None
    return (
        f"every worker of queue {queue} is at its capacity ({len(room)} live, no free place): "
        "try again when an instance ends"
    )


async def _refuse_full(instance: Instance, reason: str) -> dict[str, Any]:
    """The answer a worker gives a start it cannot take, for a start no worker took."""
    await db_call(record_failed_start, instance.id, Exit.REFUSED, reason, waiting_only=True)
    return {"ok": False, "status": 507, "code": "INSUFFICIENT_RESOURCES", "error": reason}


@start_watch.refusals
async def start(
    seq: Sequence | str, req: StartRequest, user: Any, kind: str = "sequence"
) -> Instance:
    """Create the instance and return once its worker holds its streams (input is safe).

    `seq` is a Sequence or its id (or name); `instance.sequence` is the one started.
    """
    instance = await db_call(_create, seq, req, user, kind)
    # A chosen id may have been used before: the live streams of that earlier instance (kept
    # a while after its end) must not pass for this one's.
    fresh = bool(req.instance_id)
    answer = await push_start(instance, settings.HUB_START_TIMEOUT, fresh=fresh)
    if answer is None:
        await db_call(
            record_failed_start,
            instance.id,
            Exit.LAUNCH_FAILED,
            "no worker answered the start request",
            waiting_only=True,
        )
        raise HubError(
            503,
            "NO_WORKER",
            f"no worker answered within {settings.HUB_START_TIMEOUT:.0f} s: is a worker running?",
        )
    if not answer.get("ok"):
        raise HubError(
            int(answer.get("status", 400)),
            answer.get("code", "START_FAILED"),
            answer.get("error", "start failed"),
        )
    instance.worker = answer.get("worker", "")
    return instance


def record_failed_start(iid: str, code: int, reason: str, waiting_only: bool = False) -> int:
    """Record that an instance could not start: errored, with its exit code (core.protocol.Exit)
    and reason; the number of rows changed. `waiting_only`: only if no worker took the start
    (the web gave up waiting, or nobody popped the request), never over a started row."""
    rows = Instance.objects.filter(pk=iid)
    if waiting_only:
        rows = rows.filter(status=InstanceStatus.INITIALIZING)
    now = timezone.now()
    return rows.update(
        status=InstanceStatus.ERRORED,
        exit_code=code,
        reason=reason[:500],
        ended=now,
        remove_at=now + timedelta(seconds=settings.HUB_INSTANCE_RETENTION),
    )


async def wait_reply(token: str, timeout: float) -> dict[str, Any] | None:
    item = await live.async_client().blpop([live.reply_key(token)], timeout=timeout)
    raw = live.popped(item)
    return None if raw is None else live.decode_reply(token, raw)


def with_links(rows: QuerySet[Instance]) -> QuerySet[Instance]:
    """`rows` with their sequence and `restarted_as` (the id of the instance that restarted
    each, or None) in the same query, so `info` needs no query of its own."""
    restart = Instance.objects.filter(restarted_from=OuterRef("pk")).values("id")[:1]
    return rows.select_related("sequence").annotate(restarted_as=Subquery(restart))


def list_instances(limit: int = 1000) -> list[Instance]:
    """The newest sequence instances (not sequencer scripts), as `info` shows them."""
    return with_reported_ends(list(with_links(Instance.objects.filter(kind="sequence"))[:limit]))


def get_instance(iid: str) -> Instance:
    instance = with_links(Instance.objects.filter(pk=iid)).first()
    if instance is None:
        raise not_found("Instance", iid)
    return instance


async def aget_instance(iid: str) -> Instance:
    return await db_call(get_instance, iid)


def get_reported(iid: str) -> Instance:
    """The instance as GET /instance reports it: with the outcome its worker already reported
    (a client told "completed" must not then have its input taken while the row catches up)."""
    return with_reported_ends([get_instance(iid)])[0]


async def aget_reported(iid: str) -> Instance:
    return await db_call(get_reported, iid)


def with_reported_ends(rows: list[Instance]) -> list[Instance]:
    """The instances, with the outcome their worker already reported where a row still says
    live (one Redis round trip for them all).

    A reader sees a stream end as soon as the worker does, a moment before the worker's batched
    database write records the outcome; the eof entries in Redis carry it meanwhile.
    """
    live_rows = [row for row in rows if row.is_live]
    if not live_rows:
        return rows
    pipe = live.sync_client().pipeline(transaction=False)
    for row in live_rows:
        pipe.xrevrange(live.stream_key(row.id, "output"), count=1)
    try:
        newest = pipe.execute()
    except RedisError:
        return rows
    for row, entries in zip(live_rows, newest, strict=True):
        fields = entries[0][1] if entries else {}
        if (
            b"status" in fields
            and live.is_end(live.stream_key(row.id, "output"), fields)
            and float(fields[b"ended"]) >= row.created.timestamp()  # not an earlier one's
        ):
            row.status = fields[b"status"].decode()
            row.exit_code = int(fields[b"exitcode"])
            row.reason = fields[b"reason"].decode()
            row.ended = datetime.fromtimestamp(float(fields[b"ended"]), tz=UTC)
    return rows


def info(instance: Instance) -> dict[str, Any]:
    """STH's instance info, plus status and terminated."""
    seq = instance.sequence
    data: dict[str, Any] = {
        "id": instance.id,
        "appConfig": instance.app_config,
        "args": instance.args,
        "sequenceArgs": instance.args,
        "limits": instance.limits,
        "provides": instance.output_topic or None,
        "requires": instance.input_topic or None,
        "sequence": {
            "id": seq.id if seq else None,
            "config": seq.config if seq else {},
            "name": seq.name if seq else instance.sequence_name,
            "location": "hub",
        },
        "kind": instance.kind,
        "status": instance.status,
        "worker": instance.worker,
        "pid": instance.pid,
        "created": instance.created.isoformat(),
        "started": instance.started.isoformat() if instance.started else None,
        "ended": instance.ended.isoformat() if instance.ended else None,
        "placement": instance.placement or None,
        "restartedFrom": instance.restarted_from_id,
        # Annotated by `with_links`; an instance read some other way shows none.
        "restartedAs": getattr(instance, "restarted_as", None),
        "restart": {**restart_policy_of(instance).to_json(), "count": instance.restart_count},
    }
    if instance.exit_code is not None or instance.status == InstanceStatus.LOST:
        data["terminated"] = {"exitcode": instance.exit_code, "reason": instance.reason}
    # How it ended, machine-readable, and who or what ended it (sequences/outcomes.py).
    data.update(outcomes.outcome_json(instance))
    return data


def restart_policy_of(instance: Instance) -> RestartPolicy:
    """The restart policy its start gave (never, for an instance made before policies)."""
    if instance.restart_policy == NEVER.policy:
        return NEVER
    return RestartPolicy(instance.restart_policy, instance.restart_max, instance.restart_backoff)


async def restart(iid: str, user: Any, by: str = "") -> Instance:
    """Start the sequence of instance `iid` again with its args, appConfig and limits, as a
    new instance linked to it (`restarted_from`); a live `iid` is killed first, and its end
    awaited, so the two never run together. An instance is restarted once: restart the new
    one next time. The copy keeps the restart policy, with its count back at 0: a restart
    asked for by an operator starts a new chain. `by`: the username of who asks.
    """
    old = await aget_instance(iid)
    if old.kind != "sequence":
        # A sequencer's script restarted as a plain instance would run outside its sequencer.
        raise HubError(409, "NOT_RESTARTABLE", f"Instance {iid} is a sequencer's script")
    if old.sequence is None:
        raise HubError(409, "SEQUENCE_GONE", f"The sequence of instance {iid} was deleted")
    if getattr(old, "restarted_as", None):
        raise HubError(409, "ALREADY_RESTARTED", f"Instance {iid} was restarted already")
    req = StartRequest(
        args=old.args,
        app_config=old.app_config,
        instance_id=None,
        limits=clean_limits(old.limits),
        output_topic=old.output_topic,
        input_topic=old.input_topic,
        restarted_from=old.id,
        placement=placement.parse_placement(old.placement or None),
        restart=restart_policy_of(old),
    )
    if old.is_live:
        try:
            await kill(old, by=by)
        except HubError as exc:
            if exc.code != "NOT_RUNNING":  # it ended meanwhile: nothing to kill
                raise
        if (await wait_until_ended(iid, 15.0)).is_live:
            raise HubError(409, "NOT_STOPPED", f"Instance {iid} did not end within 15 s")
    return await start(old.sequence, req, user)


def _worker_of(iid: str) -> str:
    return Instance.objects.filter(pk=iid).values_list("worker", flat=True).first() or ""


async def _await_worker(instance: Instance, timeout: float = 3.0) -> str:
    """The worker records itself through its batched writer, a moment after start answered;
    a request that follows the start at once finds it in Redis (the worker published it with
    its answer), or else waits for the row instead of failing."""
    owner = live.as_bytes(await live.async_client().get(live.owner_key(instance.id)))
    if owner:
        instance.worker = owner.decode()
        return instance.worker
    deadline = time.monotonic() + timeout
    while instance.is_live and time.monotonic() < deadline:
        worker = await db_call(_worker_of, instance.id)
        if worker:
            instance.worker = worker
            return worker
        await asyncio.sleep(0.01)
    raise HubError(409, "NOT_RUNNING", f"Instance {instance.id} has no worker yet")


async def send_control(instance: Instance, header: dict[str, Any], payload: bytes = b"") -> None:
    if not instance.worker:
        await _await_worker(instance)
    header = {"id": instance.id, **header}
    await live.async_client().rpush(
        live.control_key(instance.worker),
        live.encode_control(live.control_key(instance.worker), header, payload),
    )


def require_live(instance: Instance) -> None:
    if not instance.is_live:
        raise HubError(
            409, "NOT_RUNNING", f"Instance {instance.id} is not running (status {instance.status})"
        )


def parse_control_body(raw: bytes, code: int) -> dict[str, Any]:
    """Stop/kill/event bodies come as `{...}` or as `[code, {...}]` (Scramjet 0.26 clients)."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise HubError(400, "INVALID_REQUEST", f"body is not valid JSON: {exc}") from None
    if isinstance(body, list):
        if len(body) != 2 or body[0] != code or not isinstance(body[1], dict | type(None)):
            raise HubError(400, "INVALID_REQUEST", f"body must be {{...}} or [{code}, {{...}}]")
        body = body[1] or {}
    if not isinstance(body, dict):
        raise HubError(400, "INVALID_REQUEST", "body must be a JSON object")
    return body


def _record_requester(iid: str, username: str) -> None:
    """Remember who asked for the end (the worker cannot know): its outcome names them."""
    if username:
        Instance.objects.filter(pk=iid, status__in=LIVE_STATUSES).update(ended_by=username[:150])


async def stop(instance: Instance, timeout_ms: int, can_keepalive: bool, by: str = "") -> Instance:
    """Ask the sequence to stop; answer after it ended or `timeout` passed, as STH does.
    `by`: the username of who asks."""
    require_live(instance)
    await db_call(_record_requester, instance.id, by)
    await send_control(
        instance, {"op": "stop", "timeout": timeout_ms, "canCallKeepalive": can_keepalive}
    )
    return await wait_until_ended(instance.id, timeout_ms / 1000 + 1.0)


async def kill(instance: Instance, remove_immediately: bool = False, by: str = "") -> None:
    """Kill the instance's process tree; `by`: the username of who asks."""
    if not instance.is_live:
        if remove_immediately:
            await sync_to_async(_remove)(instance.id)
            return
        raise HubError(
            409, "NOT_RUNNING", f"Instance {instance.id} is not running (status {instance.status})"
        )
    await db_call(_record_requester, instance.id, by)
    await send_control(instance, {"op": "kill", "removeImmediately": remove_immediately})


def _remove(iid: str) -> None:
    Instance.objects.filter(pk=iid).delete()
    live.sync_client().delete(*live.instance_keys(iid))


async def wait_until_ended(iid: str, timeout: float) -> Instance:
    deadline = time.monotonic() + timeout
    while True:
        instance = await aget_instance(iid)
        if not instance.is_live or time.monotonic() >= deadline:
            return instance
        await asyncio.sleep(0.05)


async def outcome_after(iid: str, wait: float) -> str:
    """The outcome of `iid` (a core.protocol.Ending name) once it ended, waiting up to `wait`
    s; its status if it has not ended by then, "removed" if its row is gone."""
    try:
        instance = await wait_until_ended(iid, wait)
    except HubError:
        return "removed"
    return instance.outcome or instance.status


def kill_and_wait(instance_ids: list[str], timeout: float = 15.0) -> None:
    """Used by a forced sequence delete: kill every instance and wait for their ends."""
    from asgiref.sync import async_to_sync

    async def run() -> None:
        for iid in instance_ids:
            instance = await aget_instance(iid)
            if instance.is_live and instance.worker:
                await send_control(instance, {"op": "kill"})
        for iid in instance_ids:
            await wait_until_ended(iid, timeout)

    async_to_sync(run)()


def check_input(instance: Instance, stream: str) -> None:
    """Refuses input (or stdin) the instance cannot take: 409 if it ended, 405 if its input
    comes from a topic."""
    require_live(instance)
    if stream == "input" and instance.input_topic:
        raise HubError(
            405,
            "INPUT_FROM_TOPIC",
            f"Input provided in other way: the instance reads topic {instance.input_topic}",
        )


async def send_input_stream(
    instance: Instance, stream: str, pieces: AsyncIterable[bytes], content_type: str, end: bool
) -> int:
    """Sends each piece to the instance as it comes, then the end (if `end`); the bytes sent.
    Call check_input first: a body is refused before any of it is read. What is held here is
    one piece; the worker holds at most 64 MiB of input a child has not read."""
    op = "input" if stream == "input" else "stdin"
    header = {"op": op, "contentType": content_type, "end": False}
    size = 0
    async for piece in pieces:
        size += len(piece)
        await send_control(instance, header, piece)
    await send_control(instance, {**header, "end": end}, b"")
    return size


async def send_input(
    instance: Instance, stream: str, chunks: list[bytes], content_type: str, end: bool
) -> None:
    check_input(instance, stream)
    op = "input" if stream == "input" else "stdin"
    if not chunks:
        chunks = [b""]
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        await send_control(
            instance, {"op": op, "contentType": content_type, "end": end and last}, chunk
        )


async def send_event(instance: Instance, name: str, message: Any) -> None:
    require_live(instance)
    await send_control(instance, {"op": "event", "eventName": name, "message": message})
    await sync_to_async(InstanceEvent.objects.create)(
        instance_id=instance.id, direction="in", name=name, message=message
    )
    # The instance's open pages show it in their Events card (emitted events are announced by
    # the worker; events sent in are stored here, so they are announced here).
    await notices.asend(
        {"type": notices.INSTANCE_CHANGED, "id": instance.id}, notices.instance_group(instance.id)
    )


async def health(instance: Instance) -> dict[str, Any]:
    if not instance.is_live:
        return {"healthy": False, "status": instance.status, "reason": instance.reason}
    token = live.new_token()
    await send_control(instance, {"op": "health", "reply": token})
    answer = await wait_reply(token, 5)
    if answer is None:
        return {"healthy": False, "reason": "the worker did not answer in 5 s"}
    answer.setdefault("status", instance.status)
    return answer
