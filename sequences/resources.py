"""What an instance costs: CPU % and memory the worker samples over its life, kept in Redis.

The worker (runner/sampler.py) reads each child's CPU time and resident memory every
`HUB_SAMPLE_SECONDS` and appends a sample to the instance's list `res:<iid>` in the hub's
namespace. The list is a ring of at most `RING` samples that spans the whole life: when it is
full, every other sample is dropped and the instance is sampled half as often, so a run of a
minute keeps a sample every few seconds and a run of a week keeps `RING` samples spread over
the week (the CPU % of a sample is the average since the one before, so nothing is hidden
between two samples, only smoothed).

Why Redis and not the database: samples are live data (the instance page redraws them while it
runs), written every few seconds for every running instance; a table would take a row per
sample and per instance. The list outlives its instance by `HUB_RESOURCE_RETENTION` (1 h by
default) and goes with the instance when it is deleted (`live.instance_keys`). What is not
kept: a summary in the instance's row after that (peak memory, CPU seconds), which would need a
migration; the charts of an instance ended longer ago say that the samples are gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from sequences import live

if TYPE_CHECKING:
    from collections.abc import Awaitable

RING = 120  # samples kept per instance


@dataclass(frozen=True)
class Sample:
    at: float  # unix time
    cpu: float  # percent of one core, averaged since the previous sample (above 100: threads)
    rss: int  # resident memory, bytes


def resources_key(iid: str) -> str:
    return live.key("res", iid)


def encode(sample: Sample) -> bytes:
    return f"{sample.at:.1f} {sample.cpu:.1f} {sample.rss}".encode()


def decode(raw: bytes | str) -> Sample | None:
    """A sample as the worker wrote it; None for anything else (nothing read is trusted)."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    parts = text.split()
    if len(parts) != 3:
        return None
    try:
        at, cpu, rss = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        return None
    if not (at > 0 and 0 <= cpu < 1e6 and 0 <= rss < 1 << 50):
        return None
    return Sample(at, cpu, rss)


def decode_all(raws: list[bytes]) -> list[Sample]:
    samples = [s for s in (decode(r) for r in raws) if s is not None]
    return sorted(samples, key=lambda s: s.at)


def read_samples(iid: str) -> list[Sample]:
    """The samples kept for an instance, oldest first (empty: none yet, or none kept)."""
    raws = cast("list[bytes]", live.sync_client().lrange(resources_key(iid), 0, -1))
    return decode_all(raws)


async def aread_samples(iid: str) -> list[Sample]:
    raws = await cast(
        "Awaitable[list[bytes]]", live.async_client().lrange(resources_key(iid), 0, -1)
    )
    return decode_all(raws)
