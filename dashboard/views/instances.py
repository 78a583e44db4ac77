"""Instance pages: the filterable list, and the live console of one instance."""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import urlencode

from asgiref.sync import sync_to_async
from django import forms
from django.db.models import Q
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    StreamingHttpResponse,
)
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import push_url

from accounts.access import actor_name, audit
from core.protocol import Ending
from dashboard import charts, logs, search
from dashboard.forms import EventForm, InputForm, StopForm, first_error
from dashboard.paging import keyset_page
from dashboard.views.common import HtmxHttpRequest, feedback, role_page
from sequences import instances, outcomes, resources
from sequences.errors import HubError
from sequences.models import LIVE_STATUSES, Instance, InstanceEvent, InstanceStatus, Sequence

LIST_LIMIT = 100
KILL_AUDIT_WAIT = 3.0  # s the kill waits for the end, to audit the outcome
LIST_PARAMS = ("status", "outcome", "sequence", "q", "order", "next", "prev")
LIST_COLUMNS: tuple[str, ...] = ("id", "sequence", "sequence_name", "kind", "status")
# exit code, reason and ended_by: a row's outcome badge is derived from them.
LIST_COLUMNS += ("exit_code", "reason", "ended_by", "created", "started", "ended")


def list_params(query: Any) -> dict[str, str]:
    """The list's filters, search, order and page from a query string (a QueryDict or the
    parsed query of a socket's URL), so the page, its links and its socket agree."""
    found = {}
    for name in LIST_PARAMS:
        value = query.get(name, "")
        value = value[0] if isinstance(value, list) else value
        found[name] = str(value or "").strip()[:200]
    return found


def list_context(params: dict[str, str]) -> dict[str, Any]:
    status, sequence, q = params.get("status", ""), params.get("sequence", ""), params.get("q", "")
    # Only what a row shows: the JSON columns (args, appConfig, limits) cost a decode each.
    rows = Instance.objects.only(*LIST_COLUMNS)
    if status == "live":
        rows = rows.filter(status__in=LIVE_STATUSES)
    elif status:
        rows = rows.filter(status=status)
    outcome = params.get("outcome", "")
    if outcome in Ending.ALL:
        rows = rows.filter(outcomes.outcome_q(outcome))
    else:
        outcome = ""  # an outcome the hub does not know filters nothing (as the form shows)
    if sequence:
        rows = rows.filter(Q(sequence_id=sequence) | Q(sequence_name=sequence))
    if q:
        # An id (or its start, as the list shows it) or a part of the sequence's name.
        rows = rows.filter(Q(id__startswith=q) | Q(sequence_name__icontains=q))
    oldest = params.get("order") == "oldest"
    page = keyset_page(rows, params, size=LIST_LIMIT, ascending=oldest)
    return {
        "instances": page.rows,
        "page": page,
        "limit": LIST_LIMIT,
        "status": status,
        "outcome": outcome,
        "outcomes": Ending.ALL,
        "sequence": sequence,
        "q": q,
        "order": "oldest" if oldest else "newest",
        "query": urlencode({k: v for k, v in params.items() if v}),
        "filtered": bool(status or outcome or sequence or q),
        "statuses": ["live", *InstanceStatus.values],
        "sequences": list(Sequence.objects.order_by("name").values_list("id", "name")[:500]),
    }


@require_GET
@role_page("viewer")
def instance_list(request: HtmxHttpRequest) -> HttpResponse:
    context = list_context(list_params(request.GET))
    # The filter form and the page links ask htmx for the rows only (the same template's
    # partial), and the address bar follows, so a reload or a shared link shows the same list.
    if request.htmx and request.htmx.target == "rows":
        response = render(request, "instances/list.html#rows", context)
        push_url(
            response, reverse("instances") + (f"?{context['query']}" if context["query"] else "")
        )
        return response
    return render(request, "instances/list.html", context)


def _get(iid: str) -> Instance | None:
    try:
        return instances.get_instance(iid)
    except HubError:
        return None


def stream_windows(iid: str) -> list[dict[str, Any]]:
    """The last lines of every stream, as the page (and a reconnecting socket) shows them."""
    panes = []
    for stream in logs.STREAMS:
        window = logs.tail(iid, stream)
        pending = (
            logs.render_lines([window.pending], window.times, stream) if window.pending[1] else []
        )
        panes.append(
            {
                "name": stream,
                "lines": logs.render_lines(window.lines, window.times, stream),
                "earlier": logs.place_text(window.earlier) if window.earlier else "",
                "partial": pending[0] if pending else None,
                "window": window,
            }
        )
    return panes


def first_with_lines(panes: list[dict[str, Any]]) -> str:
    """The tab the page opens on: the first stream that has something to show."""
    for pane in panes:
        if pane["lines"] or pane["partial"]:
            return str(pane["name"])
    return str(panes[0]["name"]) if panes else ""


