"""Outcomes: how a child's end becomes its instance's status and reason, and who hears of it.

When the fork server reports a child's exit, `finish` ends the instance: it kills what the child
left in its group, gives back its user id and cgroups, lets the pumps and the control reader
drain, then writes the outcome (exit code → status and reason, as STH reports them) to the live
streams' signed end entries, the host log and the row, and tells the console pages. A start
that failed before any child ran is recorded by `failed_start`. `Notifier` sends the
"instance changed" notices (sequences/notices.py), coalesced where a page only looks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.utils import timezone

from core import protocol
from core.protocol import STREAMS
from runner import cgroups, sampler, topic_links
from sequences import live, notices
from sequences.instances import record_failed_start
from sequences.models import Instance, InstanceStatus

if TYPE_CHECKING:  # the supervisor imports this module: its type only, no import cycle
    from runner.supervisor import Child, Supervisor

log = logging.getLogger(__name__)

EVENT_NOTIFY_SECONDS = 0.2
LIST_NOTIFY_SECONDS = 0.1  # at most this often a "look again" to the instance list pages
INSTANCE_NOTIFY_SECONDS = 0.02  # an instance's changes within this are told its page at once
CGROUP_RETRY_SECONDS = 2.0
# How long the answer to a failed start waits for its record (the database may be away).
FAILED_START_WAIT = 5.0


def outcome(code: int, killed: bool, stopped: bool) -> tuple[str, str]:
    """Status and reason for an exit code, as STH reports them."""
    failed, reason = protocol.outcome(code, killed, stopped)
    return (InstanceStatus.ERRORED if failed else InstanceStatus.COMPLETED), reason


async def failed_start(sup: Supervisor, iid: str, code: int, reason: str) -> None:
    """Record a start that failed before its child ran; through the writer, after the updates
    queued for the instance before it. Returns once it is written (or after FAILED_START_WAIT
    with the database away), so that the client answered next finds the row already ended."""
    written = sup.loop.create_future()

    def done() -> None:
        if not written.done():
            written.set_result(None)

    def record() -> None:
        try:
            record_failed_start(iid, code, reason)
        finally:
            sup.loop.call_soon_threadsafe(done)

    sup.writer.call(record)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(written, FAILED_START_WAIT)


async def finish(sup: Supervisor, child: Child) -> None:
    """End the instance of a child that exited, and record how it ended."""
    # Leftovers in the group would hold the pipes open; a sequence leaves nothing behind.
    # (A daemon that left the group was reparented to the fork server, which kills it.)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    _release(sup.loop, child)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(child.pumps_done.wait(), 5)
    await _drain_control(child)
    await topic_links.finish(sup, child)
    for transport in [*child.transports, child.stdin, child.input]:
        if transport is not None:
            transport.close()
    if child.ctl_writer is not None:
        child.ctl_writer.close()
    if child.stop_timer:
        child.stop_timer.cancel()
    code = child.exit_code if child.exit_code is not None else protocol.UNKNOWN_EXIT
    status, reason = outcome(code, child.killed, child.stopped)
    if child.end_reason is not None and code == protocol.Exit.KILLED:
        # Killed by the hub for a reason of its own (a worker shutdown), not on a request.
        failed, reason = child.end_reason
        status = InstanceStatus.ERRORED if failed else InstanceStatus.COMPLETED
    if child.end_note:
        reason = f"{reason}: {child.end_note}"
    sup.children.pop(child.iid, None)
    sup.room_changed()
    child.finished = True
    sampler.ended(sup, child)
    now = timezone.now()
    sup.host_log(f"instance {child.iid} ended: {reason}", exitcode=code)
    if child.given_up:
        # The hub marked it lost (and closed its streams) while this worker was cut off:
        # that outcome stands, the kill that followed is not a new one.
        _cleanup(sup, child, code, status, reason)
        return
    _end_streams(sup, child, status, code, reason, now)
    fields: dict[str, Any] = {
        "status": status,
        "exit_code": code,
        "reason": reason,
        "ended": now,
        "remove_at": now + timedelta(seconds=settings.HUB_INSTANCE_RETENTION),
    }
    if child.remove_immediately:
        fields["remove_at"] = now
    sup.writer.update(child.iid, **fields)
    if child.remove_immediately:
        sup.writer.call(lambda: _delete_instance(child.iid))
    sup.notifier.changed(child.iid, status=status, exitcode=code, reason=reason)
    _cleanup(sup, child, code, status, reason)


def _cleanup(sup: Supervisor, child: Child, code: int, status: str, reason: str) -> None:
    if child.on_exit is not None:
        try:
            child.on_exit(code, status, reason)
        except Exception:
            log.exception("exit callback of %s failed", child.iid)
    if child.workdir:
        sup.loop.run_in_executor(None, shutil.rmtree, child.workdir, True)


def _end_streams(
    sup: Supervisor, child: Child, status: str, code: int, reason: str, now: datetime
) -> None:
    # The chunk count lets a reader that fell behind wait for the database to have all; the
    # outcome lets the web answer "how did it end" before the batched row update lands.
    for stream in STREAMS:
        key = live.stream_key(child.iid, stream)
        end = live.sign_end(
            key,
            {
                "eof": 1,
                "status": status,
                "exitcode": code,
                "reason": reason,
                "ended": now.timestamp(),
                "n": child.seq[stream],
            },
        )
        sup.outbox.add(key, end)
    # Expiry rides in the same pipeline, after the eof entries that may create the keys.
    for key in [*(live.stream_key(child.iid, s) for s in STREAMS), live.events_key(child.iid)]:
        sup.outbox.expire(key)


def _release(loop: asyncio.AbstractEventLoop, child: Child) -> None:
    """Give back the child's user id and cgroups. Its processes are gone or going: the
    group was killed, and the fork server kills orphans as it reaps the child. Should one
    still be dying when the id is leased again, the next child's kill(-1) ends it."""
    lease, child.lease = child.lease, None
    if lease is not None:
        lease.release()
    if child.cgroups:
        cgroups.remove(child.cgroups)
        # A group whose last process is still dying cannot be removed yet.
        loop.call_later(CGROUP_RETRY_SECONDS, cgroups.remove, child.cgroups)


