"""Trends of the runs, for the overview: runs per hour by how they ended, the failure rate, and
the median and 95th-percentile duration per sequence.

Everything is aggregated by the database (a GROUP BY over the window's rows, found through the
index on `created`), never by reading every row into Python: the overview stays fast with
100 000 instances (bench/console_lists.py).

How a run ended is decided in one place, `ending_expression()`: the instance's outcome
(core.protocol.Ending), in the database as `sequences.outcomes.outcome_q` selects it, so the
charts count what the badges show (a stop that overran its timeout is stopped, not killed; a
worker's shutdown or drain deadline killed; a run no worker had room for refused).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import (
    Aggregate,
    BooleanField,
    Case,
    CharField,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    Q,
    Value,
    When,
)
from django.db.models.expressions import Combinable
from django.db.models.functions import TruncHour
from django.utils import timezone

from core.protocol import Ending
from sequences.models import LIVE_STATUSES, Instance
from sequences.outcomes import outcome_q

# How a run ended (a core.protocol.Ending, or not yet), in the order the charts stack them
# (bottom first), with what each means.
ENDINGS: tuple[tuple[str, str], ...] = (
    (Ending.COMPLETED, "completed"),
    (Ending.STOPPED, "stopped"),
    (Ending.KILLED, "killed"),
    (Ending.FAILED, "failed"),
    (Ending.REFUSED, "refused (no room to run)"),
    (Ending.LOST, "lost (its worker died)"),
    ("running", "not ended yet"),
)
FAILED_ENDINGS = (Ending.FAILED, Ending.LOST)  # what the failure rate counts
UNENDED = "running"
WINDOW_HOURS = 24
TOP_SEQUENCES = 8  # sequences in the durations chart: the ones with the most ended runs
# SQLite has no percentile aggregate: there the durations are read, newest first, up to this.
SQLITE_DURATION_ROWS = 20_000


def ending_expression() -> Case:
    """The one place that says how a run ended, as an SQL expression over an instance row: its
    outcome (the badge's word), or `running` while it has not ended. An ended row outside
    every outcome (none is: a test holds them together) would count as not ended."""
    return Case(
        When(status__in=LIVE_STATUSES, then=Value(UNENDED)),
        *(When(outcome_q(name), then=Value(name)) for name in Ending.ALL),
        default=Value(UNENDED),
        output_field=CharField(),
    )


@dataclass
class Bucket:
    start: datetime
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class SequenceDurations:
    name: str
    runs: int  # ended runs in the window that had started
    p50: float  # seconds
    p95: float
    failed: int = 0


@dataclass
class Trends:
    since: datetime
    hours: list[Bucket]
    totals: dict[str, int]
    durations: list[SequenceDurations]

    @property
    def ended(self) -> int:
        return sum(n for k, n in self.totals.items() if k != UNENDED)

    @property
    def failed(self) -> int:
        return sum(self.totals.get(k, 0) for k in FAILED_ENDINGS)

    @property
    def failure_rate(self) -> float | None:
        """Failed and lost runs over the runs that ended in the window; None when none did."""
        return self.failed / self.ended if self.ended else None


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def runs_per_hour(now: datetime, hours: int = WINDOW_HOURS) -> list[Bucket]:
    """The runs created in each of the last `hours` hours (the current one last), by ending;
    hours without runs are there with no counts."""
    now = timezone.localtime(now)
    first = _hour(now) - timedelta(hours=hours - 1)
    buckets = {first + timedelta(hours=n): Bucket(first + timedelta(hours=n)) for n in range(hours)}
    rows = (
        Instance.objects.filter(created__gte=first)
        .annotate(bucket=TruncHour("created"), ending=ending_expression())
        .values("bucket", "ending")
        .annotate(n=Count("*"))
        .order_by()
    )
    for row in rows:
        bucket = buckets.get(_hour(timezone.localtime(row["bucket"])))
        if bucket is not None:
            bucket.counts[row["ending"]] = bucket.counts.get(row["ending"], 0) + row["n"]
    return list(buckets.values())


class Percentile(Aggregate):
    """PostgreSQL's ordered-set aggregate `percentile_cont(f) WITHIN GROUP (ORDER BY x)`."""

    function = "PERCENTILE_CONT"
    name = "Percentile"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression: Combinable | F | str, fraction: float, **extra: Any) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError("fraction must be between 0 and 1")
        # A float literal of ours, never user input.
        super().__init__(
            expression, fraction=repr(float(fraction)), output_field=DurationField(), **extra
        )


def _quantile(values: list[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks, as percentile_cont does."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    place = fraction * (len(ordered) - 1)
    low = int(place)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (place - low)


def durations_per_sequence(since: datetime, top: int = TOP_SEQUENCES) -> list[SequenceDurations]:
    """Median and 95th percentile of how long the ended runs created since `since` ran (from
    started to ended), for the `top` sequences with the most such runs."""
    ran = Instance.objects.filter(
        created__gte=since, ended__isnull=False, started__isnull=False
    ).annotate(took=ExpressionWrapper(F("ended") - F("started"), output_field=DurationField()))
    failed = Q()
    for name in FAILED_ENDINGS:
        failed |= outcome_q(name)
    if connection.vendor == "postgresql":
        rows = (
            ran.values("sequence_name")
            .annotate(
                runs=Count("*"),
                bad=Count("pk", filter=failed),
                p50=Percentile("took", 0.5),
                p95=Percentile("took", 0.95),
            )
            .order_by("-runs", "sequence_name")[:top]
        )
        return [
            SequenceDurations(
                r["sequence_name"] or "(unnamed)",
                r["runs"],
                r["p50"].total_seconds(),
                r["p95"].total_seconds(),
                r["bad"],
            )
            for r in rows
        ]
    # SQLite (a small hub): the same figures from a bounded read.
    per: dict[str, list[float]] = {}
    bad: dict[str, int] = {}
    for name, took, bad_run in (
        ran.annotate(
            bad_run=Case(
                When(failed, then=Value(True)), default=Value(False), output_field=BooleanField()
            )
        )
        .order_by("-created")
        .values_list("sequence_name", "took", "bad_run")[:SQLITE_DURATION_ROWS]
    ):
        per.setdefault(name, []).append(took.total_seconds())
        if bad_run:
            bad[name] = bad.get(name, 0) + 1
    busiest = sorted(per.items(), key=lambda item: (-len(item[1]), item[0]))[:top]
    return [
        SequenceDurations(
            name or "(unnamed)",
            len(values),
            _quantile(values, 0.5),
            _quantile(values, 0.95),
            bad.get(name, 0),
        )
        for name, values in busiest
    ]


def trends(now: datetime | None = None, hours: int = WINDOW_HOURS) -> Trends:
    now = now or timezone.now()
    buckets = runs_per_hour(now, hours)
    totals: dict[str, int] = {}
    for bucket in buckets:
        for ending, n in bucket.counts.items():
            totals[ending] = totals.get(ending, 0) + n
    since = buckets[0].start
    return Trends(since, buckets, totals, durations_per_sequence(since))
