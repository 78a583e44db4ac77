"""The overview: counts, trends of the runs, running instances, sequencers by state, workers
(with their load), recent activity."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import BooleanField, Count, ExpressionWrapper, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from accounts.access import has_role
from accounts.models import AuditEntry
from dashboard import charts
from dashboard.exposure import exposure_warnings, worker_warnings
from dashboard.views.common import role_page
from sequences import hubs, trends
from sequences.models import (
    ENDED_STATUSES,
    LIVE_STATUSES,
    Instance,
    Sequence,
    Sequencer,
    Worker,
)
from sequences.sequencers import heal

ENDED_SHOWN = 8
ENDED_COLUMNS: tuple[str, ...] = ("id", "sequence_name", "status", "exit_code", "reason")
ENDED_COLUMNS += ("ended_by", "worker", "created", "started", "ended")

log = logging.getLogger(__name__)

SEQUENCER_STATES = ("Idle", "Loaded", "Running", "Processing", "Offline", "Killed")
# The trends are aggregated over the last 24 h, a query of a few hundred ms with 100 000 runs in
# the window: a web process keeps the last result and serves it while a thread works out the
# next one once it is TRENDS_SECONDS old, so no page waits for the query but the process's first.
TRENDS_SECONDS = 10.0
_trends_lock = threading.Lock()
_trends_memo: tuple[float, trends.Trends] | None = None
_trends_refreshing = False


def _refresh_trends() -> None:
    global _trends_memo, _trends_refreshing
    try:
        fresh = trends.trends()
        with _trends_lock:
            _trends_memo = (time.monotonic(), fresh)
    except Exception:
        log.exception("working out the overview's trends failed; the last ones stay")
    finally:
        _trends_refreshing = False
        connection.close()  # this thread's own connection: it ends here


def current_trends() -> trends.Trends:
    global _trends_memo, _trends_refreshing
    with _trends_lock:
        memo = _trends_memo
        stale = memo is None or time.monotonic() - memo[0] > TRENDS_SECONDS
        start = stale and memo is not None and not _trends_refreshing
        if start:
            _trends_refreshing = True
    if memo is None:
        fresh = trends.trends()
        with _trends_lock:
            _trends_memo = (time.monotonic(), fresh)
        return fresh
    if start:
        threading.Thread(target=_refresh_trends, name="overview-trends", daemon=True).start()
    return memo[1]


def forget_trends() -> None:
    """For tests: the next overview works the trends out again, at once."""
    global _trends_memo
    with _trends_lock:
        _trends_memo = None


def trends_context(data: trends.Trends | None = None) -> dict[str, Any]:
    """The overview's charts: runs per hour by ending, failure rate, durations per sequence."""
    data = data or current_trends()
    longest = max((d.p95 for d in data.durations), default=0.0)
    rate = data.failure_rate
    return {
        "trends": data,
        "failure_rate": "—" if rate is None else f"{rate * 100:.1f} %",
        "failure_bad": bool(rate and rate >= 0.05),
        "runs_chart": charts.stacked_bars(data.hours, trends.ENDINGS, "Runs per hour, 24 h"),
        "runs_legend": charts.legend(trends.ENDINGS, data.totals),
        "durations": [
            {
                "row": d,
                "p50": charts.fmt_seconds(d.p50),
                "p95": charts.fmt_seconds(d.p95),
                "meter": charts.durations_meter(d.p50, d.p95, longest),
            }
            for d in data.durations
        ],
    }


def overview_context() -> dict[str, Any]:
    """Everything the overview shows; the live consumer renders the same partials from it."""
    by_status = dict(
        Instance.objects.values_list("status").annotate(n=Count("*")).values_list("status", "n")
    )
    sequencer_states = dict.fromkeys(SEQUENCER_STATES, 0)
    # Healed as the sequencer list is (a sequencer whose process is gone counts as Killed), so
    # the counts agree with the rows that list shows.
    # Only the ones not Killed yet are read (Killed ones pile up with every load and restart):
    # those already Killed are counted first, the ones healing kills now in the loop.
    sequencer_states["Killed"] = Sequencer.objects.filter(state="Killed").count()
    alive = Sequencer.objects.exclude(state="Killed").select_related("instance")
    for row in heal(list(alive)):
        shown = "Processing" if row.processing else row.state
        sequencer_states[shown] = sequencer_states.get(shown, 0) + 1
    fresh = timezone.now() - timedelta(seconds=settings.HUB_LOST_AFTER * 2)
    # Gone workers age out: stopped ones (orderly stop, or marked by detect_lost), and, should
    # beat not run, any silent for a minute or more.
    recent = timezone.now() - timedelta(seconds=max(60, 4 * settings.HUB_LOST_AFTER))
    workers = list(
        Worker.objects.filter(stopped__isnull=True, last_seen__gte=recent)
        .annotate(alive=ExpressionWrapper(Q(last_seen__gte=fresh), output_field=BooleanField()))
        .order_by("name")
    )
    for worker in workers:
        worker.load = charts.load_meter(worker.running, worker.capacity)  # type: ignore[attr-defined]
    return {
        **trends_context(),
        "counts": {
            # Names, as the sequences list groups them (every upload of a name is a version),
            # so the figure is the rows the link opens; the uploads are in the title.
            "sequences": Sequence.objects.values("name").distinct().count(),
            "uploads": Sequence.objects.count(),
            "instances": sum(by_status.values()),
            "running": sum(by_status.get(s, 0) for s in LIVE_STATUSES),
            "errored": by_status.get("errored", 0),
            "sequencers": sum(v for k, v in sequencer_states.items() if k != "Killed"),
        },
        "running": list(
            Instance.objects.filter(status__in=LIVE_STATUSES).order_by("-created")[:20]
        ),
        # The newest ended ones, with their outcome badges (the status index serves it).
        "ended": list(
            Instance.objects.filter(status__in=ENDED_STATUSES)
            .only(*ENDED_COLUMNS)
            .order_by("-created")[:ENDED_SHOWN]
        ),
        "sequencer_states": sequencer_states,
        "workers": workers,
        "recent": list(AuditEntry.objects.all()[:12]),
    }


@require_GET
@role_page("viewer")
def overview(request: HttpRequest) -> HttpResponse:
    context = overview_context()
    # Admins can fix the configuration, so they are told where sequence code could get in.
    admin = has_role(request.user, "admin")
    context["exposure"] = exposure_warnings() + worker_warnings() if admin else []
    # And when another hub uses the same Redis database (sequences/hubs.py).
    context["shared_redis"] = hubs.shared_redis_warnings() if admin else []
    return render(request, "overview.html", context)
