"""Sequencers and sequence components, web side: what the API, the pages and the CLI call.

The web never runs a script. Reads come straight from the database. A sequencer command goes
to the worker that owns the sequencer's process (Redis control op `seqcmd`), whose actor
decides, persists and answers it (runner/sequencer_actor.py). A component's LoadScript starts
a sequencer process the way an instance starts (a signed request on the workers' start list,
`instances.push_start`) and waits until its script is loaded. Component commands are
serialised by a Redis lock per component.

Sequencers whose process is gone (worker lost, process ended unnoticed) are marked Killed the
moment anyone looks at them, so no reader ever sees a dead sequencer as alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

import redis
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import IntegrityError
from django.utils import timezone

from core.protocol import Exit
from sequences import instances, live, notices
from sequences import sequencer_store as store
from sequences.component_states import (
    ComponentCommand,
    ComponentDecision,
    ComponentOk,
    ComponentResponse,
    ComponentState,
    ComponentUnhandled,
    component_http_status,
    decide_component,
)
from sequences.errors import HubError, not_found
from sequences.models import (
    ENDED_STATUSES,
    Instance,
    InstanceStatus,
    Sequence,
    SequenceComponent,
    Sequencer,
    SequencerTransition,
    Worker,
)
from sequences.statemachine import (
    CommandName,
    Done,
    QueryResponse,
    Request,
    Started,
    State,
    accepts,
    decide,
    http_status,
)
from sequences.statemachine import query as query_snapshot
from sequences.statemachine import query_final as query_final_snapshot
from sequences.streams import REDIS_AWAY, Backoff, blocking_read

if TYPE_CHECKING:
    import redis.asyncio as aredis

# How long a command waits for its actor; hooks may take a while, ESW waits hours.
COMMAND_TIMEOUT = float(getattr(settings, "HUB_SEQUENCER_COMMAND_TIMEOUT", 60.0))
SHUTDOWN_WAIT = 15.0  # the actor gives the shutdown hook 5 s, then kills
QUERY_FINAL_MAX = 3600.0
LOCK_TTL = 120.0
NAME_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$")
MAX_NAME = 200


def _user_id(user: Any) -> int | None:
    return user.pk if user is not None and getattr(user, "is_authenticated", False) else None


def _check_name(value: Any, what: str, example: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_NAME or not NAME_RE.match(value):
        raise HubError(
            400,
            "INVALID_REQUEST",
            f"{what} must look like {example!r}: dot-separated parts of letters, digits, "
            f"'_' or '-' (got {value!r})",
        )
    return value


# -- reading sequencers --------------------------------------------------------------------


def _rows() -> Any:
    return Sequencer.objects.select_related("script", "component", "instance")


def list_sequencers(states: Iterable[str] | None = None) -> list[Sequencer]:
    """Every sequencer (Killed ones too: their record stays), by prefix, newest first."""
    rows = _rows().prefetch_related("steps")
    if states:
        rows = rows.filter(state__in=list(states))
    return heal(list(rows))


def get_sequencer(ident: str) -> Sequencer:
    """A sequencer by id, or by prefix (the live one, else the newest); 404 otherwise."""
    row = _rows().filter(pk=ident).first()
    if row is None:
        by_prefix = _rows().filter(prefix=ident)
        row = by_prefix.exclude(state=State.KILLED).first() or by_prefix.first()
    if row is None:
        raise not_found("Sequencer", ident)
    return heal([row])[0]


aget_sequencer = sync_to_async(get_sequencer)


def describe(row: Sequencer) -> dict[str, Any]:
    """`{id, prefix, state, runId, isOnline, isAvailable, script, component, stepList, ...}`."""
    return store.describe(row)


def describe_all(rows: Iterable[Sequencer]) -> list[dict[str, Any]]:
    return [store.describe(r) for r in rows]


def list_json() -> list[dict[str, Any]]:
    return describe_all(list_sequencers())


def accepted_commands(row: Sequencer) -> list[str]:
    """Commands the shown state accepts (pages enable exactly these buttons)."""
    shown = State(row.shown_state)
    return [str(c) for c in CommandName if accepts(shown, c)]


def transitions(row: Sequencer, limit: int = 200) -> list[dict[str, Any]]:
    """The newest `limit` transitions, oldest first: `{from, to, command, user, upstream,
    response, time}`."""
    qs = SequencerTransition.objects.filter(sequencer=row).select_related("user")
    # Ids follow commit order: each sequencer's changes are made one at a time under its lock.
    rows = list(qs.order_by("-id")[:limit])
    rows.reverse()
    return [
        {
            "from": t.from_state,
            "to": t.to_state,
            "command": t.command,
            "user": t.user.get_username() if t.user else None,
            # The sequencer whose script sent the command: {id, prefix, runId, step}.
            "upstream": t.upstream,
            "response": t.response,
            "time": t.created.isoformat(),
        }
        for t in rows
    ]


def links(row: Sequencer) -> dict[str, Any]:
    """`{upstream, downstreams}`: the sequencer whose script last commanded this one, and the
    live sequencers this one's script commanded, each `{id, prefix, state}`."""

    def short(other: Sequencer) -> dict[str, Any]:
        return {"id": other.id, "prefix": other.prefix, "state": other.shown_state}

    upstream = None
    if row.upstream_id:
        found = Sequencer.objects.filter(pk=row.upstream_id).first()
        upstream = short(heal([found])[0]) if found is not None else None
    downstreams = heal(list(Sequencer.objects.filter(upstream_id=row.id).order_by("prefix")))
    return {
        "upstream": upstream,
        "downstreams": [short(d) for d in downstreams if d.state != State.KILLED],
    }