def status_context(instance: Instance) -> dict[str, Any]:
    return {
        "instance": instance,
        "events": list(InstanceEvent.objects.filter(instance_id=instance.id).order_by("-id")[:20]),
    }


def resources_context(
    instance: Instance, samples: list[resources.Sample] | None = None
) -> dict[str, Any]:
    """The instance's CPU and memory charts and its uptime (the page and its socket)."""
    if samples is None:
        samples = resources.read_samples(instance.id)
    uptime = ""
    if instance.started:
        end = instance.ended or timezone.now()
        uptime = charts.fmt_uptime((end - instance.started).total_seconds())
    if len(samples) == 1:
        note = "1 sample so far"
    elif samples:
        note = f"{len(samples)} samples, one every {charts.fmt_seconds(_gap(samples))} or so"
    elif instance.is_live:
        note = "The first sample comes within a few seconds of the start."
    else:
        note = "No samples kept: they go an hour after the instance ends (HUB_RESOURCE_RETENTION)."
    return {
        "instance": instance,
        "uptime": uptime,
        "cpu": charts.sparkline(samples, "cpu", "cpu", "percent"),
        "rss": charts.sparkline(samples, "rss", "rss", "bytes"),
        "samples": samples,
        "samples_note": note,
    }


def _gap(samples: list[resources.Sample]) -> float:
    recent = samples[-10:]
    return (recent[-1].at - recent[0].at) / max(len(recent) - 1, 1)


@require_GET
@role_page("viewer")
def instance_detail(request: HttpRequest, iid: str) -> HttpResponse:
    instance = _get(iid)
    if instance is None:
        return render(request, "404.html", {"what": f"Instance {iid}"}, status=404)
    context = status_context(instance)
    context.update(resources_context(instance))
    panes = stream_windows(iid)
    context.update(
        panes=panes,
        open_pane=first_with_lines(panes),
        search_streams=logs.STREAMS,
        zone=timezone.get_current_timezone_name(),
    )
    return render(request, "instances/detail.html", context)


@require_GET
@role_page("viewer")
def log_earlier(request: HtmxHttpRequest, iid: str, stream: str) -> HttpResponse:
    """The lines before a place: htmx prepends them; without JS it is a page of its own."""
    if stream not in logs.STREAMS:
        return HttpResponseBadRequest("unknown stream")
    place = logs.parse_place(request.GET.get("at", ""))
    instance = _get(iid)
    if instance is None or place is None:
        return HttpResponseBadRequest("unknown instance or place (at=SEQ:OFFSET)")
    window = logs.earlier(iid, stream, place)
    context = {
        "instance": instance,
        "stream": stream,
        "lines": logs.render_lines(window.lines, window.times, stream),
        "earlier": logs.place_text(window.earlier) if window.earlier else "",
    }
    if request.htmx:
        return render(request, "instances/_earlier.html", context)
    return render(request, "instances/earlier_page.html", context)


@require_GET
@role_page("viewer")
def log_download(request: HttpRequest, iid: str, stream: str) -> HttpResponseBase:
    """The whole stream, raw bytes (ANSI codes kept), as stored."""
    if stream not in logs.STREAMS or _get(iid) is None:
        return HttpResponseBadRequest("unknown instance or stream")
    response = StreamingHttpResponse(logs.raw_chunks(iid, stream), content_type="text/plain")
    response["Content-Disposition"] = f'attachment; filename="{iid}-{stream}.log"'
    return response


@require_GET
@role_page("viewer")
async def log_search(request: HtmxHttpRequest, iid: str) -> HttpResponse:
    """Server-side search over the whole stream, not only the lines on screen: linear in the
    stream, bounded in time, results and searches at once (dashboard/search.py)."""
    stream = request.GET.get("stream", "stdout")
    needle = request.GET.get("q", "")
    instance = await _aget(iid)
    if stream not in logs.STREAMS or instance is None:
        return HttpResponseBadRequest("unknown instance or stream")
    context: dict[str, Any] = {"instance": instance, "stream": stream, "q": needle}
    status = 200
    if needle:
        try:
            result = await search.search(iid, stream, needle)
        except search.BadNeedle as exc:
            context["refused"], status = str(exc), 400
        except search.SearchBusy as exc:
            context["refused"], status = str(exc), 429
        else:
            context.update(result=result, results=_search_lines(result.found))
    template = "instances/search.html"
    if request.htmx:
        template += "#results"
    response = await sync_to_async(render)(request, template, context, status=status)
    if status == 429:
        response["Retry-After"] = "2"
    return response


