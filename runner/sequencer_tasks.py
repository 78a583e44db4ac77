"""Celery tasks for sequencers: start a sequencer's process on this worker.

The start goes through the Celery queue (any worker may take it), claims the instance's row
(a task replayed or forged finds it taken), and the waiting web request gets its answer on a
Redis reply list. From then on the
sequencer's commands go straight to this worker's supervisor (control op `seqcmd`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from celery import shared_task
from celery.signals import worker_shutdown
from django.conf import settings
from django.utils import timezone

from core.protocol import Exit
from runner import launch, sequencer_actor
from runner.supervisor import Refused, current_supervisor, get_supervisor
from runner.tasks import fail_instance, send_reply
from sequences.models import Instance, InstanceStatus, Sequencer

log = logging.getLogger(__name__)


@shared_task(name="runner.sequencer_tasks.start_sequencer", ignore_result=True)
def start_sequencer(sequencer_id: str, reply: str) -> None:
    """Fork the sequencer's script child here, wait until the script is loaded, answer.

    The answer is `{"ok": true, "worker", "pid", "handlers"}`, or `{"ok": false, ...}` with
    `exitCode` / `reason` (the web then reads the child's stderr for the message) or `error`.
    """
    sup = get_supervisor()
    row = Sequencer.objects.select_related("instance__sequence").filter(pk=sequencer_id).first()
    if row is None or row.instance is None:
        send_reply(reply, {"ok": False, "error": f"sequencer {sequencer_id} not found"})
        return
    instance = row.instance
    timeout = float(settings.HUB_START_TIMEOUT)
    try:
        sup.check_capacity()
        # The task message is not signed (Celery's): a start runs only for a row the web
        # made and nobody started yet, once. A forged or replayed task finds it taken.
        claimed = Instance.objects.filter(
            pk=instance.id, status=InstanceStatus.INITIALIZING
        ).update(status=InstanceStatus.STARTING, worker=sup.name, started=timezone.now())
        if claimed != 1:
            log.warning("refused a start for sequencer %s: its row is not waiting", sequencer_id)
            send_reply(reply, {"ok": False, "error": "the sequencer's process already started"})
            return
        spec = launch.build_spec(instance, mode="script", extra={"prefix": row.prefix})
        argv = launch.exec_argv(spec)
        answer = sup.run(
            sequencer_actor.launch(sup, row.id, instance.id, spec, argv, timeout),
            timeout=timeout + 20,
        )
    except Refused as exc:
        fail_instance(instance.id, Exit.REFUSED, str(exc))
        send_reply(reply, {"ok": False, "error": str(exc), "code": "INSUFFICIENT_RESOURCES"})
        return
    except Exception as exc:
        log.exception("could not start sequencer %s", sequencer_id)
        fail_instance(instance.id, Exit.LAUNCH_FAILED, f"Failed to start: {exc}")
        send_reply(reply, {"ok": False, "error": f"Failed to start: {exc}"})
        return
    if answer.get("pid"):
        sup.writer.update(instance.id, pid=answer["pid"])
    send_reply(reply, answer)


@worker_shutdown.connect
def _record_sequencer_ends(**_: object) -> None:
    """On a worker's orderly stop, let every actor record its sequencer as Killed before the
    process exits (the supervisor's shutdown kills the children; idempotent if already done)."""
    sup = current_supervisor()
    if sup is None:
        return
    sup.shutdown()

    async def drained() -> None:
        deadline = time.monotonic() + 10
        while sequencer_actor.ACTORS and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    with contextlib.suppress(Exception):
        sup.run(drained(), timeout=12)
