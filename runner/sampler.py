"""Resource samples: every HUB_SAMPLE_SECONDS, each child's CPU % and resident memory.

The same figures the API's health reports (runner/control.py `_usage`: the child's own process,
not what it forked), written to the instance's ring in Redis (sequences/resources.py). The
CPU % is worked out here from the CPU time used since the previous sample, not with psutil's
`cpu_percent`, whose "since the last call" the health check's calls would shift.

The /proc reads for every child run in one executor call per tick, off the loop that pumps
the children's streams; the writes for all of them go in one Redis pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psutil
import redis
from django.conf import settings

from sequences import resources
from sequences.resources import RING, Sample

if TYPE_CHECKING:  # the supervisor imports this module: its type only, no import cycle
    from runner.supervisor import Child, Supervisor

log = logging.getLogger(__name__)


@dataclass
class Ring:
    """One child's samples as the worker keeps them (the Redis list mirrors `samples`)."""

    samples: list[Sample] = field(default_factory=list)
    stride: int = 1  # sampled every `stride` ticks: doubles each time the ring fills
    ticks: int = 0
    # CPU seconds and time at the previous reading; a child forked from the fork server starts
    # at 0 CPU seconds, so the first sample is the average since it was forked.
    last_cpu: float = 0.0
    last_at: float = field(default_factory=time.time)


def _read(proc: psutil.Process) -> tuple[float, int] | None:
    """CPU seconds (user + system) and resident bytes of one process; None once it is gone."""
    try:
        with proc.oneshot():
            times = proc.cpu_times()
            return times.user + times.system, proc.memory_info().rss
    except psutil.Error:
        return None


def _read_all(procs: dict[str, psutil.Process]) -> dict[str, tuple[float, int] | None]:
    return {iid: _read(proc) for iid, proc in procs.items()}


def next_sample(ring: Ring, cpu_seconds: float, rss: int, now: float) -> Sample:
    """The sample for a reading: CPU % since the previous reading."""
    cpu = 0.0
    if now > ring.last_at:
        cpu = max(0.0, (cpu_seconds - ring.last_cpu) / (now - ring.last_at) * 100)
    ring.last_cpu, ring.last_at = cpu_seconds, now
    return Sample(round(now, 1), round(cpu, 1), rss)


def add(ring: Ring, sample: Sample) -> bool:
    """Append a sample; when the ring is full, keep every other one and sample half as often.
    True when the ring was thinned (the stored list must be written again)."""
    ring.samples.append(sample)
    if len(ring.samples) < RING:
        return False
    # Every other one, counted from the newest, which stays.
    ring.samples = ring.samples[::-1][::2][::-1]
    ring.stride *= 2
    return True


def ttl(ring: Ring) -> int:
    """Seconds a live instance's list stays unless written again: outlasts the next sample."""
    gap = ring.stride * settings.HUB_SAMPLE_SECONDS
    return int(max(settings.HUB_RESOURCE_RETENTION, 3 * gap))


async def sample_loop(sup: Supervisor) -> None:
    interval = settings.HUB_SAMPLE_SECONDS
    away = False  # Redis is away: said once, not every tick
    while not sup.stopping:
        await asyncio.sleep(interval)
        try:
            await sample_once(sup)
            away = False
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The samples of the outage are lost (live data only); the rings go on after it.
            if not away:
                log.warning("resource samples not written, Redis is away: %s", exc)
            away = True
        except Exception:
            log.exception("sampling the instances' resources failed")


async def sample_once(sup: Supervisor) -> None:
    """One tick: read the children due for a sample, write their samples."""
    due: dict[str, psutil.Process] = {}
    for child in list(sup.children.values()):
        if child.psutil_proc is None or child.finished or child.exit_code is not None:
            continue
        ring = child.ring
        ring.ticks += 1
        if ring.ticks % ring.stride == 0:
            due[child.iid] = child.psutil_proc
    if not due:
        return
    readings = await sup.loop.run_in_executor(None, _read_all, due)
    now = time.time()
    pipe = sup.redis.pipeline(transaction=False)
    writes = 0
    for iid, reading in readings.items():
        owner = sup.children.get(iid)
        if reading is None or owner is None or owner.finished:
            continue
        ring = owner.ring
        sample = next_sample(ring, reading[0], reading[1], now)
        key = resources.resources_key(iid)
        if add(ring, sample):
            pipe.delete(key)
            pipe.rpush(key, *(resources.encode(s) for s in ring.samples))
        else:
            pipe.rpush(key, resources.encode(sample))
        pipe.expire(key, ttl(ring))
        writes += 1
    if writes:
        await pipe.execute()


def ended(sup: Supervisor, child: Child) -> None:
    """The instance ended: its samples stay HUB_RESOURCE_RETENTION more, then go."""
    if not child.ring.samples:
        return

    async def expire() -> None:
        with contextlib.suppress(Exception):
            await sup.redis.expire(
                resources.resources_key(child.iid), int(settings.HUB_RESOURCE_RETENTION)
            )

    sup.loop.create_task(expire())
