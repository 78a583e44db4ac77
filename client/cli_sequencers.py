"""`si sequencer` and `si component` commands (docs/scripts.md, docs/api.md)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.cli_output import key_values, short_time, table

if TYPE_CHECKING:
    from client.cli import Commands, Context
    from client.sync import SequencerClient


def read_steps(text: str) -> Any:
    """Steps from `-` (standard input), a JSON file, or JSON text: a list of
    `{type, command, params}` or `{"commands": [...]}`."""
    if text == "-":
        raw = sys.stdin.read()
    elif text.lstrip()[:1] in ("[", "{"):
        raw = text
    else:
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"{text} is neither a JSON step list nor a file holding one")
        raw = path.read_text(encoding="utf-8")
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"the step list is not valid JSON: {exc}") from None
    if not isinstance(value, list | dict):
        raise ValueError("the step list must be a JSON array of {type, command, params}")
    return value


def answer_line(answer: Any) -> str:
    """A typed answer in a few words: `Ok`, `Started run R`, `Completed run R`, ..."""
    if not isinstance(answer, dict):
        return json.dumps(answer)
    kind = answer.get("type", "")
    if kind == "SequencerLocation":
        s = answer.get("sequencer") or {}
        return f"sequencer {s.get('prefix')} ({s.get('id')}) {s.get('state')}"
    parts = [str(kind)]
    if answer.get("runId"):
        parts.append(f"run {answer['runId']}")
    if answer.get("msg"):
        parts.append(f"- {answer['msg']}")
    return " ".join(parts)


def steps_table(steps: list[dict[str, Any]] | None) -> str:
    if not steps:
        return "(no step list)"
    rows = [
        [
            s.get("id"),
            s.get("type"),
            s.get("command"),
            s.get("status"),
            "*" if s.get("hasBreakpoint") else "",
            s.get("message") or "",
        ]
        for s in steps
    ]
    return table(rows, ["STEP", "TYPE", "COMMAND", "STATUS", "BP", "MESSAGE"])


def sequencer_text(d: dict[str, Any]) -> str:
    script = d.get("script") or {}
    head = key_values(
        {**d, "script": f"{script.get('name')} ({script.get('id')})"},
        ["id", "prefix", "state", "runId", "isOnline", "isAvailable", "script", "component"],
    )
    return head + "\n\n" + steps_table(d.get("stepList"))


def _seqr(ctx: Context) -> SequencerClient:
    return ctx.host.get_sequencer_client(ctx.args.id)


def sequencer_ls(ctx: Context) -> None:
    def human(items: list[dict[str, Any]]) -> str:
        rows = [
            [
                s.get("id"),
                s.get("prefix"),
                s.get("state"),
                (s.get("script") or {}).get("name"),
                s.get("component") or "",
                len(s.get("stepList") or []),
            ]
            for s in items
        ]
        return table(rows, ["ID", "PREFIX", "STATE", "SCRIPT", "COMPONENT", "STEPS"])

    ctx.out.show(ctx.host.list_sequencers(), human)


def sequencer_info(ctx: Context) -> None:
    ctx.out.show(_seqr(ctx).get_info(), sequencer_text)


def _simple(method: str) -> Any:
    def handler(ctx: Context) -> None:
        ctx.out.show(getattr(_seqr(ctx), method)(), answer_line)

    return handler


def _with_steps(method: str) -> Any:
    def handler(ctx: Context) -> None:
        ctx.out.show(getattr(_seqr(ctx), method)(read_steps(ctx.args.steps)), answer_line)

    return handler


def _at_step_with_steps(method: str) -> Any:
    def handler(ctx: Context) -> None:
        answer = getattr(_seqr(ctx), method)(ctx.args.step, read_steps(ctx.args.steps))
        ctx.out.show(answer, answer_line)

    return handler


def _at_step(method: str) -> Any:
    def handler(ctx: Context) -> None:
        ctx.out.show(getattr(_seqr(ctx), method)(ctx.args.step), answer_line)

    return handler


def sequencer_diagnostic(ctx: Context) -> None:
    start = ctx.args.start_time or datetime.now(UTC).isoformat()
    ctx.out.show(_seqr(ctx).diagnostic_mode(start, ctx.args.hint), answer_line)


def sequencer_query(ctx: Context) -> None:
    ctx.out.show(_seqr(ctx).query(ctx.args.run_id), answer_line)


def sequencer_query_final(ctx: Context) -> None:
    ctx.out.show(_seqr(ctx).query_final(ctx.args.run_id, ctx.args.timeout), answer_line)


def _answer_type(value: Any) -> str:
    return str(value.get("type", "")) if isinstance(value, dict) else str(value or "")


def sequencer_transitions(ctx: Context) -> None:
    def human(items: list[dict[str, Any]]) -> str:
        rows = [
            [
                short_time(t.get("time")),
                t.get("command"),
                t.get("from"),
                t.get("to"),
                _answer_type(t.get("response")),
                (t.get("upstream") or {}).get("prefix") or t.get("user") or "",
            ]
            for t in items
        ]
        return table(rows, ["TIME", "COMMAND", "FROM", "TO", "ANSWER", "BY"])

    ctx.out.show(_seqr(ctx).get_transitions(ctx.args.limit), human)


def sequencer_links(ctx: Context) -> None:
    def human(links: dict[str, Any]) -> str:
        rows = [["upstream", u["prefix"], u["state"]] for u in [links.get("upstream")] if u]
        rows += [["downstream", d["prefix"], d["state"]] for d in links.get("downstreams", [])]
        return table(rows, ["LINK", "PREFIX", "STATE"]) if rows else "no upstream, no downstreams"

    ctx.out.show(_seqr(ctx).get_links(), human)


def sequencer_events(ctx: Context) -> None:
    for change in _seqr(ctx).get_events():
        if ctx.out.as_json:
            print(json.dumps(change), flush=True)
        else:
            steps = change.get("stepList") or []
            done = sum(1 for s in steps if s.get("status") in ("Success", "Failure"))
            print(f"{change.get('state')}  {done}/{len(steps)} steps done", flush=True)


# components


def component_ls(ctx: Context) -> None:
    def human(items: list[dict[str, Any]]) -> str:
        rows = [
            [c.get("name"), c.get("state"), (c.get("sequencer") or {}).get("prefix", "")]
            for c in items
        ]
        return table(rows, ["NAME", "STATE", "SEQUENCER"])

    ctx.out.show(ctx.host.list_components(), human)


def component_create(ctx: Context) -> None:
    comp = ctx.host.create_component(ctx.args.name)
    ctx.out.show({"name": comp.name}, f"created {comp.name}")


def component_load(ctx: Context) -> None:
    comp = ctx.host.get_component_client(ctx.args.name)
    seq_id = ctx.ref("sequence", ctx.args.sequence)
    ctx.out.show(comp.load_script(seq_id, ctx.args.prefix), answer_line)


def component_unload(ctx: Context) -> None:
    ctx.out.show(ctx.host.get_component_client(ctx.args.name).unload_script(), answer_line)


def component_restart(ctx: Context) -> None:
    ctx.out.show(ctx.host.get_component_client(ctx.args.name).restart(), answer_line)


def component_status(ctx: Context) -> None:
    def human(d: dict[str, Any]) -> str:
        s = d.get("sequencer") or {}
        hosted = f"{s.get('prefix')} ({s.get('state')})" if s else "none"
        return f"{d.get('name')}  {d.get('state')}  sequencer: {hosted}"

    ctx.out.show(ctx.host.get_component_client(ctx.args.name).get_status(), human)


SIMPLE = [
    ("start", "start_sequence", "run the loaded step list"),
    ("pause", "pause", "pause before the next pending step"),
    ("resume", "resume", "resume after a pause"),
    ("stop", "stop", "stop: the stop handler runs, pending steps are dropped"),
    ("abort", "abort_sequence", "abort: the abort handler runs, pending steps are dropped"),
    ("go-offline", "go_offline", "go offline (Idle or Loaded)"),
    ("go-online", "go_online", "go back online (Offline → Idle)"),
    ("operations-mode", "operations_mode", "run the operations-mode handler"),
    ("shutdown", "shutdown", "end the sequencer for good (→ Killed)"),
    ("reset", "reset", "drop the pending steps"),
]
WITH_STEPS = [
    ("load", "load_sequence", "load a step list"),
    ("submit", "submit", "load a step list and start it"),
    ("add", "add", "append steps"),
    ("prepend", "prepend", "put steps before the pending ones"),
]
AT_STEP_WITH_STEPS = [
    ("replace", "replace", "replace a pending step with these steps"),
    ("insert-after", "insert_after", "insert steps after a step"),
]
AT_STEP = [
    ("delete", "delete", "delete a pending step"),
    ("add-breakpoint", "add_breakpoint", "stop before a pending step"),
    ("remove-breakpoint", "remove_breakpoint", "remove a step's breakpoint"),
]
STEPS_HELP = "JSON step list, a file holding one, or '-' for standard input"


def register(root: Commands) -> None:
    sq = root.group("sequencer", "sequencers: step lists and the state machine", aliases=["sqr"])
    sq.add("ls", sequencer_ls, "list sequencers", aliases=["list"])
    sq.add("info", sequencer_info, "state and step list").add_argument("id", metavar="ID|PREFIX")
    for name, method, help in SIMPLE:
        sq.add(name, _simple(method), help).add_argument("id", metavar="ID|PREFIX")
    for name, method, help in WITH_STEPS:
        p = sq.add(name, _with_steps(method), help)
        p.add_argument("id", metavar="ID|PREFIX")
        p.add_argument("steps", metavar="STEPS", help=STEPS_HELP)
    for name, method, help in AT_STEP_WITH_STEPS:
        p = sq.add(name, _at_step_with_steps(method), help)
        p.add_argument("id", metavar="ID|PREFIX")
        p.add_argument("step", metavar="STEP_ID")
        p.add_argument("steps", metavar="STEPS", help=STEPS_HELP)
    for name, method, help in AT_STEP:
        p = sq.add(name, _at_step(method), help)
        p.add_argument("id", metavar="ID|PREFIX")
        p.add_argument("step", metavar="STEP_ID")
    p = sq.add("diagnostic-mode", sequencer_diagnostic, "run the diagnostic-mode handler")
    p.add_argument("id", metavar="ID|PREFIX")
    p.add_argument("--hint", default="", help="hint for the handler")
    p.add_argument("--start-time", help="ISO 8601 start time (default now)")
    p = sq.add("query", sequencer_query, "a run's state now")
    p.add_argument("id", metavar="ID|PREFIX")
    p.add_argument("run_id", metavar="RUN_ID")
    p = sq.add("query-final", sequencer_query_final, "wait for a run to finish")
    p.add_argument("id", metavar="ID|PREFIX")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--timeout", type=float, help="seconds to wait at most")
    p = sq.add("transitions", sequencer_transitions, "the state transition history")
    p.add_argument("id", metavar="ID|PREFIX")
    p.add_argument("--limit", type=int, default=200, help="how many, newest (default 200)")
    p = sq.add("links", sequencer_links, "its upstream and downstreams, with their states")
    p.add_argument("id", metavar="ID|PREFIX")
    p = sq.add("events", sequencer_events, "follow state and step changes (Ctrl-C to stop)")
    p.add_argument("id", metavar="ID|PREFIX")

    comp = root.group(
        "component", "sequence components: slots hosting one sequencer", aliases=["comp"]
    )
    comp.add("ls", component_ls, "list components", aliases=["list"])
    comp.add("create", component_create, "create a component").add_argument("name")
    p = comp.add("load-script", component_load, "start a sequencer running a script")
    p.add_argument("name")
    p.add_argument("sequence", metavar="SEQUENCE_ID|-")
    p.add_argument("prefix", help="the sequencer's prefix, like ESW.darknight")
    comp.add("unload-script", component_unload, "shut its sequencer down").add_argument("name")
    comp.add("restart", component_restart, "unload and load the same script").add_argument("name")
    comp.add("status", component_status, "state and hosted sequencer").add_argument("name")
