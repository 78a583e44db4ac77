"""`si mode` and `si resources` commands: observing modes (docs/scripts.md, "Observing
modes"; docs/api.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.cli_output import table

if TYPE_CHECKING:
    from client.cli import Commands, Context


def _sequencer_rows(entries: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for entry in entries:
        seq = entry.get("sequencer") or {}
        step = seq.get("step") or {}
        rows.append(
            [
                entry.get("prefix"),
                seq.get("state", "-"),
                step.get("status", "-"),
                seq.get("component") or "-",
                seq.get("worker") or "-",
                seq.get("id") or "-",
            ]
        )
    return rows


SEQUENCER_HEADER = ["PREFIX", "STATE", "STEP", "COMPONENT", "WORKER", "ID"]


def mode_text(mode: dict[str, Any]) -> str:
    lines = [f"{mode.get('name')}: {mode.get('status')}"]
    lines += [f"  {reason}" for reason in mode.get("reasons") or []]
    lines.append(f"resources: {', '.join(mode.get('resources') or []) or '-'}")
    lines.append("")
    lines.append(table(_sequencer_rows(mode.get("sequencers") or []), SEQUENCER_HEADER))
    return "\n".join(lines)


def mode_ls(ctx: Context) -> None:
    def human(items: list[dict[str, Any]]) -> str:
        if not items:
            return "(no observing modes: si mode config set FILE)"
        rows = [
            [
                m.get("name"),
                m.get("status"),
                ", ".join(m.get("resources") or []) or "-",
                "; ".join(m.get("reasons") or []),
            ]
            for m in items
        ]
        return table(rows, ["MODE", "STATUS", "RESOURCES", "WHY"])

    ctx.out.show(ctx.host.list_modes(), human)


def mode_info(ctx: Context) -> None:
    ctx.out.show(ctx.host.get_mode(ctx.args.name), mode_text)


def mode_configure(ctx: Context) -> None:
    ctx.out.show(ctx.host.configure_mode(ctx.args.name), mode_text)


def mode_shutdown(ctx: Context) -> None:
    def human(answer: dict[str, Any]) -> str:
        shut = [s.get("prefix") for s in answer.get("sequencers") or []]
        return f"{answer.get('mode')} shut down ({', '.join(shut)}): now {answer.get('status')}"

    ctx.out.show(ctx.host.shutdown_mode(ctx.args.name), human)


def mode_restart(ctx: Context) -> None:
    def human(answer: dict[str, Any]) -> str:
        seq = answer.get("sequencer") or {}
        return (
            f"{seq.get('prefix')} of mode {answer.get('mode')} restarted: sequencer "
            f"{seq.get('id')} {seq.get('state')} in {seq.get('component')} on {seq.get('worker')}"
        )

    ctx.out.show(ctx.host.restart_mode_sequencer(ctx.args.prefix), human)


def config_get(ctx: Context) -> None:
    def human(config: dict[str, Any]) -> str:
        return str(config.get("source") or "(no configuration yet)").rstrip("\n")

    ctx.out.show(ctx.host.get_modes_config(), human)


def config_set(ctx: Context) -> None:
    source = ctx.args.file
    if source == "-":
        text = sys.stdin.read()
        fmt = ctx.args.format
    else:
        path = Path(source)
        text = path.read_text(encoding="utf-8")
        suffix = path.suffix.lower()
        fmt = ctx.args.format or {".json": "json", ".yaml": "yaml", ".yml": "yaml"}.get(suffix)
    answer = ctx.host.set_modes_config(text, fmt)

    def human(config: dict[str, Any]) -> str:
        names = list(config.get("modes") or {})
        return f"stored {len(names)} observing mode(s): {', '.join(names) or '-'}"

    ctx.out.show(answer, human)


def resources_ls(ctx: Context) -> None:
    def human(items: list[dict[str, Any]]) -> str:
        if not items:
            return "(no resources named by any mode)"
        rows = [
            [r.get("name"), r.get("status"), r.get("mode") or "-", ", ".join(r.get("modes") or [])]
            for r in items
        ]
        return table(rows, ["RESOURCE", "STATUS", "USED BY", "NAMED BY"])

    ctx.out.show(ctx.host.list_resources(), human)


def register(root: Commands) -> None:
    mode = root.group("mode", "observing modes: bring a set of sequencers up at once")
    mode.add("ls", mode_ls, "modes: Configured, Configurable or NonConfigurable", aliases=["list"])
    mode.add("info", mode_info, "a mode, its resources and sequencers").add_argument("name")
    mode.add("configure", mode_configure, "bring the mode's sequencers up").add_argument("name")
    mode.add("shutdown", mode_shutdown, "shut the mode's sequencers down").add_argument("name")
    mode.add("restart", mode_restart, "restart one sequencer of a configured mode").add_argument(
        "prefix"
    )
    config = mode.group("config", "the observing modes configuration (JSON or YAML)")
    config.add("get", config_get, "print the configuration as stored")
    p = config.add("set", config_set, "replace the configuration (admin)")
    p.add_argument("file", metavar="FILE|-", help="a .yaml, .yml or .json file, or - for stdin")
    p.add_argument("--format", choices=["json", "yaml"], help="default: from the file's suffix")
    root.add("resources", resources_ls, "resources: in use (by which mode) or available")
