"""Sequence component pages: create, load a script, unload, restart, status (admin acts)."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accounts.access import audit
from dashboard.views.common import HtmxHttpRequest, feedback, role_page
from sequences import notices, sequencers
from sequences.errors import HubError
from sequences.models import Sequence


def list_context() -> dict[str, Any]:
    comps = sequencers.list_components()
    rows = []
    for comp in comps:
        rows.append({"comp": comp, "hosted": sequencers.hosted_now(comp)})
    scripts = Sequence.objects.filter(language="python").values_list("id", "name", "version")
    return {"components": rows, "scripts": list(scripts[:200])}


@require_GET
@role_page("viewer")
def component_list(request: HttpRequest) -> HttpResponse:
    return render(request, "components/list.html", list_context())


@require_POST
@role_page("admin")
def component_create(request: HtmxHttpRequest) -> HttpResponse:
    name = request.POST.get("name", "").strip()
    fallback = reverse("components")
    try:
        comp = sequencers.create_component(name)
    except HubError as exc:
        audit(request.user, "component.create", name, outcome="refused", error=exc.message)
        return feedback(request, "error", exc.message, fallback, exc.status)
    audit(request.user, "component.create", comp.name)
    # create_component has told the components pages (sequencers.announce_component).
    return feedback(request, "ok", f"Created sequence component {comp.name} (Idle).", fallback)


def _explain(answer: dict[str, Any]) -> tuple[str, str]:
    kind = answer.get("type", "")
    if kind == "SequencerLocation":
        seq = answer.get("sequencer") or {}
        return "ok", f"Loaded: sequencer {seq.get('prefix', '')} is {seq.get('state', 'Idle')}."
    if kind == "Ok":
        return "ok", "Ok."
    if kind == "LoadingScriptFailed":
        return "error", f"Loading the script failed: {answer.get('msg', '')}"
    if kind == "Unhandled":
        return "error", f"Refused: {answer.get('msg') or 'not accepted in this state'}."
    return "error", f"{kind}: {answer}"


_aaudit = sync_to_async(audit)


@require_POST
@role_page("admin")
async def component_action(request: HtmxHttpRequest, name: str, action: str) -> HttpResponse:
    """load-script, unload-script, restart: async, as they wait for a sequencer process."""
    fallback = reverse("components")

    async def answer(level: str, text: str, status: int = 200) -> HttpResponse:
        # Every answer redraws the components pages: the domain announces only the commands
        # it finished, not one an error cut short.
        await notices.asend({"type": notices.COMPONENTS_CHANGED}, notices.COMPONENTS)
        return await sync_to_async(feedback)(request, level, text, fallback, status)

    try:
        comp = await sequencers.aget_component(name)
    except HubError as exc:
        return await answer("error", exc.message, exc.status)
    user = await request.auser()
    try:
        if action == "load-script":
            sequence = request.POST.get("sequence", "")
            prefix = request.POST.get("prefix", "").strip()
            response, status = await sequencers.load_script(comp, sequence, prefix, user)
        elif action == "unload-script":
            response, status = await sequencers.unload_script(comp, user)
        elif action == "restart":
            response, status = await sequencers.restart(comp, user)
        else:
            return await answer("error", f"Unknown action {action}.", 404)
    except HubError as exc:
        await _aaudit(user, f"component.{action}", name, outcome="refused", error=exc.message)
        return await answer("error", f"{action}: {exc.message}", exc.status)
    level, text = _explain(response)
    outcome = "ok" if level == "ok" else "refused"
    await _aaudit(user, f"component.{action}", name, outcome=outcome, answer=response.get("type"))
    return await answer(level, f"{name} {action}: {text}", status)