def _worker_beats(client: redis.Redis, name: str) -> bool:
    """Whether the worker still answers: its heartbeat key, or, when Redis is away or was just
    restarted (every key gone until the next beat), the database's copy of the heartbeat.
    Judging by the key alone killed every sequencer read in the moment after a restart."""
    try:
        if client.exists(live.worker_key(name)):
            return True
    except (redis.ConnectionError, redis.TimeoutError):
        pass
    beating = timezone.now() - timedelta(seconds=settings.HUB_LOST_AFTER)
    return Worker.objects.filter(name=name, last_seen__gte=beating).exists()


def heal(rows: list[Sequencer]) -> list[Sequencer]:
    """Mark Killed the sequencers whose process is gone: its instance ended, or its worker's
    heartbeat expired. Returns the rows, re-read where they changed."""
    suspects = [r for r in rows if r.state != State.KILLED and r.instance_id]
    if not suspects:
        return rows
    alive: dict[str, bool] = {}
    client = live.sync_client()
    healed: dict[str, Sequencer] = {}
    for row in suspects:
        instance = row.instance
        if instance is None:
            continue
        reason = None
        if instance.status in ENDED_STATUSES:
            reason = f"its process ended: {instance.reason or instance.status}"
        elif instance.worker:
            if instance.worker not in alive:
                alive[instance.worker] = _worker_beats(client, instance.worker)
            if not alive[instance.worker]:
                reason = f"process lost: worker {instance.worker} stopped answering"
        if reason is None:
            continue
        store.mark_killed(row.id, reason, "processLost")
        healed[row.id] = _rows().prefetch_related("steps").get(pk=row.id)
    return [healed.get(r.id, r) for r in rows]


def query(row: Sequencer, run_id: str) -> dict[str, Any]:
    """`{type: Started|Completed|Error|Invalid, runId, msg?}` for a run, now."""
    return query_snapshot(store.snapshot_of(row), run_id).to_json()


