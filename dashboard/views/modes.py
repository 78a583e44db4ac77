"""Observations and Resources pages (ESW's engineering UI): observing modes with their status
and sequencers, configure and shutdown (operators), the configuration editor (admins), and
each resource in use or available."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accounts.access import audit
from dashboard.views.common import HtmxHttpRequest, feedback, role_page
from sequences import modes, notices
from sequences.errors import HubError

STATUS_ORDER = {modes.CONFIGURED: 0, modes.CONFIGURABLE: 1, modes.NON_CONFIGURABLE: 2}


def observations_context() -> dict[str, Any]:
    found = modes.list_modes()
    return {
        "modes": found,
        "counts": {s: sum(1 for m in found if m["status"] == s) for s in STATUS_ORDER},
    }


def resources_context() -> dict[str, Any]:
    found = modes.resources()
    return {"resources": found, "in_use": sum(1 for r in found if r["status"] == "InUse")}


@require_GET
@role_page("viewer")
def observations(request: HttpRequest) -> HttpResponse:
    context = observations_context()
    context["config"] = modes.get_config()
    return render(request, "modes/observations.html", context)


@require_GET
@role_page("viewer")
def resources_page(request: HttpRequest) -> HttpResponse:
    return render(request, "modes/resources.html", resources_context())


@require_POST
@role_page("admin")
def config_save(request: HtmxHttpRequest) -> HttpResponse:
    text = request.POST.get("source", "")
    fallback = reverse("observations")
    try:
        stored = modes.set_config(text, request.user)
    except HubError as exc:
        audit(request.user, "modes.config", "config", outcome="refused", error=exc.message)
        return feedback(request, "error", exc.message, fallback, exc.status)
    audit(request.user, "modes.config", "config", modes=list(stored["modes"]))
    names = ", ".join(stored["modes"]) or "none"
    return feedback(request, "ok", f"Configuration saved: modes {names}.", fallback)


_aaudit = sync_to_async(audit)


async def _answer(request: HtmxHttpRequest, level: str, text: str, status: int = 200) -> Any:
    # Every answer redraws the pages: a refusal changed nothing, but the buttons' user
    # should see the table as it is now.
    await notices.asend({"type": notices.MODES_CHANGED}, notices.MODES)
    return await sync_to_async(feedback)(request, level, text, reverse("observations"), status)


def _located(answer: dict[str, Any]) -> str:
    parts = []
    for entry in answer.get("sequencers") or []:
        seq = entry.get("sequencer") or {}
        parts.append(f"{entry['prefix']} in {seq.get('component')} on {seq.get('worker')}")
    return "; ".join(parts)


@require_POST
@role_page("operator")
async def mode_action(request: HtmxHttpRequest, name: str, action: str) -> HttpResponse:
    """configure or shutdown: async, as they wait for sequencer processes."""
    user = await request.auser()
    try:
        if action == "configure":
            answer = await modes.configure(name, user)
            text = f"{name} configured: {_located(answer)}."
        elif action == "shutdown":
            answer = await modes.shutdown(name, user)
            text = f"{name} shut down: its sequencers were unloaded and its resources freed."
        else:
            return await _answer(request, "error", f"Unknown action {action}.", 404)
    except HubError as exc:
        await _aaudit(user, f"mode.{action}", name, outcome="refused", error=exc.message)
        return await _answer(request, "error", f"{action} {name}: {exc.message}", exc.status)
    await _aaudit(user, f"mode.{action}", name)
    return await _answer(request, "ok", text)


@require_POST
@role_page("operator")
async def mode_restart(request: HtmxHttpRequest, prefix: str) -> HttpResponse:
    user = await request.auser()
    try:
        answer = await modes.restart(prefix, user)
    except HubError as exc:
        await _aaudit(user, "mode.restart", prefix, outcome="refused", error=exc.message)
        return await _answer(request, "error", f"restart {prefix}: {exc.message}", exc.status)
    await _aaudit(user, "mode.restart", prefix)
    seq = answer["sequencer"]
    text = f"{prefix} restarted: sequencer {seq['id']} {seq['state']} in {seq['component']}."
    return await _answer(request, "ok", text)
