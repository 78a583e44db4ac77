"""Sequencer pages: the live list, and one sequencer's step list, commands, history and log.

Buttons are enabled from the state the server shows (`sequencers.accepted_commands`, i.e.
`statemachine.accepts`), and every refusal the sequencer answers is shown as a sentence.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from accounts.access import audit
from dashboard.forms import StepsForm, first_error
from dashboard.views.common import HtmxHttpRequest, feedback, role_page
from dashboard.views.instances import first_with_lines, stream_windows
from sequences import modes, sequencers
from sequences.errors import HubError
from sequences.models import Sequencer
from sequences.statemachine import CommandName

# The buttons of the command bar, in the order operators expect them.
BUTTONS = [
    ("startSequence", "Start"),
    ("pause", "Pause"),
    ("resume", "Resume"),
    ("stop", "Stop"),
    ("abortSequence", "Abort"),
    ("reset", "Reset"),
    ("goOffline", "Go offline"),
    ("goOnline", "Go online"),
    ("operationsMode", "Operations mode"),
    ("shutdown", "Shutdown"),
]
WITH_STEPS = {"loadSequence", "submit", "add", "prepend"}
WITH_ID_AND_STEPS = {"replace", "insertAfter"}
WITH_ID = {"delete", "addBreakpoint", "removeBreakpoint"}
# Page commands made of API commands: "duplicate" is insertAfter with a copy of the step;
# "stepThrough" (ESW's Step) runs the next pending step and pauses before the one after it;
# "reload" loads the finished (or failed) list again, with fresh step ids.
PAGE_ONLY = {"duplicate", "stepThrough", "reload"}
# The editor's buttons, each enabled when the shown state accepts the command it sends.
EDITOR_BUTTONS = [
    ("loadSequence", "Load", "primary"),
    ("submit", "Load and start", ""),
    ("add", "Add at end", ""),
    ("prepend", "Prepend", ""),
    ("insertAfter", "Insert after target", ""),
    ("replace", "Replace target", ""),
]


def list_context() -> dict[str, Any]:
    rows = sequencers.list_sequencers()
    live = [r for r in rows if r.state != "Killed"]
    killed = [r for r in rows if r.state == "Killed"][:50]
    return {"sequencers": live, "killed": killed}


@require_GET
@role_page("viewer")
def sequencer_list(request: HttpRequest) -> HttpResponse:
    return render(request, "sequencers/list.html", list_context())


def _with_durations(row: Sequencer, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each step with how long it ran (`took`, finished steps) or since when (`since`)."""
    times = {r.step_id: (r.started, r.ended) for r in row.steps.only("step_id", "started", "ended")}
    shown = []
    for step in steps:
        started, ended = times.get(step["id"], (None, None))
        extra: dict[str, Any] = {}
        if started is not None and ended is not None:
            extra["took"] = _took((ended - started).total_seconds())
        elif started is not None:
            extra["since"] = started
        shown.append({**step, **extra})
    return shown