async def query_final(row: Sequencer, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The run's final answer, waiting up to `timeout` s; still `Started` if it did not end."""
    timeout = max(0.0, min(float(timeout), QUERY_FINAL_MAX))
    deadline = time.monotonic() + timeout
    client = live.async_client()
    key = store.events_key(row.id)
    cursor: str | bytes = await _stream_end(client, key)
    look = True
    while True:
        if look:
            current = await aget_sequencer(row.id)
            snapshot = await sync_to_async(store.snapshot_of)(current)
            answer: QueryResponse | None = query_final_snapshot(snapshot, run_id)
            if answer is not None:
                return answer.to_json()
        look = True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Started(run_id).to_json()
        # Woken by the next change notice; the database stays the truth (notices may be lost).
        block = int(min(remaining, 5.0) * 1000) or 1
        try:
            reply = await blocking_read(client.xread({key: cursor}, count=100, block=block), block)
        except REDIS_AWAY:
            # Redis is away: no notice comes, so look at the database again shortly.
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            continue
        entries = live.read_entries(reply)
        if entries:
            cursor = entries[-1][0]
            # The notices are written after their commit and carry the run's result: the
            # common case (this run's steps moving on, then its end) needs no database read.
            final, look = _final_in(entries, run_id)
            if final is not None:
                return final


def _final_in(entries: list[tuple[Any, Any]], run_id: str) -> tuple[dict[str, Any] | None, bool]:
    """The run's final answer if a notice has it; else whether the database must be read
    (a notice about another run, a Killed sequencer, or one that cannot be read)."""
    for _, fields in entries:
        try:
            event = json.loads(fields[b"d"])
        except (KeyError, TypeError, ValueError):
            return None, True
        if not isinstance(event, dict) or event.get("runId") != run_id:
            return None, True
        if event.get("state") == State.KILLED:
            return None, True
        result = event.get("runResult")
        if isinstance(result, dict) and result.get("runId") == run_id:
            return result, False
    return None, False


async def _stream_end(client: aredis.Redis, key: str) -> str:
    """Where a reader of the notices "from now" starts: the newest entry's id. With Redis away,
    the start: the notices only wake the reader, which skips what it has by version."""
    try:
        last = live.range_entries(await client.xrevrange(key, count=1))
    except REDIS_AWAY:
        return "0-0"
    return last[0][0].decode() if last else "0-0"


async def events(row: Sequencer, idle_check: float = 15.0) -> AsyncIterator[dict[str, Any]]:
    """`{state, stepList, runId, version, ...}` now, then one per change; ends after Killed."""
    client = live.async_client()
    key = store.events_key(row.id)
    cursor: str | bytes = await _stream_end(client, key)
    current = await aget_sequencer(row.id)
    first = await sync_to_async(lambda: store.event_of(current, store.snapshot_of(current)))()
    version = first["version"]
    yield first
    state = first["state"]
    backoff = Backoff()
    while state != State.KILLED:
        block = int(idle_check * 1000)
        try:
            reply = await blocking_read(client.xread({key: cursor}, count=100, block=block), block)
            backoff.reset()
        except REDIS_AWAY:
            # Redis is away: wait, then look at the database as after a quiet spell. Notices
            # sent meanwhile are lost; the version check finds the change they announced.
            await backoff.wait()
            reply = None
        if not reply:
            # Quiet: make sure no notice was lost and the process still lives.
            current = await aget_sequencer(row.id)
            if current.version > version:
                line = await sync_to_async(
                    lambda c=current: store.event_of(c, store.snapshot_of(c))
                )()
                version, state = line["version"], line["state"]
                yield line
            continue
        for entry_id, fields in live.read_entries(reply):
            cursor = entry_id
            line = json.loads(fields[b"d"])
            if line.get("version", 0) <= version:
                continue
            version, state = line["version"], line["state"]
            yield line


# -- commands ------------------------------------------------------------------------------


def parse_command(name: str, body: Any) -> Request:
    """Validate a command and its body; 404 for an unknown command, 400 for a bad body."""
    if name not in CommandName.__members__.values():
        raise HubError(404, "NOT_FOUND", f"unknown sequencer command {name!r}")
    try:
        return Request.parse(name, body)
    except ValueError as exc:
        raise HubError(400, "INVALID_REQUEST", str(exc)) from None


async def command(
    sequencer: Sequencer | str,
    name: str,
    body: Any,
    user: Any,
    timeout: float = COMMAND_TIMEOUT,
    upstream: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], int]:
    """Send one command to a sequencer (a row read just now, or an id or prefix); returns its
    typed answer (docs/architecture.md) and HTTP status. 400/404 HubError for a bad command or body,
    504 when the sequencer does not answer within `timeout`.

    Answers come from the sequencer's actor, which serialises commands. A sequencer with no
    process (Killed, or lost just now) answers from the table: Unhandled in Killed.

    `upstream` is set when another sequencer's script sends the command (its supervisor calls
    this, runner/upstream.py): `{id, prefix, runId, step, chain}`, recorded in place of a user.
    """
    request = parse_command(name, body)
    row = sequencer if isinstance(sequencer, Sequencer) else await aget_sequencer(sequencer)
    instance = row.instance
    if row.state == State.KILLED or instance is None or not instance.worker:
        return await _answer_without_process(row, request)
    if not row.handlers:
        # Its script is still loading: the worker has no actor for it yet.
        raise HubError(409, "NOT_READY", f"sequencer {row.prefix} is still loading its script")
    token = live.new_token()
    header = {
        "op": "seqcmd",
        "id": row.id,
        "command": name,
        "body": body,
        "user": _user_id(user),
        "reply": token,
    }
    if upstream is not None:
        header["upstream"] = upstream
    client = live.async_client()
    dest = live.control_key(instance.worker)
    await client.rpush(dest, live.encode_control(dest, header))
    answer = await _wait_answer(client, token, instance.worker, timeout)
    if answer is None:
        raise HubError(
            504,
            "TIMEOUT",
            f"sequencer {row.prefix} did not answer {name} within {timeout:.0f} s; "
            "it may still complete (see its state)",
        )
    if answer.get("lost") or answer.get("code") == "NOT_RUNNING":
        reason = answer.get("error") or f"process lost: worker {instance.worker} stopped answering"
        await sync_to_async(store.mark_killed)(row.id, reason, "processLost")
        return await _answer_without_process(await aget_sequencer(row.id), request)
    if not answer.get("ok"):
        raise HubError(
            int(answer.get("status", 500)),
            answer.get("code", "SEQUENCER_ERROR"),
            answer.get("error", "the sequencer failed to handle the command"),
        )
    return answer["response"], int(answer["status"])


