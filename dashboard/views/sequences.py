"""Sequence pages: list, upload (form and drag and drop), detail, delete, start."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.db.models import Count, Max, Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accounts.access import audit
from dashboard.forms import StartForm, UploadForm
from dashboard.views.common import HtmxHttpRequest, feedback, role_page
from sequences import catalog, instances
from sequences.errors import HubError
from sequences.models import LIVE_STATUSES, Instance, Sequence, Worker

GROUPS_PAGE = 50


def _group_cursor(latest: datetime, name: str) -> str:
    return f"{latest.isoformat()}~{name}"


def _parse_group_cursor(text: str) -> tuple[datetime, str] | None:
    when, sep, name = text.partition("~")  # an ISO time has no "~"; a name may
    try:
        return (datetime.fromisoformat(when), name) if sep else None
    except ValueError:
        return None


def _groups(params: dict[str, str]) -> dict[str, Any]:
    """Sequences grouped by name (every upload of a name is a version of it), the group with
    the newest upload first, a page of groups at a time (keyset on the newest upload, then
    the name), each group's versions newest first."""
    names = (
        Sequence.objects.values("name")
        .annotate(latest=Max("created"), versions=Count("id"))
        .order_by("-latest", "name")
    )
    if params.get("q"):
        names = names.filter(name__icontains=params["q"])
    after = _parse_group_cursor(params.get("next", ""))
    if after is not None:
        names = names.filter(Q(latest__lt=after[0]) | Q(latest=after[0], name__gt=after[1]))
    chosen = list(names[: GROUPS_PAGE + 1])
    more, chosen = len(chosen) > GROUPS_PAGE, chosen[:GROUPS_PAGE]
    versions = list(
        Sequence.objects.filter(name__in=[g["name"] for g in chosen])
        .defer("config", "files", "description")
        .select_related("uploaded_by")
        .order_by("-created")
    )
    # Instance counts in two grouped queries on Instance's own indexes, not a join of every
    # instance into the sequences query (which took seconds with 100 000 instances).
    ids = [seq.id for seq in versions]
    counted = Instance.objects.filter(sequence_id__in=ids).order_by().values("sequence_id")
    totals = dict(counted.annotate(n=Count("*")).values_list("sequence_id", "n"))
    # Live ones are few (bounded by the workers' places): found by status, counted here, so
    # the database does not walk every instance of these sequences to check its status.
    lives = Counter(
        Instance.objects.filter(status__in=LIVE_STATUSES, sequence_id__in=ids)
        .order_by()
        .values_list("sequence_id", flat=True)
    )
    by_name: dict[str, list[Sequence]] = {}
    for seq in versions:
        seq.n_instances = totals.get(seq.id, 0)  # type: ignore[attr-defined]
        seq.n_live = lives.get(seq.id, 0)  # type: ignore[attr-defined]
        by_name.setdefault(seq.name, []).append(seq)
    groups = []
    for g in chosen:
        rows = by_name.get(g["name"], [])
        if rows:
            groups.append(
                {
                    "name": g["name"],
                    "newest": rows[0],
                    "older": rows[1:],
                    "instances": sum(getattr(r, "n_instances", 0) for r in rows),
                    "live": sum(getattr(r, "n_live", 0) for r in rows),
                }
            )
    base = {"q": params["q"]} if params.get("q") else {}
    nxt = ""
    if more and chosen:
        last = chosen[-1]
        nxt = "?" + urlencode({**base, "next": _group_cursor(last["latest"], last["name"])})
    first = ("?" + urlencode(base)) if after is not None else ""
    return {
        "groups": groups,
        "page": {"next_url": nxt, "prev_url": "", "first_url": first},
        "q": params.get("q", ""),
    }


@require_GET
@role_page("viewer")
def sequence_list(request: HttpRequest) -> HttpResponse:
    params = {k: request.GET.get(k, "").strip()[:300] for k in ("q", "next")}
    return render(request, "sequences/list.html", _groups(params))


@require_POST
@role_page("admin")
def sequence_upload(request: HtmxHttpRequest) -> HttpResponse:
    """The same `catalog` calls as `POST /api/v1/sequence`, with the 422 reasons shown as text."""
    form = UploadForm(request.POST, request.FILES)
    fallback = reverse("sequences")
    if not form.is_valid():
        return feedback(request, "error", "Choose a .tar.gz package to upload.", fallback, 400)
    upload = form.cleaned_data["package"]
    try:
        path = catalog.spool_upload(upload.chunks(), upload.size)
        seq = catalog.add_sequence(path, request.user)
    except HubError as exc:
        audit(request.user, "sequence.upload", upload.name, outcome="refused", error=exc.message)
        return feedback(
            request, "error", f"{upload.name} was refused: {exc.message}", fallback, exc.status
        )
    audit(request.user, "sequence.upload", seq.id, name=seq.name, sha256=seq.sha256)
    text = f"Uploaded {seq.name or upload.name} {seq.version} as {seq.id}."
    same = catalog.same_package(seq)
    if same:
        first = same[0]
        messages.warning(
            request,
            f"This package is identical (same sha256) to sequence {first.id}, uploaded "
            f"{first.created:%Y-%m-%d %H:%M %Z}"
            + (f" and {len(same) - 1} more" if len(same) > 1 else "")
            + ": you may want to delete this copy and use that one.",
        )
    return _redirect_with(request, text, reverse("sequence", args=[seq.id]))


