"""The Workers page: one card per worker (its host, heartbeat, capacity, free places, load,
labels, sandbox, the instances and sequencers it runs) and, for admins, its Drain button."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accounts.access import audit
from dashboard.views.common import HtmxHttpRequest, feedback, role_page
from sequences import workers
from sequences.errors import HubError

CARD_INSTANCES = 30  # instances listed on a card; the count says how many more
GONE_SHOWN = 20


def list_context() -> dict[str, Any]:
    """What the page shows; the live consumer renders the same partial from it."""
    free = workers.free_places()
    cards, gone = [], []
    for worker in workers.list_workers():
        data = workers.describe(worker, free)
        if data["state"] in ("drained", "stopped"):
            gone.append(data)
            continue
        instances = workers.running_instances(worker).order_by("-created")
        cards.append(
            {
                **data,
                "instances": list(instances[:CARD_INSTANCES]),
                "instance_count": instances.count(),
                "sequencers": list(workers.running_sequencers(worker)),
                "load_pct": round((data["load"] or 0) * 100),
                "started_at": worker.started,
                "last_seen_at": worker.last_seen,
                "deadline_at": worker.drain_deadline,
            }
        )
    return {
        "cards": cards,
        "gone": gone[:GONE_SHOWN],
        "default_deadline": int(workers.DEFAULT_DRAIN_DEADLINE),
        "max_deadline": int(workers.MAX_DRAIN_DEADLINE),
    }


@require_GET
@role_page("viewer")
def worker_list(request: HtmxHttpRequest) -> HttpResponse:
    template = "workers/list.html"
    if request.htmx and request.GET.get("partial") == "cards":
        template += "#cards"
    return render(request, template, list_context())


_aaudit = sync_to_async(audit)


@require_POST
@role_page("admin")
async def worker_drain(request: HtmxHttpRequest, name: str) -> HttpResponse:
    """Async: it waits for the worker to take the drain."""
    fallback = reverse("workers")
    user = await request.auser()
    raw = request.POST.get("deadline", "").strip()
    try:
        await sync_to_async(workers.get_worker)(name)
        try:
            value: Any = float(raw) if raw else None
        except ValueError:
            value = raw
        deadline = workers.check_deadline(value)
        answer = await workers.drain(name, deadline)
    except HubError as exc:
        await _aaudit(user, "worker.drain", name, outcome="refused", error=exc.message)
        return await sync_to_async(feedback)(request, "error", exc.message, fallback, exc.status)
    await _aaudit(user, "worker.drain", name, deadline=deadline)
    text = (
        f"Draining {name}: it takes no more starts; its {answer['running']} instances may run "
        f"{deadline:g} s more, then are stopped, and it exits."
    )
    return await sync_to_async(feedback)(request, "ok", text, fallback)