def _took(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def _page_commands(accepted: set[str], steps: list[dict[str, Any]]) -> dict[str, bool]:
    pending = [s for s in steps if s["status"] == "Pending"]
    finished = bool(steps) and not pending and all(s["status"] != "InFlight" for s in steps)
    return {
        # At a breakpoint (or paused) with something left to run: release one step.
        "stepThrough": "resume" in accepted and bool(pending) and pending[0]["hasBreakpoint"],
        "reload": "loadSequence" in accepted and finished,
    }


def _paused_before(state: str, steps: list[dict[str, Any]]) -> int | None:
    """The 1-based number of the step a running list waits before (its breakpoint), if any:
    "Running" alone would hide that nothing runs."""
    if state != "Running" or any(s["status"] == "InFlight" for s in steps):
        return None
    for number, step in enumerate(steps, 1):
        if step["status"] == "Pending":
            return number if step["hasBreakpoint"] else None
    return None


def detail_context(row: Sequencer) -> dict[str, Any]:
    data = sequencers.describe(row)
    accepted = set(sequencers.accepted_commands(row))
    steps = _with_durations(row, data.get("stepList") or [])
    page = _page_commands(accepted, steps)
    return {
        "sq": row,
        "data": data,
        "state": data["state"],
        "steps": steps,
        "pending_ids": [s["id"] for s in steps if s["status"] == "Pending"],
        "accepted": accepted,
        "buttons": [(name, label, name in accepted) for name, label in BUTTONS],
        "editor_buttons": [(n, label, cls, n in accepted) for n, label, cls in EDITOR_BUTTONS],
        "can_step": page["stepThrough"],
        "paused_before": _paused_before(data["state"], steps),
        "can_reload": page["reload"],
        "can_edit": "add" in accepted,
        "can_load": "loadSequence" in accepted,
        "history": sequencers.transitions(row, limit=100)[::-1],
        "links": sequencers.links(row),
        "mode": modes.mode_of(row.id),
    }


def _get(ident: str) -> Sequencer | None:
    try:
        return sequencers.get_sequencer(ident)
    except HubError:
        return None


@require_GET
@role_page("viewer")
def sequencer_detail(request: HttpRequest, ident: str) -> HttpResponse:
    row = _get(ident)
    if row is None:
        return render(request, "404.html", {"what": f"Sequencer {ident}"}, status=404)
    context = detail_context(row)
    if row.instance_id:
        context["panes"] = stream_windows(row.instance_id)
        context["open_pane"] = first_with_lines(context["panes"])
        context["zone"] = timezone.get_current_timezone_name()
        context["instance"] = row.instance
    return render(request, "sequencers/detail.html", context)


def explain(answer: dict[str, Any]) -> tuple[str, str]:
    """A typed sequencer answer as (level, sentence)."""
    kind = answer.get("type", "")
    if kind == "Ok":
        return "ok", "Ok."
    if kind == "Started":
        return "ok", f"Started run {answer.get('runId', '')}."
    if kind == "Unhandled":
        return "error", f"Refused: {answer.get('msg') or 'not accepted in this state'}."
    if kind == "IdDoesNotExist":
        return "error", f"Refused: there is no step with id {answer.get('id')}."
    if kind == "CannotOperateOnAnInFlightOrFinishedStep":
        return "error", "Refused: that step is in flight or finished; only pending steps change."
    if kind.endswith("HookFailed"):
        return "error", f"{kind}: the script's handler failed: {answer.get('msg', '')}"
    return "ok" if kind else "error", f"{kind or 'Answer'}: {answer}"


def build_body(name: str, form: StepsForm, row: Sequencer) -> tuple[str, Any]:
    """The command and body the API would get for this form; ValueError says what is missing."""
    data = form.cleaned_data
    step_id = data.get("step_id") or ""
    commands = data.get("commands")
    if name == "reload":
        steps = sequencers.describe(row).get("stepList") or []
        if not steps:
            raise ValueError("there is no step list to load again")
        again = [{"type": s["type"], "command": s["command"], "params": s["params"]} for s in steps]
        return "loadSequence", {"commands": again}
    if name == "stepThrough":
        return "resume", None  # the breakpoint after the next step is set first (step_through)
    if name in PAGE_ONLY:
        steps = sequencers.describe(row).get("stepList") or []
        step = next((s for s in steps if s["id"] == step_id), None)
        if step is None:
            raise ValueError(f"there is no step with id {step_id}")
        copy = {"type": step["type"], "command": step["command"], "params": step["params"]}
        return "insertAfter", {"id": step_id, "commands": [copy]}
    if name in WITH_STEPS | WITH_ID_AND_STEPS and not commands:
        raise ValueError("give the steps as JSON (or a .json file) first")
    if name in (WITH_ID_AND_STEPS | WITH_ID) and not step_id:
        raise ValueError("choose the step it applies to")
    if name in WITH_STEPS:
        return name, {"commands": commands}
    if name in WITH_ID_AND_STEPS:
        return name, {"id": step_id, "commands": commands}
    if name in WITH_ID:
        return name, {"id": step_id}
    return name, None


_aget = sync_to_async(_get)
_aaudit = sync_to_async(audit)
_adescribe = sync_to_async(sequencers.describe)


async def _break_after_next(row: Sequencer, user: Any) -> str | None:
    """Step through: a breakpoint on the pending step after the next one, so that resuming
    runs exactly one step and pauses again (nothing to set when only one step is left)."""
    steps = (await _adescribe(row)).get("stepList") or []
    pending = [s for s in steps if s["status"] == "Pending"]
    if not pending or not pending[0]["hasBreakpoint"]:
        return "the sequencer is not paused before a step"
    if len(pending) < 2 or pending[1]["hasBreakpoint"]:
        return None
    body = {"id": pending[1]["id"]}
    response, _ = await sequencers.command(row, "addBreakpoint", body, user)
    await _aaudit(user, "sequencer.addBreakpoint", row.prefix, answer=response, via_step=True)
    if response.get("type") != "Ok":
        return explain(response)[1]
    return None


@require_POST
@role_page("operator")
async def sequencer_command(request: HtmxHttpRequest, ident: str, name: str) -> HttpResponse:
    """One command, answered inline (htmx) or by a message on the page (plain POST)."""
    row = await _aget(ident)
    fallback = reverse("sequencer", args=[ident])

    async def answer(level: str, text: str, status: int = 200) -> HttpResponse:
        return await sync_to_async(feedback)(request, level, text, fallback, status)

    if row is None:
        return await answer("error", f"Sequencer {ident} not found.", 404)
    known = {str(c) for c in CommandName} | PAGE_ONLY
    if name not in known:
        return await answer("error", f"Unknown command {name}.", 404)
    form = StepsForm(request.POST, request.FILES)
    if not await sync_to_async(form.is_valid)():
        return await answer("error", first_error(form), 400)
    try:
        command, body = await sync_to_async(build_body)(name, form, row)
    except ValueError as exc:
        return await answer("error", f"{name}: {exc}.", 400)
    user = await request.auser()
    if name == "stepThrough":
        refusal = await _break_after_next(row, user)
        if refusal is not None:
            return await answer("error", f"stepThrough: {refusal}", 409)
    try:
        response, status = await sequencers.command(row, command, body, user)
    except HubError as exc:
        await _aaudit(
            user, f"sequencer.{command}", row.prefix, outcome="refused", error=exc.message
        )
        return await answer("error", f"{command}: {exc.message}", exc.status)
    level, text = explain(response)
    outcome = "ok" if level == "ok" else "refused"
    await _aaudit(user, f"sequencer.{command}", row.prefix, outcome=outcome, answer=response)
    return await answer(level, f"{command}: {text}", status)