def command_blocking(row: Sequencer, name: str, body: Any, user: Any) -> tuple[dict[str, Any], int]:
    """`command` for synchronous callers (plain Django views)."""
    return async_to_sync(command)(row, name, body, user)


async def _wait_answer(
    client: aredis.Redis, token: str, worker: str, timeout: float
) -> dict[str, Any] | None:
    """The actor's reply; `{"lost": True}` as soon as the worker's heartbeat is gone."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        item = await client.blpop([live.reply_key(token)], timeout=max(1, min(2, int(remaining))))
        raw = live.popped(item)
        if raw is not None:
            return live.decode_reply(token, raw)
        if not await client.exists(live.worker_key(worker)):
            return {
                "ok": False,
                "lost": True,
                "error": f"process lost: worker {worker} stopped answering",
            }


async def _answer_without_process(row: Sequencer, request: Request) -> tuple[dict[str, Any], int]:
    snapshot = await sync_to_async(store.snapshot_of)(row)
    decision = decide(snapshot, request)
    if isinstance(decision, Done) and decision.snapshot == snapshot:
        return decision.response.to_json(), http_status(decision.response)
    raise HubError(409, "NOT_RUNNING", f"sequencer {row.prefix} has no process yet")


# -- sequence components -------------------------------------------------------------------


def list_components() -> list[SequenceComponent]:
    return list(SequenceComponent.objects.all())


def get_component(name: str) -> SequenceComponent:
    comp = SequenceComponent.objects.filter(name=name).first()
    if comp is None:
        raise not_found("Sequence component", name)
    return comp


aget_component = sync_to_async(get_component)


def create_component(name: str) -> SequenceComponent:
    """A new Idle component; 400 for a bad name, 409 when the name is taken."""
    _check_name(name, "name", "ESW.primary")
    try:
        comp = SequenceComponent.objects.create(name=name)
    except IntegrityError:
        raise HubError(409, "COMPONENT_EXISTS", f"Sequence component {name} exists") from None
    announce_component(comp.name)
    return comp


def announce_component(name: str) -> None:
    """Tell component pages to look again (at-most-once, like every channel layer notice)."""
    with contextlib.suppress(Exception):
        notices.send({"type": notices.COMPONENTS_CHANGED, "name": name}, notices.COMPONENTS)


def hosted_sequencer(comp: SequenceComponent) -> Sequencer | None:
    """The sequencer a Running component hosts (it may have been Killed under it)."""
    if comp.state != ComponentState.RUNNING:
        return None
    row = _rows().filter(component=comp).order_by("-created").first()
    return None if row is None else heal([row])[0]


def hosted_now(comp: SequenceComponent) -> Sequencer | None:
    """`hosted_sequencer` for readers: a sequencer found dead just now (healed) freed its
    component (sequencer_store.apply), so `comp` is read again and hosts nothing."""
    hosted = hosted_sequencer(comp)
    if hosted is not None and hosted.state == State.KILLED:
        comp.refresh_from_db()
        hosted = hosted_sequencer(comp)
    return hosted


def component_json(comp: SequenceComponent) -> dict[str, Any]:
    """`{name, state, sequencer}` (GetStatus and the component list)."""
    hosted = hosted_now(comp)
    return {
        "name": comp.name,
        "state": comp.state,
        "sequencer": None if hosted is None else store.describe(hosted),
        # Why it went Idle by itself (its sequencer was killed: worker lost or shut down).
        "reason": comp.reason,
    }


def status(comp: SequenceComponent) -> dict[str, Any]:
    """GetStatus: `{name, state, sequencer or null}`."""
    return component_json(get_component(comp.name))


class _ComponentLock:
    """One component command at a time, across every web process (a Redis lock)."""

    def __init__(self, name: str) -> None:
        wait = settings.HUB_START_TIMEOUT + SHUTDOWN_WAIT + 30
        self.lock = live.async_client().lock(
            live.component_lock_key(name), timeout=LOCK_TTL, blocking_timeout=wait
        )
        self.name = name

    async def __aenter__(self) -> None:
        if not await self.lock.acquire():
            raise HubError(409, "BUSY", f"sequence component {self.name} is busy; try again")

    async def __aexit__(self, *exc: object) -> None:
        # Expired under a very slow load: nothing left to release.
        with contextlib.suppress(Exception):
            await self.lock.release()


async def load_script(
    comp: SequenceComponent, sequence_id: str, prefix: str, user: Any
) -> tuple[dict[str, Any], int]:
    """LoadScript: start a sequencer running `sequence_id` as `prefix` in an Idle component.

    200 SequencerLocation, 422 LoadingScriptFailed(msg: stderr of the script), 409 Unhandled
    when the component already hosts one. 404 for an unknown sequence.
    """
    _check_name(prefix, "prefix", "ESW.darknight")
    if not isinstance(sequence_id, str) or not sequence_id:
        raise HubError(400, "INVALID_REQUEST", "sequence: expected a sequence id")
    return await _shielded(_load_script(comp, sequence_id, prefix, user))


async def _shielded(coro: Any) -> tuple[dict[str, Any], int]:
    """Run a component operation to its end even if the caller goes away (a dropped HTTP
    request must not leave a sequencer started but attached to no component)."""
    return await asyncio.shield(asyncio.ensure_future(coro))


async def _load_script(
    comp: SequenceComponent, sequence_id: str, prefix: str, user: Any
) -> tuple[dict[str, Any], int]:
    async with _ComponentLock(comp.name):
        comp = await aget_component(comp.name)
        decision = decide_component(ComponentState(comp.state), ComponentCommand.LOAD_SCRIPT)
        if not decision.load:
            return await sync_to_async(_finish)(comp, decision.state, decision.response)
        seq = await sync_to_async(Sequence.objects.filter(pk=sequence_id).first)()
        if seq is None:
            raise not_found("Sequence", sequence_id)
        state, response = await _load(comp, decision, seq, prefix, user)
        return await sync_to_async(_finish)(comp, state, response)


async def unload_script(comp: SequenceComponent, user: Any) -> tuple[dict[str, Any], int]:
    """UnloadScript: shut the hosted sequencer down (→ Killed), component → Idle; Ok in Idle."""
    return await _shielded(_unload_script(comp, user))


async def _unload_script(comp: SequenceComponent, user: Any) -> tuple[dict[str, Any], int]:
    async with _ComponentLock(comp.name):
        comp = await aget_component(comp.name)
        decision = decide_component(ComponentState(comp.state), ComponentCommand.UNLOAD_SCRIPT)
        if decision.unload:
            await _shutdown_hosted(comp, user)
        return await sync_to_async(_finish)(comp, decision.state, decision.response)


async def restart(comp: SequenceComponent, user: Any) -> tuple[dict[str, Any], int]:
    """RestartScript: unload, then load the same script and prefix: a fresh sequencer.
    409 Unhandled in Idle; 422 LoadingScriptFailed (the component is then Idle)."""
    return await _shielded(_restart(comp, user))


async def _restart(comp: SequenceComponent, user: Any) -> tuple[dict[str, Any], int]:
    async with _ComponentLock(comp.name):
        comp = await aget_component(comp.name)
        decision = decide_component(ComponentState(comp.state), ComponentCommand.RESTART)
        if not decision.load:
            return await sync_to_async(_finish)(comp, decision.state, decision.response)
        old = await sync_to_async(hosted_sequencer)(comp)
        if decision.unload:
            await _shutdown_hosted(comp, user)
        script = await sync_to_async(lambda: old.script if old else None)()
        if old is None or script is None:
            state, response = decision.loaded(False, error="the hosted script is gone")
            return await sync_to_async(_finish)(comp, state, response)
        state, response = await _load(comp, decision, script, old.prefix, user)
        return await sync_to_async(_finish)(comp, state, response)


def _finish(
    comp: SequenceComponent, state: ComponentState, response: ComponentResponse | None
) -> tuple[dict[str, Any], int]:
    if comp.state != state or state is ComponentState.RUNNING:
        # Written even when it looks unchanged: the sequencer a restart unloaded freed the
        # row (Idle) under this lock. A command's outcome clears why it last went Idle.
        SequenceComponent.objects.filter(pk=comp.pk).update(state=str(state), reason="")
        comp.state = str(state)
    if not isinstance(response, ComponentUnhandled):
        announce_component(comp.name)  # its state or its sequencer changed
    answer = response if response is not None else ComponentOk()
    return answer.to_json(), component_http_status(answer)


async def _load(
    comp: SequenceComponent, decision: ComponentDecision, seq: Sequence, prefix: str, user: Any
) -> tuple[ComponentState, ComponentResponse]:
    if seq.language != "python":
        return decision.loaded(
            False,
            error=f"sequence {seq.id} is a {seq.language} package: scripts are Python "
            "(main.py defining script(sequencer))",
        )
    lock = live.async_client().lock(
        live.sequencer_prefix_lock_key(prefix), timeout=LOCK_TTL, blocking_timeout=LOCK_TTL
    )
    async with lock:
        clash = await sync_to_async(_prefix_holder)(prefix)
        if clash is not None:
            return decision.loaded(False, error=clash)
        row = await sync_to_async(_create_sequencer)(seq, prefix, user)
        ok, error = await _start_process(row)
    if not ok:
        return decision.loaded(False, error=error)
    located = await sync_to_async(_attach)(row.id, comp, _user_id(user))
    return decision.loaded(True, sequencer=located)


def _prefix_holder(prefix: str) -> str | None:
    holder = Sequencer.objects.filter(prefix=prefix).exclude(state=State.KILLED).first()
    if holder is None or heal([holder])[0].state == State.KILLED:
        return None
    where = f" in component {holder.component.name}" if holder.component else ""
    return f"a sequencer with prefix {prefix} is already loaded{where} (id {holder.id})"


def _create_sequencer(seq: Sequence, prefix: str, user: Any) -> Sequencer:
    owner = user if _user_id(user) is not None else None
    instance = Instance.objects.create(
        sequence=seq, sequence_name=seq.name, kind="script", created_by=owner
    )
    return Sequencer.objects.create(prefix=prefix, script=seq, instance=instance, created_by=owner)


async def _start_process(row: Sequencer) -> tuple[bool, str]:
    """Start the sequencer's process; (True, "") once its script is loaded, else the reason
    with the script's stderr (its traceback)."""
    instance = row.instance
    if instance is None:
        return False, f"sequencer {row.prefix} has no instance to start"
    # The worker waits up to HUB_START_TIMEOUT for the script to load, then ends the child.
    wait = settings.HUB_START_TIMEOUT + 25
    answer = await instances.push_start(instance, wait, sequencer=row)
    if answer is not None and answer.get("ok"):
        return True, ""
    if answer is None:
        reason = f"no worker answered within {wait:.0f} s: is a worker running?"
        await sync_to_async(_fail_start)(row, reason)
        return False, reason
    reason = answer.get("error") or answer.get("reason") or "the script failed to load"
    # The row was created with its instance (_create); only deleting that instance unsets it.
    iid = cast(str, row.instance_id)
    stderr = await _stderr_text(iid) if answer.get("pid") else ""
    await sync_to_async(_fail_start)(row, f"the script failed to load: {reason}")
    return False, f"{reason}\n{stderr}".strip() if stderr else reason