def _search_lines(found: list[search.Found]) -> list[dict[str, Any]]:
    rendered = logs.render_lines(((0, 0), f.text.encode()) for f in found)
    return [
        {"number": f.number, "html": line.html, "before": f.cut_before, "after": f.cut_after}
        for f, line in zip(found, rendered, strict=True)
    ]


# -- actions: each answers inline for htmx, or with a message and a redirect without JS ------

_aget = sync_to_async(_get)
_aaudit = sync_to_async(audit)
_F = TypeVar("_F", bound=forms.Form)


async def _afeedback(
    request: HtmxHttpRequest, iid: str, level: str, text: str, status: int = 200
) -> HttpResponse:
    return await sync_to_async(feedback)(
        request, level, text, reverse("instance", args=[iid]), status
    )


async def _instance_or_404(request: HtmxHttpRequest, iid: str) -> Instance | HttpResponse:
    instance = await _aget(iid)
    if instance is None:
        return await _afeedback(request, iid, "error", f"Instance {iid} not found.", 404)
    return instance


async def _instance_and_form(
    request: HtmxHttpRequest, iid: str, form_class: type[_F]
) -> tuple[Instance, _F] | HttpResponse:
    """The instance and its posted form, valid; or the feedback saying what is wrong."""
    found = await _instance_or_404(request, iid)
    if isinstance(found, HttpResponse):
        return found
    form = form_class(request.POST)
    if not form.is_valid():
        return await _afeedback(request, iid, "error", first_error(form), 400)
    return found, form


@require_POST
@role_page("operator")
async def instance_input(request: HtmxHttpRequest, iid: str) -> HttpResponse:
    posted = await _instance_and_form(request, iid, InputForm)
    if isinstance(posted, HttpResponse):
        return posted
    found, form = posted
    stream = form.cleaned_data["stream"]
    text = form.cleaned_data["text"] or ""
    if form.cleaned_data["newline"] and text and not text.endswith("\n"):
        text += "\n"
    end = bool(form.cleaned_data["end"])
    user = await request.auser()
    try:
        await instances.send_input(found, stream, [text.encode()], "text/plain", end)
    except HubError as exc:
        return await _afeedback(request, iid, "error", exc.message, exc.status)
    await _aaudit(user, f"instance.{stream}", iid, bytes=len(text.encode()), end=end)
    closed = " and closed it" if end else ""
    return await _afeedback(
        request, iid, "ok", f"Sent {len(text.encode())} bytes to {stream}{closed}."
    )


@require_POST
@role_page("operator")
async def instance_event(request: HtmxHttpRequest, iid: str) -> HttpResponse:
    posted = await _instance_and_form(request, iid, EventForm)
    if isinstance(posted, HttpResponse):
        return posted
    found, form = posted
    name = form.cleaned_data["name"]
    user = await request.auser()
    try:
        await instances.send_event(found, name, form.cleaned_data["message"])
    except HubError as exc:
        return await _afeedback(request, iid, "error", exc.message, exc.status)
    await _aaudit(user, "instance.event", iid, event=name)
    return await _afeedback(request, iid, "ok", f"Sent event '{name}'.")


@require_POST
@role_page("operator")
async def instance_stop(request: HtmxHttpRequest, iid: str) -> HttpResponse:
    """Waits (async) until the instance ended or the timeout passed, then says which."""
    posted = await _instance_and_form(request, iid, StopForm)
    if isinstance(posted, HttpResponse):
        return posted
    found, form = posted
    timeout = form.cleaned_data["timeout"]
    timeout = 7000 if timeout is None else timeout
    user = await request.auser()
    try:
        after = await instances.stop(
            found, timeout, bool(form.cleaned_data["keepalive"]), by=actor_name(user)
        )
    except HubError as exc:
        return await _afeedback(request, iid, "error", exc.message, exc.status)
    await _aaudit(user, "instance.stop", iid, timeout=timeout, ended=after.outcome or after.status)
    if after.is_live:
        text = f"Asked it to stop; after {timeout} ms it is {after.status}."
    else:
        text = f"Ended {after.outcome}: {after.reason or 'no reason given'}."
    return await _afeedback(request, iid, "ok", text)


@require_POST
@role_page("operator")
async def instance_kill(request: HtmxHttpRequest, iid: str) -> HttpResponse:
    found = await _instance_or_404(request, iid)
    if isinstance(found, HttpResponse):
        return found
    user = await request.auser()
    try:
        await instances.kill(found, by=actor_name(user))
    except HubError as exc:
        return await _afeedback(request, iid, "error", exc.message, exc.status)
    # A kill ends it in milliseconds: wait that long, so the audit entry says the outcome.
    ended = await instances.outcome_after(iid, KILL_AUDIT_WAIT)
    await _aaudit(user, "instance.kill", iid, ended=ended)
    return await _afeedback(
        request, iid, "ok", f"Killed: SIGKILL sent to its whole process group; it ended {ended}."
    )
