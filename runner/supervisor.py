"""The supervisor: one per worker process, an asyncio loop that owns every child it started.

It forks children through the preloaded fork server, pumps their streams to Redis (live) and to
the database (durable), answers control messages from the web (input, stop, kill, events, health)
and records each outcome. One event loop serves hundreds of children: no thread or process is
tied to a running instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import psutil
import uvloop
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from core.protocol import STREAMS, WORKER_SHUTDOWN, Exit, Message, Outcome
from runner import cgroups, control, isolation, launch, outcomes, sampler, topic_links
from runner.dbwriter import DbWriter
from runner.forkserver import ForkServer, ParentEnds, close_fds, make_child_fds
from runner.outbox import Outbox
from runner.outcomes import Notifier
from runner.places import cache_root
from sequences import hubs, live, placement
from sequences.errors import HubError
from sequences.instances import clean_limits, record_failed_start
from sequences.models import Instance, InstanceStatus, Sequence, Worker
from sequences.sequencers import MAX_NAME, NAME_RE

log = logging.getLogger(__name__)

DEFAULT_NPROC = 1024  # processes and threads of an instance running as a leased user id
MIN_FREE_MEMORY = 128 << 20  # below this a worker takes no start
MEMORY_READ_SECONDS = 0.2  # how old the available memory that start decisions use may be
ROOM_COALESCE_SECONDS = 0.005  # the changes to the free places published in one write


# Who starts the child of a start of another kind than "sequence" once the intake checked and
# claimed it: (supervisor, request) -> the answer for the web. Sequencer scripts ("script") go
# to their actor (runner/sequencer_actor.py registers it).
Launcher = Callable[["Supervisor", dict[str, Any]], Awaitable[dict[str, Any]]]
LAUNCHERS: dict[str, Launcher] = {}


def register_launcher(kind: str, launcher: Launcher) -> None:
    LAUNCHERS[kind] = launcher


class Refused(Exception):
    """A start the worker cannot take (capacity, memory): the web answers 507."""


@dataclass
class Child:
    iid: str
    kind: str
    pid: int = 0
    seq: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    transports: list[asyncio.BaseTransport] = field(default_factory=list)
    open_pumps: int = 0
    pumps_done: asyncio.Event = field(default_factory=asyncio.Event)
    ctl_writer: asyncio.StreamWriter | None = None
    ctl_task: asyncio.Task | None = None
    stdin: asyncio.WriteTransport | None = None
    input: asyncio.WriteTransport | None = None
    input_header_sent: bool = False
    exit_code: int | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    killed: bool = False
    stopped: bool = False
    kept_alive: bool = False
    stop_timer: asyncio.Task | None = None
    remove_immediately: bool = False
    finished: bool = False  # the outcome is recorded: no later message may change the status
    health_waiters: list[asyncio.Future] = field(default_factory=list)
    on_message: Callable[[int, Any], None] | None = None  # sequencer actors listen here
    on_exit: Callable[[int, str, str], None] | None = None  # (exit code, status, reason)
    workdir: str = ""
    psutil_proc: psutil.Process | None = None
    lease: isolation.UidLease | None = None  # the user id it runs as, while it lives
    cgroups: list[str] = field(default_factory=list)  # its groups, for limits.cpu and .pids
    links: topic_links.Links | None = None  # the topics it publishes to and reads from
    end_note: str = ""  # why the hub ended it, added to its outcome's reason (a drain)
    # The hub marked it lost while this worker was cut off: its end is not recorded again.
    given_up: bool = False
    # Why the hub killed it, when not on a request made on it (a worker shutdown): the outcome
    # recorded if it dies of that kill (runner/outcomes.py).
    end_reason: Outcome | None = None
    # Its CPU and memory samples (runner/sampler.py); made at the fork, the CPU baseline.
    ring: sampler.Ring = field(default_factory=sampler.Ring)
    # Events it emitted: each live entry carries its number, so a reader that asked "from
    # now" while Redis was away can tell the older ones the outbox held from those after.
    events_out: int = 0


class Pump(asyncio.Protocol):
    """Reads one child pipe; every read becomes one chunk (the child already coalesces)."""

    def __init__(self, sup: Supervisor, child: Child, stream: str) -> None:
        self.sup, self.child, self.stream = sup, child, stream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.child.transports.append(transport)
        if self.sup.outbox.paused:
            transport.pause_reading()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.sup.emit_chunk(self.child, self.stream, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.child.open_pumps -= 1
        if self.child.open_pumps <= 0:
            self.child.pumps_done.set()


def pipe_file(loop: asyncio.AbstractEventLoop, fd: int, mode: str) -> Any:
    """A file object to hand `loop` for a pipe transport on `fd`, which the transport then owns.

    uvloop's pipe transports close the descriptor themselves (libuv) and then close the file
    object too: a second close of a number that a pipe made meanwhile may hold
    (MagicStack/uvloop#763). Under 200 starts at once, new children's pipes were closed under
    them ("Bad file descriptor", "File exists"). So under uvloop the file object does not own
    the descriptor; under asyncio's loop the transport closes only the file, which does.
    """
    return os.fdopen(fd, mode, buffering=0, closefd=not isinstance(loop, uvloop.Loop))


class Supervisor:
    def __init__(
        self, name: str | None = None, capacity: int | None = None, queues: list[str] | None = None
    ) -> None:
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.capacity = capacity or settings.HUB_WORKER_CAPACITY
        # The Celery queues this worker serves: it takes their direct start requests too.
        self.queues = queues or [settings.CELERY_TASK_DEFAULT_QUEUE]
        # What a start's placement may ask of this worker (HUB_WORKER_LABELS, checked by the
        # settings: a malformed label stops the process before it serves anything).
        self.labels: list[str] = list(settings.HUB_WORKER_LABELS)
        self.host = socket.gethostname()  # a placement may name it instead of the worker
        self.children: dict[str, Child] = {}
        self.by_pid: dict[int, Child] = {}
        # uvloop: the loop reads every child's pipes and writes every line to Redis; its
        # callbacks cost a fraction of asyncio's per read (bench/README.md, session 8).
        self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        self.writer = DbWriter()
        self.writer.on_missing = self._row_missing
        sandbox = launch.sandbox_config()
        self.forkserver = ForkServer(sandbox=sandbox)
        self.sandbox = launch.sandbox_report(sandbox)
        summary = self.sandbox["summary"]
        log.log(
            logging.WARNING if "OFF" in summary or "MISSING" in summary else logging.INFO, summary
        )
        self.outbox: Outbox  # made at boot, with the loop's Redis client
        self.notifier = Notifier(self.loop)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hub-supervisor", daemon=True)
        self._stopping = False
        # The instances the worker's shutdown killed (its audit entry names them).
        self.ended_by_shutdown: list[str] = []
        # Starts popped and not yet ended (answered), by instance id: with the children, what
        # fills the places. By id, because a start's child joins the children before its start
        # is answered, and counted twice it made a worker near its capacity say it was full.
        self._starting: Counter[str] = Counter()
        self._room = asyncio.Event()  # set when a place may have come free
        self._room_dirty = False
        self._room_task: asyncio.Task | None = None
        self._room_closed = False  # set by the shutdown once the room is taken away
        self._memory_available = 0
        self._memory_read_at = -MEMORY_READ_SECONDS
        # Set by a drain (runner/drain.py): no more starts; the worker exits once empty.
        self.draining = False

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        """The worker is shutting down: its loops end."""
        return self._stopping

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("supervisor did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._boot())
        self._ready.set()
        self.loop.run_forever()

    async def _boot(self) -> None:
        # The fork server is started from this long-lived thread: its death signal follows it.
        await self.forkserver.start()
        self.forkserver.on_exit(self._on_exit)
        # What the worker loaded at boot (Django, Celery, this module) lives as long as it
        # does: out of the collector's sight, a full collection with hundreds of children's
        # objects around stays short instead of stalling the loop that pumps their streams.
        gc.freeze()
        # Its children's pipes, transports, tasks and rings (~75 objects each) are not frozen,
        # and a full collection walks them all: with 2 000 children, 20-27 of them a run, each
        # holding the loop 0.1-0.5 s on a busy machine, and lines reached Redis late (p99 0.12-
        # 0.14 s). Fewer young collections (one per 20 000 allocations, as the web's) make full
        # ones rare: none over 10 ms in the same run, p99 29 ms (bench/README.md, session 9).
        gc.set_threshold(20_000, 20, 20)
        self.redis = live.async_client()
        self.outbox = Outbox(self.loop, self.redis, self.writer, self._set_reading)
        self._register_worker()
        if (launch.run_as() or {}).get("lease"):
            self.loop.create_task(self._sweep_strays())
        self.loop.create_task(self._control_loop())
        self.loop.create_task(self._start_loop())
        self.loop.create_task(self._heartbeat_loop())
        self.loop.create_task(sampler.sample_loop(self))

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float | None = 30) -> Any:
        """Run a coroutine on the supervisor's loop from another thread and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def shutdown(self) -> None:
        """Worker shutdown: end every child, record why, stop the loop."""
        if self._stopping:
            return
        self._stopping = True
        with contextlib.suppress(Exception):
            self.run(self._shutdown(), timeout=20)
        self.writer.flush()

    async def _shutdown(self) -> None:
        for child in list(self.children.values()):
            child.killed = True
            child.end_reason = WORKER_SHUTDOWN
            self.ended_by_shutdown.append(child.iid)
            self.kill_tree(child)
        deadline = time.monotonic() + 10
        while self.children and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.forkserver.close()
        await self.redis.delete(live.worker_key(self.name))
        # No room write after the one deleted below: a pending one (coalescing the children's
        # ends) would put this worker back among the rooms, full, until it lapsed.
        self._room_closed = True
        if self._room_task is not None and not self._room_task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._room_task, 2)
        for queue in self.queues:
            await cast("Awaitable[int]", self.redis.hdel(live.room_key(queue), self.name))
        # Gone from the lists of workers at once, not after HUB_LOST_AFTER.
        stopped = timezone.now()
        self.writer.call(
            lambda: Worker.objects.filter(name=self.name).update(stopped=stopped, running=0)
        )

    def _register_worker(self) -> None:
        now = timezone.now()
        self.writer.call(lambda: self._write_worker_row(now, running=0))

    def _write_worker_row(self, now: datetime, running: int) -> None:
        Worker.objects.update_or_create(
            name=self.name,
            defaults={
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "capacity": self.capacity,
                "last_seen": now,
                "running": running,
                "stopped": None,
                "sandbox": self.sandbox,
                "labels": self.labels,
            },
        )

    async def _heartbeat_loop(self) -> None:
        # Not once stopping: a beat after the shutdown deleted the key would list the worker
        # as alive for HUB_LOST_AFTER more.
        while not self._stopping:
            try:
                await self.redis.set(
                    live.worker_key(self.name), len(self.children), ex=int(settings.HUB_LOST_AFTER)
                )
                await self._write_room()
                await hubs.announce_async(self.redis)  # this hub is alive (sequences/hubs.py)
                self.writer.call(
                    functools.partial(
                        self._record_beat, len(self.children), timezone.now(), list(self.children)
                    )
                )
            except Exception:
                log.exception("heartbeat failed")
            await asyncio.sleep(max(1.0, settings.HUB_LOST_AFTER / 4))

    def _record_beat(self, running: int, now: datetime, children: list[str]) -> None:
        # `stopped` cleared: a worker that beat detect_lost took for gone (a long stall) is back.
        beat = Worker.objects.filter(name=self.name)
        if not beat.update(last_seen=now, running=running, stopped=None):
            # Its row is gone: aged out after a day taken for stopped (a long partition), or
            # deleted by hand. Written again, or the worker would stay off the Workers page.
            self._write_worker_row(now, running)
        # Children the hub gave up while this worker was cut off (a partition, a long stall):
        # beat marked them lost and no request reaches them any more (the instance is not
        # live), so they would run on out of the hub's control, holding places. Killed here.
        given_up = list(
            Instance.objects.filter(id__in=children, status=InstanceStatus.LOST).values_list(
                "id", flat=True
            )
        )
        if given_up:
            self.loop.call_soon_threadsafe(self._kill_given_up, given_up)

    def _kill_given_up(self, ids: list[str]) -> None:
        for iid in ids:
            child = self.children.get(iid)
            if child is not None and child.exit_code is None:
                log.warning("killing instance %s: the hub marked it lost while cut off", iid)
                self.host_log(
                    f"instance {iid} killed: the hub marked it lost while its worker was cut off"
                )
                child.killed = True
                child.given_up = True
                self.kill_tree(child)

    # -- room -----------------------------------------------------------------------------
    def free_places(self) -> int:
        """How many more starts this worker can take now: 0 when it is full (its children and
        the starts it popped fill its capacity), short of memory, stopping or draining."""
        if self._stopping or self.draining:
            return 0
        if self.available_memory() < MIN_FREE_MEMORY:
            return 0
        # The starts popped and not yet among the children (a handful), not a union of every
        # child's id at each call: this runs at every pop and room write.
        starting = sum(1 for iid in self._starting if iid not in self.children)
        return max(0, self.capacity - len(self.children) - starting)

    def available_memory(self) -> int:
        """The machine's available memory, read at most every MEMORY_READ_SECONDS: a start
        asked it up to six times (room, capacity, the room's own figure), each a parse of
        /proc/meminfo, ~7 % of the loop's time per start."""
        now = time.monotonic()
        if now - self._memory_read_at >= MEMORY_READ_SECONDS:
            self._memory_available = psutil.virtual_memory().available
            self._memory_read_at = now
        return self._memory_available

    def room_changed(self) -> None:
        """On the loop, when a start is popped or answered or a child ends: wake the start loop
        and publish the free places (coalesced: one write for a burst of changes)."""
        self._room.set()
        self._room_dirty = True
        if self._room_task is None or self._room_task.done():
            self._room_task = self.loop.create_task(self._publish_room())

    async def _publish_room(self) -> None:
        while self._room_dirty:
            # The changes of one start (popped, answered) come milliseconds apart: one write
            # for them. A web that read the room meanwhile is refused by a full worker (which
            # does not pop) and places the start again, so a late room costs nothing lost.
            await asyncio.sleep(ROOM_COALESCE_SECONDS)
            if self._room_closed:
                return  # the shutdown took this worker's room away: not written back
            self._room_dirty = False
            try:
                await self._write_room()
            except Exception:
                log.exception("could not publish the worker's free places")

    async def _write_room(self) -> None:
        """Tell the web how many starts this worker can take, for each queue it serves; the
        entry lapses with the heartbeat, so a dead worker's places do not count."""
        value = live.room_value(
            self.free_places(),
            time.time() + settings.HUB_LOST_AFTER,
            self.labels,
            self.available_memory() >> 20,
            self.host,
            draining=self.draining,
        )
        pipe = self.redis.pipeline(transaction=False)
        for queue in self.queues:
            pipe.hset(live.room_key(queue), self.name, value)
        await pipe.execute()

    # -- start ----------------------------------------------------------------------------
    def check_capacity(self) -> None:
        if len(self.children) >= self.capacity:
            raise Refused(f"worker {self.name} is at its capacity of {self.capacity} instances")
        if self.available_memory() < MIN_FREE_MEMORY:
            raise Refused(f"worker {self.name} has less than 128 MiB of memory free")

    async def spawn(
        self,
        iid: str,
        spec: dict[str, Any],
        kind: str = "sequence",
        argv: list[str] | None = None,
        record_start: bool = False,
        links: topic_links.Links | None = None,
    ) -> Child:
        """Fork the child with its seven descriptors and start pumping its streams.

        `record_start` queues the row's "starting" update (worker, pid, time) right after the
        fork, ahead of anything the child can say, so the writer applies them in order.
        """
        self.check_capacity()
        child = Child(iid=iid, kind=kind, workdir=spec["workdir"], links=links)
        if (spec.get("run_as") or {}).get("lease"):
            lease = isolation.lease_uid(settings.HUB_RUN_UID_BASE, settings.HUB_RUN_UID_COUNT)
            child.lease = lease
            # "sweep": the child first kills anything a dead worker's instance left on the id.
            spec = {**spec, "run_as": {"uid": lease.uid, "gid": lease.uid, "sweep": True}}
            # The id is this instance's alone, so RLIMIT_NPROC bounds its processes and
            # threads: a fork bomb stops there even without limits.pids and cgroups.
            limits = spec.get("limits") or {}
            nproc = int(limits.get("pids") or DEFAULT_NPROC)
            spec["limits"] = {**limits, "nproc": nproc}
        try:
            child.cgroups = cgroups.create(iid, spec.get("limits") or {})
        except BaseException:
            if child.lease is not None:
                child.lease.release()
            raise
        spec = {**spec, "cgroups": child.cgroups}
        child_fds, ends = make_child_fds()
        try:
            if argv:
                child.pid = await self.forkserver.spawn_exec(argv, spec, child_fds)
            else:
                child.pid = await self.forkserver.spawn(spec, child_fds)
        except BaseException:
            ends.close()
            cgroups.remove(child.cgroups)
            if child.lease is not None:
                child.lease.release()
            raise
        finally:
            close_fds(child_fds)
        child.ring = sampler.Ring()  # CPU time counts from the fork
        self.children[iid] = child
        self.by_pid[child.pid] = child
        self.room_changed()
        if record_start:
            self.writer.update(
                iid,
                status=InstanceStatus.STARTING,
                worker=self.name,
                started=timezone.now(),
                pid=child.pid,
            )
        with contextlib.suppress(psutil.Error):
            child.psutil_proc = psutil.Process(child.pid)
        await self._attach(child, ends)
        self.host_log(f"instance {iid} started, pid {child.pid}")
        return child

    async def _attach(self, child: Child, ends: ParentEnds) -> None:
        # The transports own the ends from here: each closes its descriptor when it closes.
        readers = ends.readers()
        child.open_pumps = len(STREAMS)
        fds = [readers[stream] for stream in STREAMS] + [ends.stdin, ends.input]
        taken = 0  # how many of `fds` a transport owns so far
        try:
            for stream in STREAMS:
                protocol = functools.partial(Pump, self, child, stream)
                await self.loop.connect_read_pipe(protocol, pipe_file(self.loop, fds[taken], "rb"))
                taken += 1
            writers = []
            for fd in fds[taken:]:
                transport, _ = await self.loop.connect_write_pipe(
                    asyncio.Protocol, pipe_file(self.loop, fd, "wb")
                )
                writers.append(transport)
                taken += 1
        except BaseException:
            close_fds(fds[taken:])  # those no transport took; the rest close with theirs
            ends.control.close()
            raise
        child.stdin, child.input = writers
        reader, writer = await asyncio.open_unix_connection(sock=ends.control, limit=1 << 24)
        child.ctl_writer = writer
        child.ctl_task = self.loop.create_task(self._control_from_child(child, reader))

    # -- streams --------------------------------------------------------------------------
    def emit_chunk(self, child: Child, stream: str, data: bytes) -> None:
        if stream == "output" and topic_links.output(self, child, data):
            return  # published to its topic instead
        seq = child.seq[stream]
        child.seq[stream] = seq + 1
        self.writer.chunk(child.iid, stream, seq, data)
        self.outbox.add(live.stream_key(child.iid, stream), {"s": seq, "d": data}, len(data))

    def _set_reading(self, paused: bool) -> None:
        """The outbox's back-pressure: stop (or go on) reading every child's output."""
        for child in self.children.values():
            for transport in child.transports:
                with contextlib.suppress(Exception):
                    if paused:
                        transport.pause_reading()  # type: ignore[attr-defined]
                    else:
                        transport.resume_reading()  # type: ignore[attr-defined]

    def host_log(self, msg: str, **data: Any) -> None:
        line = json.dumps(
            {"ts": int(time.time() * 1000), "level": "INFO", "from": self.name, "msg": msg, **data}
        )
        self.outbox.add(live.host_log_key(), {"d": line + "\n"})

    # -- control from the child -----------------------------------------------------------
    async def _control_from_child(self, child: Child, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except (ConnectionError, ValueError):
                break
            if not line:
                break
            try:
                code, data = json.loads(line)
            except ValueError:
                continue
            self._on_child_message(child, code, data)

    def _on_child_message(self, child: Child, code: int, data: Any) -> None:
        if code == Message.PING and not child.finished:
            self.writer.update(child.iid, status=InstanceStatus.RUNNING)
            self.notifier.changed(child.iid, status=InstanceStatus.RUNNING)
        elif code == Message.HEALTH:
            for waiter in child.health_waiters:
                if not waiter.done():
                    waiter.set_result(data)
            child.health_waiters.clear()
        elif code == Message.ALIVE:
            child.kept_alive = True
            if child.stop_timer:
                child.stop_timer.cancel()
            if child.stopped and child.exit_code is None and not child.finished:
                child.stopped = False
                self.writer.update(child.iid, status=InstanceStatus.RUNNING)
                self.notifier.changed(child.iid, status=InstanceStatus.RUNNING)
        elif code == Message.EVENT and isinstance(data, dict):
            self._on_event(child, data)
        elif code == Message.PANG and child.kind == "sequence":
            topic_links.on_pang(self, child, data)
        if child.on_message is not None:
            child.on_message(code, data)

    def _on_event(self, child: Child, data: dict) -> None:
        name = str(data.get("eventName", ""))
        message = json.dumps(data.get("message"))
        number, child.events_out = child.events_out, child.events_out + 1
        self.outbox.add(live.events_key(child.iid), {"n": name, "m": message, "i": number})
        self.loop.create_task(self._keep_last_event(child.iid, name, message))
        self.writer.event(child.iid, "out", name, data.get("message"))
        self.notifier.events_soon(child.iid)

    async def _keep_last_event(self, iid: str, name: str, message: str) -> None:
        # redis-py types a command's reply for sync and async clients alike: this one awaits.
        await cast("Awaitable[int]", self.redis.hset(live.last_events_key(iid), name, message))

    def send(self, child: Child, code: int, data: Any) -> None:
        if child.ctl_writer is not None and not child.ctl_writer.is_closing():
            child.ctl_writer.write(json.dumps([code, data]).encode() + b"\n")

    # -- control from the web -------------------------------------------------------------
    async def _control_loop(self) -> None:
        key = live.control_key(self.name)
        client = live.async_client()
        while True:
            try:
                item = await client.blpop([key], timeout=5)
            except Exception:
                log.exception("control channel failed; retrying")
                await asyncio.sleep(1)
                continue
            raw = live.popped(item)
            if raw is None:
                continue
            try:
                header, payload = live.decode_control(key, raw)
            except live.OtherHub as exc:
                log.warning("ignored a control message: %s", exc)
                continue
            except (live.Forged, ValueError):
                log.warning("dropped a control message on %s that the hub did not write", key)
                continue
            operation = control.OPERATIONS.get(str(header.get("op", "")))
            if operation is not None:
                self.loop.create_task(self._guard(operation(self, header, payload), header))

    # -- direct starts from the web --------------------------------------------------------
    async def _start_loop(self) -> None:
        """Start requests the web pushes on its queue's list, for instances and sequencer
        scripts alike: no Celery dispatch, no database read for an instance, whose reply goes
        out as soon as the child is forked (the row is updated by the writer, in order with the
        child's own messages). A script's reply waits until its actor has it loaded.

        A worker pops a start only while it has a free place (and memory): a full worker
        leaves the list to workers with room, and pops again when a child ends. It pops the
        starts the web placed on it (its own lists) before those any worker may take."""
        keys = [live.placed_start_key(queue, self.name) for queue in self.queues]
        keys += [live.start_key(queue) for queue in self.queues]
        client = live.async_client()
        while not self._stopping:
            if self.free_places() <= 0:
                self._room.clear()
                # Memory is not an event: look again within a second even if no child ends.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), 1.0)
                continue
            try:
                item = await client.blpop(keys, timeout=5)
            except Exception:
                log.exception("start channel failed; retrying")
                await asyncio.sleep(1)
                continue
            took = live.popped_from(item)
            if took is not None and self.draining:
                # Popped while a drain began: back to the head of its list, as it came (still
                # signed for that list), for a worker that stays.
                await client.lpush(took[0], cast(str, took[1]))
                continue
            if took is not None:
                try:
                    header, _ = live.decode_control(*took)
                except live.OtherHub as exc:
                    log.warning("ignored a start request: %s", exc)
                    continue
                except (live.Forged, ValueError):
                    log.warning("dropped a start request that the hub did not write")
                    continue
                iid = str(header.get("id"))
                self._starting[iid] += 1
                self.room_changed()
                self.loop.create_task(self._take_start(iid, header))

    async def _take_start(self, iid: str, header: dict[str, Any]) -> None:
        try:
            await self._guard(self._start_requested(header), header)
        finally:
            self._starting[iid] -= 1
            if self._starting[iid] <= 0:
                del self._starting[iid]
            self.room_changed()

    async def _start_requested(self, req: dict[str, Any]) -> None:
        try:
            iid, token = check_start(req)
        except ValueError as exc:
            log.warning("refused a malformed start request: %s", exc)
            return
        if float(req.get("expires", 0)) < time.time():
            return  # the web stopped waiting and recorded the failure itself
        # One start per request, claimed first: a replay (the same signed request pushed
        # again, by an attacker or by the web placing a start it thought swallowed) finds the
        # claim taken, and is dropped without an answer: the worker holding the claim answers.
        # A request the web signed always has its row; should the row be missing, the writer
        # finds out at the "starting" update and the child is killed.
        claimed = iid not in self.children and await self.redis.set(
            live.claim_key(iid), self.name, nx=True, ex=int(settings.HUB_START_TIMEOUT) + 60
        )
        if not claimed:
            log.warning("dropped a start for %s: it was claimed already", iid)
            return
        kind = str(req.get("kind", "sequence"))
        # The web chose this worker for the placement; it is checked here again, as every
        # field is, and a start this worker may not run is refused, never run.
        misfit = placement.misfit(
            placement.parse_placement(req.get("placement")), self.name, self.labels, self.host
        )
        if misfit is not None:
            reason = f"{misfit}: not started"
            # Only a waiting row (a start placed again elsewhere may have run meanwhile).
            self.writer.call(
                functools.partial(record_failed_start, iid, Exit.REFUSED, reason, waiting_only=True)
            )
            await self.reply(
                token,
                {"ok": False, "status": 507, "code": "INSUFFICIENT_RESOURCES", "error": reason},
            )
            return
        try:
            self.check_capacity()
            if kind in LAUNCHERS:
                answer = await LAUNCHERS[kind](self, req)
            else:
                spec, argv = await self.child_spec(req)
                links = topic_links.from_start(req)
                await topic_links.prepare(links)
                child = await self.spawn(
                    iid, spec, kind=kind, argv=argv, record_start=True, links=links
                )
                await topic_links.started(self, child)
                answer = {"ok": True, "worker": self.name, "pid": child.pid}
        except Instance.DoesNotExist:
            log.warning("refused a start for %s: it has no row", iid)
            await self.reply(
                token,
                {"ok": False, "status": 404, "code": "NOT_FOUND", "error": f"no instance {iid}"},
            )
            return
        except cgroups.CgroupError as exc:
            await outcomes.failed_start(self, iid, Exit.LAUNCH_FAILED, f"Failed to start: {exc}")
            await self.reply(
                token, {"ok": False, "status": 422, "code": "INVALID_CONFIG", "error": str(exc)}
            )
            return
        except Refused as exc:
            await outcomes.failed_start(self, iid, Exit.REFUSED, str(exc))
            await self.reply(
                token,
                {"ok": False, "status": 507, "code": "INSUFFICIENT_RESOURCES", "error": str(exc)},
            )
            return
        except Exception as exc:
            log.exception("could not start instance %s", iid)
            await outcomes.failed_start(self, iid, Exit.LAUNCH_FAILED, f"Failed to start: {exc}")
            await self.reply(
                token,
                {
                    "ok": False,
                    "status": 400,
                    "code": "START_FAILED",
                    "error": f"Failed to start: {exc}",
                },
            )
            return
        await self.reply(token, answer, owned=iid if answer.get("ok") else None)

    async def child_spec(self, req: dict[str, Any]) -> tuple[dict[str, Any], list[str] | None]:
        """The launch spec from what the web sent, and the program to exec (None: fork the
        Python runtime); the database only when the package is not unpacked on this node yet
        (that fetch and unpack run in a thread)."""
        mode, extra = "sequence", None
        if req.get("kind") == "script":
            mode, extra = "script", {"prefix": req["sequencer"]["prefix"]}
        seq_fields = req["sequence"]
        if (cache_root() / str(seq_fields["sha256"])).is_dir():
            seq = Sequence(
                id=seq_fields["id"],
                sha256=seq_fields["sha256"],
                main=seq_fields["main"],
                language=seq_fields["language"],
                config=seq_fields.get("config") or {},
            )
            instance = Instance(
                id=req["id"],
                sequence=seq,
                args=req.get("args") or [],
                app_config=req.get("appConfig") or {},
                limits=req.get("limits") or {},
            )
            spec = launch.build_spec(instance, mode, extra)
        else:
            spec = await self.loop.run_in_executor(
                None, _spec_from_database, str(req["id"]), mode, extra
            )
        return spec, launch.exec_argv(spec)

    async def _guard(self, coro: Awaitable[None], header: dict) -> None:
        try:
            await coro
        except Exception as exc:
            log.exception("control %s failed", header.get("op"))
            if header.get("reply"):
                await self.reply(header["reply"], {"ok": False, "error": str(exc)})

    async def reply(self, token: str, value: Any, owned: str | None = None) -> None:
        """Answer a waiting request; `owned`: an instance id this worker now runs, published
        in the same round trip so the web can route control to it before the row says so."""
        key = live.reply_key(token)
        pipe = self.redis.pipeline(transaction=False)
        if owned is not None:
            pipe.set(live.owner_key(owned), self.name, ex=live.OWNER_TTL)
        pipe.rpush(key, live.encode_reply(token, value))
        pipe.expire(key, 60)
        await pipe.execute()

    def kill_tree(self, child: Child) -> None:
        """SIGKILL the child's process group at once, then any descendant that left it."""
        descendants: list[psutil.Process] = []
        if child.psutil_proc is not None:
            with contextlib.suppress(psutil.Error):
                descendants = child.psutil_proc.children(recursive=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        for proc in descendants:
            with contextlib.suppress(psutil.Error):
                proc.kill()

    # -- exit -----------------------------------------------------------------------------
    def _on_exit(self, pid: int, code: int) -> None:
        child = self.by_pid.pop(pid, None)
        if child is None:
            return
        child.exit_code = code
        child.exited.set()
        self.loop.create_task(outcomes.finish(self, child))

    def _row_missing(self, iid: str) -> None:
        """From the writer's thread: an instance's "starting" update found no row."""
        self.loop.call_soon_threadsafe(self._rowless, iid)

    def _rowless(self, iid: str) -> None:
        child = self.children.get(iid)
        if child is not None and child.exit_code is None:
            log.warning("killed instance %s: it has no row (not started by the web)", iid)
            child.killed = True
            self.kill_tree(child)

    async def _sweep_strays(self) -> None:
        """Processes left under a children's user id that no live instance holds: what a
        worker that died (SIGKILL, out of memory) could not clean up; killed at boot."""
        base, count = settings.HUB_RUN_UID_BASE, settings.HUB_RUN_UID_COUNT
        strays = await self.loop.run_in_executor(None, isolation.stray_uids, base, count)
        if strays:
            isolation.LEASE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        for uid in sorted(strays):
            lease = isolation.try_lease(uid)
            if lease is None:
                continue  # a live instance of some worker on this machine
            try:
                await self.loop.run_in_executor(None, isolation.sweep_uid_outside, uid)
                log.warning("killed processes left under user id %d by a worker that died", uid)
            except Exception:
                log.exception("could not sweep user id %d", uid)
            finally:
                lease.release()


START_KINDS = ("sequence", "script")
SHA256 = re.compile(r"[0-9a-f]{64}")
TOKEN = re.compile(r"[0-9a-f]{32}")


def check_start(req: dict[str, Any]) -> tuple[str, str]:
    """Every field of a start request checked as the API checks it: (id, reply token), or
    ValueError naming the bad field. The request is signed; this is the second lock."""
    iid, token = req.get("id"), req.get("reply")
    if not isinstance(iid, str) or not launch.ID_PATTERN.fullmatch(iid):
        raise ValueError(f"id {iid!r} is not 1 to 64 letters, digits, '-' or '_'")
    if not isinstance(token, str) or not TOKEN.fullmatch(token):
        raise ValueError("reply is not a reply token")
    kind = req.get("kind", "sequence")
    if kind not in START_KINDS:
        raise ValueError(f"kind {req.get('kind')!r} is not one of {', '.join(START_KINDS)}")
    if kind == "script":
        sequencer = req.get("sequencer")
        if not isinstance(sequencer, dict):
            raise ValueError("a script's start names no sequencer")
        sid, prefix = sequencer.get("id"), sequencer.get("prefix")
        if not isinstance(sid, str) or not launch.ID_PATTERN.fullmatch(sid):
            raise ValueError(f"sequencer.id {sid!r} is not 1 to 64 letters, digits, '-' or '_'")
        if not isinstance(prefix, str) or len(prefix) > MAX_NAME or not NAME_RE.fullmatch(prefix):
            raise ValueError(f"sequencer.prefix {prefix!r} is not a sequencer's name")
    seq = req.get("sequence")
    if not isinstance(seq, dict) or not SHA256.fullmatch(str(seq.get("sha256", ""))):
        raise ValueError("sequence.sha256 is not a SHA-256")
    main = seq.get("main")
    if not isinstance(main, str) or main.startswith("/") or ".." in Path(main).parts:
        raise ValueError(f"sequence.main {main!r} is not a path inside the package")
    if seq.get("language") not in ("python", "node"):
        raise ValueError(f"sequence.language {seq.get('language')!r} is not python or node")
    if not isinstance(req.get("args", []), list):
        raise ValueError("args is not a list")
    if not isinstance(req.get("appConfig", {}), dict):
        raise ValueError("appConfig is not an object")
    topic_links.check_start_fields(req)
    try:
        clean_limits(req.get("limits") or {})
        placement.parse_placement(req.get("placement"))
    except HubError as exc:
        raise ValueError(exc.message) from None
    return iid, token


def _spec_from_database(iid: str, mode: str, extra: dict[str, Any] | None) -> dict[str, Any]:
    close_old_connections()
    instance = Instance.objects.select_related("sequence").get(pk=iid)
    return launch.build_spec(instance, mode, extra)


_supervisor: Supervisor | None = None
_supervisor_lock = threading.Lock()


def get_supervisor(queues: list[str] | None = None) -> Supervisor:
    """The worker process's supervisor, started on first use (taking direct start requests
    for `queues`, by default the default queue)."""
    global _supervisor
    with _supervisor_lock:
        if _supervisor is None:
            sup = Supervisor(queues=queues)
            sup.start()
            _supervisor = sup
        return _supervisor


def current_supervisor() -> Supervisor | None:
    return _supervisor
