"""The worker's Celery side: its supervisor's start and stop, and the periodic tasks that find
lost instances and prune old ones. Starts do not come through Celery: the supervisor pops them
from Redis (runner/supervisor.py), and hands a sequencer's script to its actor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db.models import Max
from django.utils import timezone

from core.protocol import STREAMS, WORKER_LOST, Exit
from runner import drain, sequencer_actor
from runner.supervisor import Supervisor, current_supervisor, get_supervisor
from sequences import hub_events, live, restarts, sequencers_lost, topics
from sequences.instances import record_failed_start
from sequences.models import LIVE_STATUSES, Instance, InstanceStatus, Sequencer, StreamChunk, Worker

log = logging.getLogger(__name__)
SUPERVISOR_FAILED = 3  # the worker's exit status when its supervisor cannot start
# Imported for their control operations ("drain", "seqcmd"), registered at import.
CONTROL_MODULES = (drain, sequencer_actor)


@worker_ready.connect
def _start_supervisor(sender: object = None, **_: object) -> None:
    try:
        get_supervisor(_queue_names(sender))
    except Exception as exc:
        # Celery only logs what a signal handler raises and serves on: a worker without its
        # supervisor takes no start and says nothing more. Stop it, loudly, so runhub (or
        # systemd, Kubernetes) shows why.
        log.critical("the worker stops: its supervisor could not start: %s", exc, exc_info=True)
        logging.shutdown()
        os._exit(SUPERVISOR_FAILED)
    # What a worker killed before this one left (its instances lost), not the restarts: they
    # would hold the worker's start on their answers; the next beat makes them.
    detect_lost(restart=False)


def _queue_names(consumer: object) -> list[str] | None:
    """The queues this worker consumes (`-Q`): it takes their direct start requests too."""
    try:
        return sorted(q.name for q in consumer.task_consumer.queues)  # type: ignore[attr-defined]
    except Exception:
        return None


@worker_shutdown.connect
def _stop_supervisor(**_: object) -> None:
    """On a worker's orderly stop: end every child and record why, and let every sequencer
    actor record its sequencer as Killed before the process exits."""
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
    _audit_shutdown(sup)


def _audit_shutdown(sup: Supervisor) -> None:
    """One audit entry per worker shutdown, naming what it ended (the instances and their
    sequencers), so a hub restart is found in the log rather than guessed from the ends."""
    ids = sup.ended_by_shutdown
    try:
        prefixes = list(
            Sequencer.objects.filter(instance_id__in=ids).values_list("prefix", flat=True)
        )
    except Exception:
        prefixes = []
    hub_events.record(
        "worker.shutdown",
        sup.name,
        instances=len(ids),
        ended=ids[:200],
        sequencers=prefixes[:200],
    )


@shared_task(name="runner.tasks.detect_lost", ignore_result=True)
def detect_lost(restart: bool = True) -> int:
    """Instances whose worker stopped answering end `lost`, so no one waits on them forever;
    workers that stopped answering are marked stopped (they leave the lists); then, unless
    `restart` is False, instances whose restart policy asks for it are started again."""
    client = live.sync_client()
    lost = 0
    workers = set(
        Instance.objects.filter(status__in=LIVE_STATUSES)
        .exclude(worker="")
        .values_list("worker", flat=True)
        .distinct()
    )
    beating = timezone.now() - timedelta(seconds=settings.HUB_LOST_AFTER)
    for name in workers:
        if client.exists(live.worker_key(name)):
            continue
        # A restarted Redis has lost every heartbeat key until the next beat: the database's
        # copy of the heartbeat says whether the worker is really silent.
        if Worker.objects.filter(name=name, last_seen__gte=beating).exists():
            continue
        lost += mark_lost(name, WORKER_LOST.format(worker=name))
    _age_out_workers(client, beating)
    # Starts that never reached a worker.
    cutoff = timezone.now() - timedelta(seconds=settings.HUB_START_TIMEOUT * 2)
    stale = Instance.objects.filter(
        status=InstanceStatus.INITIALIZING, worker="", created__lt=cutoff
    )
    for iid in stale.values_list("id", flat=True):
        record_failed_start(
            iid, Exit.LAUNCH_FAILED, "no worker took the start request", waiting_only=True
        )
    if restart:
        restarts.restart_due()
    return lost


def _age_out_workers(client: Any, beating: datetime) -> None:
    """Workers silent for HUB_LOST_AFTER (by Redis and by the database) without instances left
    to mark lost: stopped, so the lists show only live ones. (One with instances was marked by
    `mark_lost`.)"""
    silent = Worker.objects.filter(stopped__isnull=True, last_seen__lt=beating)
    for name in silent.values_list("name", flat=True):
        if client.exists(live.worker_key(name)):
            continue
        if Worker.objects.filter(name=name, stopped__isnull=True, last_seen__lt=beating).update(
            stopped=timezone.now()
        ):
            reason = WORKER_LOST.format(worker=name)
            hub_events.record(
                "worker.lost", name, reason=reason, instances=0, ended=[], sequencers=[]
            )


def mark_lost(worker: str, reason: str) -> int:
    """End `lost` every live instance of a silent worker, close their live streams, mark
    their sequencers Killed (their components go Idle), stop the worker's row, and write one
    audit entry for the loss. Safe to run twice at once (several beats): the worker row's
    update is the claim of the audit entry, and the instances' update is guarded by status."""
    now = timezone.now()
    first = Worker.objects.filter(name=worker, stopped__isnull=True).update(stopped=now)
    ids = list(
        Instance.objects.filter(status__in=LIVE_STATUSES, worker=worker).values_list(
            "id", flat=True
        )
    )
    ended = Instance.objects.filter(pk__in=ids, status__in=LIVE_STATUSES).update(
        status=InstanceStatus.LOST,
        reason=reason[:500],
        ended=now,
        remove_at=now + timedelta(seconds=settings.HUB_INSTANCE_RETENTION),
    )
    keep_live_tail(ids)
    client = live.sync_client()
    pipe = client.pipeline(transaction=False)
    ended_keys = [live.stream_key(iid, stream) for iid in ids for stream in STREAMS]
    for key in ended_keys:
        pipe.xadd(key, live.sign_end(key, {"eof": 1, "lost": 1}))
    live.note_moved(pipe, ended_keys)
    pipe.execute()
    prefixes: list[str] = []
    if ids:
        prefixes = sequencers_lost.on_instances_lost(ids, reason)
    if first or ended:
        hub_events.record(
            "worker.lost",
            worker,
            reason=reason,
            instances=len(ids),
            ended=ids[:200],
            sequencers=prefixes[:200],
        )
    return len(ids)