def _redirect_with(request: HttpRequest, text: str, url: str) -> HttpResponse:
    messages.success(request, text)
    return HttpResponseRedirect(url)


def _detail_context(seq: Sequence, form: StartForm | None = None) -> dict[str, Any]:
    declared = seq.config.get("args") if isinstance(seq.config.get("args"), list) else []
    slots = [str(v) if not isinstance(v, str) else v for v in declared]
    slots += [""] * max(1, 4 - len(slots))
    return {
        "seq": seq,
        "files": seq.files,
        "instances": list(seq.instances.order_by("-created")[:50]),
        "live": catalog.live_instance_ids(seq),
        "form": form or StartForm(),
        "arg_slots": [*form.arg_values, ""] if form is not None else slots,
        # For the start form's worker field: the names of the live workers.
        "workers": list(
            Worker.objects.filter(stopped__isnull=True)
            .order_by("name")
            .values_list("name", flat=True)
        ),
    }


@require_GET
@role_page("viewer")
def sequence_detail(request: HttpRequest, seq_id: str) -> HttpResponse:
    seq = _get(seq_id)
    if seq is None:
        return render(request, "404.html", {"what": f"Sequence {seq_id}"}, status=404)
    form = None
    again = seq.instances.filter(pk=request.GET.get("again", "")).first()
    if again is not None:
        # "Run again": the start form filled with that instance's args, appConfig, placement
        # and restart policy, to read (and change) before pressing Start.
        placed = again.placement or {}
        form = StartForm(
            initial={
                "args_mode": "json",
                "args_json": json.dumps(again.args),
                "app_config": json.dumps(again.app_config) if again.app_config else "",
                "labels": " ".join(placed.get("labels") or []),
                "worker": placed.get("worker") or "",
                "restart_policy": again.restart_policy or "never",
                "restart_max": again.restart_max if again.restart_policy != "never" else None,
                "restart_backoff": (
                    again.restart_backoff if again.restart_policy != "never" else None
                ),
            }
        )
    return render(request, "sequences/detail.html", _detail_context(seq, form))


def _get(seq_id: str) -> Sequence | None:
    try:
        return catalog.get_sequence(seq_id)
    except HubError:
        return None


@require_POST
@role_page("admin")
def sequence_delete(request: HtmxHttpRequest, seq_id: str) -> HttpResponse:
    seq = _get(seq_id)
    if seq is None:
        return feedback(
            request, "error", f"Sequence {seq_id} not found.", reverse("sequences"), 404
        )
    force = request.POST.get("force") in {"1", "on", "true"}
    try:
        catalog.delete_sequence(seq, force, stop_instances=instances.kill_and_wait)
    except HubError as exc:
        audit(request.user, "sequence.delete", seq_id, outcome="refused", error=exc.message)
        fallback = reverse("sequence", args=[seq_id])
        text = exc.message
        if exc.code == "SEQUENCE_IN_USE":
            # The API's message names its header; here the form's checkbox is the way.
            running = len(catalog.live_instance_ids(seq))
            text = (
                f"Sequence {seq.name or seq_id} has {running} running instance(s): tick "
                "“force: kill running instances first” and delete again, or stop them first."
            )
        return feedback(request, "error", text, fallback, exc.status)
    audit(request.user, "sequence.delete", seq_id, force=force)
    text = f"Deleted sequence {seq.name or seq_id}."
    return _redirect_with(request, text, reverse("sequences"))


_aget = sync_to_async(_get)
_arender_detail = sync_to_async(
    lambda request, seq, form, status: render(
        request, "sequences/detail.html", _detail_context(seq, form), status=status
    )
)
_aaudit = sync_to_async(audit)


@require_POST
@role_page("operator")
async def sequence_start(request: HtmxHttpRequest, seq_id: str) -> HttpResponse:
    """Validate args and appConfig as the API does, start, then go to the instance page.

    Async because the start waits for a worker to take the instance (up to HUB_START_TIMEOUT).
    """
    seq = await _aget(seq_id)
    if seq is None:
        return await sync_to_async(feedback)(
            request, "error", f"Sequence {seq_id} not found.", reverse("sequences"), 404
        )
    form = StartForm(request.POST)
    valid = await sync_to_async(form.is_valid)()
    user = await request.auser()
    if not valid or form.start_request is None:
        return await _arender_detail(request, seq, form, 422)
    try:
        instance = await instances.start(seq, form.start_request, user)
    except HubError as exc:
        await _aaudit(user, "instance.start", seq.id, outcome="refused", error=exc.message)
        form.add_error(None, f"The hub refused to start it: {exc.message}")
        return await _arender_detail(request, seq, form, exc.status)
    await _aaudit(
        user, "instance.start", instance.id, sequence=seq.id, args=form.start_request.args
    )
    text = f"Started instance {instance.id}."
    return await sync_to_async(_redirect_with)(
        request, text, reverse("instance", args=[instance.id])
    )