def _fail_start(row: Sequencer, reason: str) -> None:
    if row.instance_id:
        instances.record_failed_start(
            row.instance_id, Exit.LAUNCH_FAILED, reason, waiting_only=True
        )
    store.mark_killed(row.id, reason, "LoadScript")


def claim_start(sequencer_id: str, instance_id: str, worker: str) -> bool:
    """A worker takes the start of a sequencer's process: its instance row goes from
    initializing to starting, once, and only if it is that sequencer's. A replayed start
    (past the Redis claim) or one naming another sequencer's instance finds nothing to take."""
    if not Sequencer.objects.filter(pk=sequencer_id, instance_id=instance_id).exists():
        return False
    claimed = Instance.objects.filter(
        pk=instance_id, kind="script", status=InstanceStatus.INITIALIZING
    ).update(status=InstanceStatus.STARTING, worker=worker, started=timezone.now())
    return claimed == 1


async def _stderr_text(iid: str, wait: float = 5.0, limit: int = 20000) -> str:
    """What the child wrote on stderr, read from its live stream until its end marker."""
    client = live.async_client()
    key = live.stream_key(iid, "stderr")
    deadline = time.monotonic() + wait
    while True:
        entries = live.range_entries(await client.xrange(key))
        done = any(live.is_end(key, fields) for _, fields in entries)
        if done or time.monotonic() >= deadline:
            data = b"".join(fields.get(b"d", b"") for _, fields in entries)
            return data.decode("utf-8", "replace")[-limit:].strip()
        await asyncio.sleep(0.05)