def entry_time(entry_id: bytes | str) -> datetime | None:
    """When Redis took a stream entry: its id is `<milliseconds>-<n>`."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    millis = text.partition("-")[0]
    if not millis.isdigit():
        return None
    return datetime.fromtimestamp(int(millis) / 1000, tz=UTC)


def keep_live_tail(ids: list[str]) -> int:
    """Write to the database the chunks a dead worker had put in Redis but not yet in the
    database (its writer batches); the number written.

    Readers saw them live; once the instance has ended it is read from the database only
    (sequences/streams.py), so without this the last lines a reader could read before are gone
    from every later read (seen on the cluster test bed: a host killed right after printing).
    A worker that was only cut off and comes back writes the same chunks again: ignored."""
    client = live.sync_client()
    kept = dict.fromkeys(((iid, stream) for iid in ids for stream in STREAMS), -1)
    rows = (
        StreamChunk.objects.filter(instance_id__in=ids)
        .values("instance_id", "stream")
        .annotate(last=Max("seq"))
    )
    for row in rows:
        kept[(row["instance_id"], row["stream"])] = row["last"]
    missing: list[StreamChunk] = []
    for (iid, stream), last in kept.items():
        # Newest first, a page at a time, back to what the database has.
        key, before = live.stream_key(iid, stream), b"+"
        while True:
            page = live.range_entries(client.xrevrange(key, max=before, count=64))
            chunks = {
                int(f[b"s"]): (f[b"d"], entry_time(entry_id))
                for entry_id, f in page
                if b"s" in f and b"d" in f
            }
            missing += [
                StreamChunk(instance_id=iid, stream=stream, seq=seq, data=data, created=at)
                for seq, (data, at) in chunks.items()
                if seq > last
            ]
            if len(page) < 64 or (chunks and min(chunks) <= last):
                break
            before = b"(" + page[-1][0]
    StreamChunk.objects.bulk_create(missing, ignore_conflicts=True)
    return len(missing)


@shared_task(name="runner.tasks.prune_ended", ignore_result=True)
def prune_ended() -> int:
    """Ended instances past retention lose their info, streams and events; topics lose what
    is older than their retention."""
    now = timezone.now()
    ids = list(
        Instance.objects.exclude(status__in=LIVE_STATUSES)
        .filter(remove_at__lte=now)
        .values_list("id", flat=True)[:1000]
    )
    if ids:
        Instance.objects.filter(pk__in=ids).delete()
        client = live.sync_client()
        for iid in ids:
            client.delete(*live.instance_keys(iid))
    Worker.objects.filter(stopped__lt=now - timedelta(days=1)).delete()
    topics.trim_all()
    return len(ids)