async def _drain_control(child: Child) -> None:
    """Let the control reader apply what the child sent before it exited.

    The fork server's exit report can overtake the child's last control messages (its PING
    among them): applied after the outcome, a late "running" would overwrite "completed".
    """
    task = child.ctl_task
    if task is None or task.done():
        return
    with contextlib.suppress(TimeoutError, Exception):
        await asyncio.wait_for(asyncio.shield(task), 1)


def _delete_instance(iid: str) -> None:
    Instance.objects.filter(pk=iid).delete()
    live.sync_client().delete(*live.instance_keys(iid))


class Notifier:
    """Tells watchers (console pages) that an instance changed; at-most-once by design."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._list_change: dict[str, Any] | None = None
        self._list_due = False
        self._events_due: set[str] = set()
        self._instance_changes: dict[str, dict[str, Any]] = {}  # not yet sent, by instance

    def changed(self, iid: str, **change: Any) -> None:
        """The instance's own group hears its changes within INSTANCE_NOTIFY_SECONDS, those
        of one moment merged in one send (the latest value of each field): a short run's
        "running" and its end are one send, not two, and a send costs the worker two Redis
        round trips even when no page watches (bench/README.md, session 11). The list pages'
        group only means "look again" (they re-read the database), so its sends are coalesced
        to one per LIST_NOTIFY_SECONDS: a burst of starts costs one send there."""
        message = {"type": notices.INSTANCE_CHANGED, "id": iid, **change}
        pending = self._instance_changes.get(iid)
        if pending is None:
            self._instance_changes[iid] = dict(message)
            self.loop.call_later(INSTANCE_NOTIFY_SECONDS, self._instance, iid)
        else:
            pending.update(change)
        self._list_change = message
        if not self._list_due:
            self._list_due = True
            self.loop.call_later(LIST_NOTIFY_SECONDS, self._lists)

    def events_soon(self, iid: str) -> None:
        """The instance page lists emitted events: one "look again" per EVENT_NOTIFY_SECONDS,
        however many events a sequence emits, and after the writer stored them."""
        if iid in self._events_due:
            return
        self._events_due.add(iid)

        def fire() -> None:
            self._events_due.discard(iid)
            message = {"type": notices.INSTANCE_CHANGED, "id": iid, "events": True}
            self.loop.create_task(notices.asend(message, notices.instance_group(iid)))

        self.loop.call_later(EVENT_NOTIFY_SECONDS, fire)

    def _instance(self, iid: str) -> None:
        message = self._instance_changes.pop(iid, None)
        if message is not None:
            self.loop.create_task(notices.asend(message, notices.instance_group(iid)))

    def _lists(self) -> None:
        self._list_due = False
        message, self._list_change = self._list_change, None
        if message is not None:
            self.loop.create_task(notices.asend(message, notices.INSTANCES))