def _attach(sequencer_id: str, comp: SequenceComponent, user_id: int | None) -> dict[str, Any]:
    Sequencer.objects.filter(pk=sequencer_id).update(component=comp)
    store.record_transition(sequencer_id, "", State.IDLE, "LoadScript", user_id)
    view = store.describe(_rows().get(pk=sequencer_id))
    # A new sequencer (LoadScript, RestartScript): open sequencer lists show it at once.
    store.fan_out(view)
    return view


async def _shutdown_hosted(comp: SequenceComponent, user: Any) -> None:
    """Shut the hosted sequencer down; if its process does not answer, mark it Killed and
    kill the process, so the component is free whatever happened."""
    row = await sync_to_async(hosted_sequencer)(comp)
    if row is None or row.state == State.KILLED:
        return
    with contextlib.suppress(HubError):
        await command(row, CommandName.SHUTDOWN, None, user, timeout=SHUTDOWN_WAIT)
    row = await aget_sequencer(row.id)
    if row.state == State.KILLED:
        return
    reason = f"unloaded from component {comp.name}: its process did not answer the shutdown"
    await sync_to_async(store.mark_killed)(row.id, reason, "UnloadScript", _user_id(user))
    instance = row.instance
    if instance is not None and instance.worker:
        dest = live.control_key(instance.worker)
        await live.async_client().rpush(
            dest, live.encode_control(dest, {"op": "kill", "id": instance.id})
        )
