"""Restart policies, acted on: ended instances whose policy asks for it are started again, as
new instances linked to the ones they replace (`restarted_from`).

Run by beat (`runner.tasks.detect_lost`, right after it marked lost instances), so what
restarts an instance survives the death of the worker that ran it. Each restart happens once
however many beat processes or web requests race on it: the copy's row holds the one-to-one
link `restarted_from`, so a second copy of the same instance cannot be stored (the database's
unique constraint decides, not a check made before). The copy goes on the start list like any
start; the worker that lost it is dead (its heartbeat lapsed), so another takes it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from core.db_threads import db_call
from core.protocol import DRAINED, WORKER_SHUTDOWN, Exit
from sequences import hub_events, instances, live, placement
from sequences.errors import HubError
from sequences.models import Instance, InstanceStatus
from sequences.restart_policy import RESTARTING, RestartPolicy, delay, wants_restart

log = logging.getLogger(__name__)

BATCH = 50  # restarts per beat run, at most: the rest wait for the next run


def candidates() -> list[Instance]:
    """Ended instances whose policy asks for a restart not made yet (back-off not counted):
    the rule of `restart_policy.wants_restart`, as a query."""
    failed = Q(status__in=(InstanceStatus.LOST, InstanceStatus.ERRORED))
    interrupted = Q(status=InstanceStatus.COMPLETED, reason=WORKER_SHUTDOWN.reason) | Q(
        status=InstanceStatus.COMPLETED, reason__endswith=DRAINED
    )
    done = Q(status=InstanceStatus.COMPLETED, exit_code=Exit.COMPLETED, restart_policy="always")
    rows = (
        Instance.objects.filter(
            failed | interrupted | done,
            kind="sequence",
            restart_policy__in=RESTARTING,
            restart_count__lt=F("restart_max"),
            restart__isnull=True,  # no copy made yet
            sequence__isnull=False,
            ended__isnull=False,
        )
        .select_related("sequence", "created_by")
        .order_by("ended")
    )
    return list(rows[: BATCH * 4])


def restart_due() -> list[str]:
    """Start a copy of every instance whose policy and back-off say it is time; the ids of the
    copies started (or tried: a copy that fails to start is itself an end the policy sees)."""
    now = timezone.now()
    due = [
        row
        for row in candidates()
        if wants_restart(row.restart_policy, row.status, row.exit_code, row.reason)
        and row.ended is not None
        and row.ended + timedelta(seconds=delay(row.restart_backoff, row.restart_count)) <= now
    ][:BATCH]
    made = [copy for row in due if (copy := _make_copy(row)) is not None]
    if made:
        async_to_sync(_start_all)(made)
    return [copy.id for copy in made]


def _make_copy(old: Instance) -> Instance | None:
    """The copy's row, linked to `old`; None if another beat (or an operator) made it first,
    or the hub cannot take one more instance now (tried again at the next run)."""
    policy = RestartPolicy(old.restart_policy, old.restart_max, old.restart_backoff)
    req = instances.StartRequest(
        args=old.args,
        app_config=old.app_config,
        instance_id=None,
        limits=instances.clean_limits(old.limits),
        output_topic=old.output_topic,
        input_topic=old.input_topic,
        # Where it may run, as the first start said (a copy of a start for a worker that
        # is gone is refused, and counts as a failure of the chain).
        placement=placement.parse_placement(old.placement or None),
        restarted_from=old.id,
        restart=policy,
        restart_count=old.restart_count + 1,
    )
    assert old.sequence is not None  # candidates() has only instances with their sequence
    try:
        copy = instances.create_row(old.sequence, req, old.created_by, "sequence")
    except HubError as exc:
        if exc.code != "ALREADY_RESTARTED":
            log.warning("could not restart instance %s: %s", old.id, exc.message)
        return None
    hub_events.record(
        "instance.restart",
        copy.id,
        restartedFrom=old.id,
        policy=policy.policy,
        count=copy.restart_count,
        max=policy.max,
        ended=old.status,
        reason=old.reason,
    )
    log.info("restarting instance %s as %s (%s)", old.id, copy.id, old.reason or old.status)
    return copy


async def _start_all(copies: list[Instance]) -> None:
    try:
        await asyncio.gather(*(_start(copy) for copy in copies))
    finally:
        await live.close_async_client()  # this loop ends with the call (async_to_sync)


async def _start(copy: Instance) -> None:
    """Push the copy's start and wait for its worker's answer. A worker that refuses it records
    the failure; one that never answers is recorded here, as a start from the API would be."""
    try:
        answer = await instances.push_start(copy, settings.HUB_START_TIMEOUT)
    except Exception:
        log.exception("could not push the restart %s", copy.id)
        answer = None
    if answer is None:
        await db_call(
            instances.record_failed_start,
            copy.id,
            Exit.LAUNCH_FAILED,
            "no worker answered the restart",
            waiting_only=True,
        )
