"""Draining a worker: it takes no more starts, lets what it runs finish (or stops it at the
drain's deadline), then exits, so that a worker started later takes its place.

The web sends the control operation `drain` (`{deadline, reply}`) on the worker's own control
list (sequences/workers.py). From then on the supervisor publishes 0 free places with the flag
`draining` (the web counts it neither as room nor as full), puts a start it popped in that moment
back on its list, and this module waits for its children and the starts it was taking. At the
deadline it stops what is left as a stop request does (the stop handlers, then a kill after
DRAIN_STOP_GRACE), each outcome's reason naming the drain; sequencers end Killed with it. Once
nothing is left it records `drained` and asks Celery for a warm shutdown of its own process
(SIGTERM), whose worker_shutdown hook (runner/tasks.py) takes the supervisor down as usual.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from core.protocol import DRAIN_DEADLINE
from runner import control
from sequences.models import Worker

if TYPE_CHECKING:  # the supervisor imports the control registry: its type only
    from runner.supervisor import Supervisor

log = logging.getLogger(__name__)

DRAIN_STOP_GRACE = 7.0  # seconds between the stop request at the deadline and the kill (STH's)
POLL_SECONDS = 0.1
# Where the drain's wait is, per supervisor: its deadline (time.time()) and the task.
_deadlines: dict[str, float] = {}
_tasks: dict[str, asyncio.Task] = {}


@control.op("drain")
async def drain(sup: Supervisor, header: dict[str, Any], payload: bytes) -> None:
    """Begin draining (or, drained already, bring its deadline nearer): `{deadline: seconds}`
    from now. Answers `{ok, worker, running, deadline}` on `reply`."""
    seconds = max(0.0, float(header.get("deadline", 0)))
    deadline = time.time() + seconds
    # A second drain may hurry the first, never give it longer.
    _deadlines[sup.name] = min(deadline, _deadlines.get(sup.name, deadline))
    first = not sup.draining
    sup.draining = True
    sup.room_changed()  # wakes the start loop, which then pops nothing
    # 0 free places and the flag, in Redis before the web hears the drain was taken.
    await sup._write_room()
    if first:
        sup.host_log(f"worker {sup.name} draining: {len(sup.children)} running, {seconds:g} s")
        log.warning("worker %s draining (deadline in %g s)", sup.name, seconds)
        _tasks[sup.name] = sup.loop.create_task(_drain(sup))
    if header.get("reply"):
        await sup.reply(
            header["reply"],
            {
                "ok": True,
                "worker": sup.name,
                "running": len(sup.children),
                "deadline": _deadlines[sup.name],
            },
        )


async def _drain(sup: Supervisor) -> None:
    try:
        # Wait for what runs, and for starts popped just before the drain began.
        while (sup.children or sup._starting) and time.time() < _deadlines[sup.name]:
            await asyncio.sleep(POLL_SECONDS)
        left = list(sup.children.values())
        if left:
            note = DRAIN_DEADLINE.format(worker=sup.name)
            log.warning("worker %s: drain deadline; stopping %d children", sup.name, len(left))
            for child in left:
                child.end_note = note
                await control.stop(
                    sup, {"id": child.iid, "timeout": int(DRAIN_STOP_GRACE * 1000)}, b""
                )
        # The stop timers kill at the grace; the outcomes need a moment more to be recorded.
        end = time.monotonic() + DRAIN_STOP_GRACE + 10
        while (sup.children or sup._starting) and time.monotonic() < end:
            await asyncio.sleep(POLL_SECONDS)
        await _wait_for_actors()
        # The streams' end entries reach Redis before the process goes.
        end = time.monotonic() + 10
        while sup.outbox.waiting_bytes() and time.monotonic() < end:
            await asyncio.sleep(POLL_SECONDS)
        now = timezone.now()
        sup.writer.call(functools.partial(_record_drained, sup.name, now))
        await sup.loop.run_in_executor(None, sup.writer.flush)
        sup.host_log(f"worker {sup.name} drained: exiting")
    except Exception:
        log.exception("draining worker %s failed; exiting all the same", sup.name)
    if sup._stopping:
        return  # shut down meanwhile (SIGTERM from outside): a second signal would be cold
    # Celery's warm shutdown of this process: worker_shutdown ends the supervisor.
    os.kill(os.getpid(), signal.SIGTERM)


async def _wait_for_actors() -> None:
    """Sequencer actors record their sequencer's end after its process ended."""
    from runner import sequencer_actor

    end = time.monotonic() + 10
    while sequencer_actor.ACTORS and time.monotonic() < end:
        await asyncio.sleep(POLL_SECONDS)


def _record_drained(name: str, now: datetime) -> None:
    Worker.objects.filter(name=name).update(drained=now, stopped=now)
