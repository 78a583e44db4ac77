"""The overview: counts, running instances, sequencers by state, workers, recent activity."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import BooleanField, Count, ExpressionWrapper, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from accounts.access import has_role
from accounts.models import AuditEntry
from dashboard.exposure import exposure_warnings, worker_warnings
from dashboard.views.common import role_page
from sequences import hubs
from sequences.models import LIVE_STATUSES, Instance, Sequence, Sequencer, Worker
from sequences.sequencers import heal

SEQUENCER_STATES = ("Idle", "Loaded", "Running", "Processing", "Offline", "Killed")


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
    return {
        "counts": {
            "sequences": Sequence.objects.count(),
            "instances": sum(by_status.values()),
            "running": sum(by_status.get(s, 0) for s in LIVE_STATUSES),
            "errored": by_status.get("errored", 0),
            "sequencers": sum(v for k, v in sequencer_states.items() if k != "Killed"),
        },
        "running": list(
            Instance.objects.filter(status__in=LIVE_STATUSES).order_by("-created")[:20]
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
