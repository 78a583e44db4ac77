"""`si inst` commands: list, describe, follow streams, send input and events, stop, kill,
restart."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from client import config
from client.cli_output import data_source, key_values, parse_value, short_time, table

if TYPE_CHECKING:
    from client.cli import Commands, Context
    from client.sync import InstanceClient


def _inst(ctx: Context) -> InstanceClient:
    return ctx.host.get_instance_client(ctx.ref("instance", ctx.args.id))


def _exit(info: dict[str, Any]) -> str:
    term = info.get("terminated") or {}
    return "" if term.get("exitcode") is None else str(term["exitcode"])


def _how(info: dict[str, Any]) -> str:
    """How it ended (the hub's `outcome`) and who or what ended it, or "" while it runs."""
    outcome = info.get("outcome")
    if not outcome:
        return ""
    text = (info.get("endedBy") or {}).get("text")
    return f"{outcome} ({text})" if text else str(outcome)


def inst_ls(ctx: Context) -> None:
    def human(items: list[dict[str, Any]]) -> str:
        rows = [
            [
                i["id"],
                (i.get("sequence") or {}).get("name") or "",
                i.get("status"),
                short_time(i.get("started") or i.get("created")),
                short_time(i.get("ended")),
                _exit(i),
                _how(i),
            ]
            for i in items
        ]
        return table(rows, ["ID", "SEQUENCE", "STATUS", "STARTED", "ENDED", "EXIT", "OUTCOME"])

    ctx.out.show(ctx.host.list_instances(), human)


def inst_info(ctx: Context) -> None:
    info = _inst(ctx).get_info()
    ctx.out.show(
        info,
        lambda d: key_values(
            {**d, "sequence": (d.get("sequence") or {}).get("id")},
            [
                "id",
                "status",
                "sequence",
                "args",
                "appConfig",
                "limits",
                "created",
                "started",
                "ended",
                "terminated",
                "outcome",
                "endedBy",
                "worker",
                "pid",
                "restartedFrom",
                "restartedAs",
            ],
        ),
    )


def inst_health(ctx: Context) -> None:
    ctx.out.show(_inst(ctx).get_health(), key_values)


def inst_stream(ctx: Context) -> None:
    ctx.out.write_stream(_inst(ctx).get_stream(ctx.args.stream))


def _end(ctx: Context) -> bool | None:
    return ctx.args.end


def inst_input(ctx: Context) -> None:
    answer = _inst(ctx).send_input(data_source(ctx.args.file), ctx.args.type, _end(ctx))
    ctx.out.show(answer, "")


def inst_inout(ctx: Context) -> None:
    ctx.out.write_stream(_inst(ctx).inout(data_source(ctx.args.file), ctx.args.type, _end(ctx)))


def inst_stdin(ctx: Context) -> None:
    answer = _inst(ctx).send_stdin(data_source(ctx.args.file), _end(ctx))
    ctx.out.show(answer, "")


def _ended(info: dict[str, Any]) -> str:
    term = info.get("terminated") or {}
    tail = f": {term.get('reason')} (exit {term.get('exitcode')})" if term else ""
    how = f" [{_how(info)}]" if info.get("outcome") else ""
    return f"{info.get('id')} {info.get('status')}{tail}{how}"


def inst_stop(ctx: Context) -> None:
    info = _inst(ctx).stop(ctx.args.timeout, ctx.args.keepalive)
    ctx.out.show(info, _ended)


def inst_kill(ctx: Context) -> None:
    info = _inst(ctx).kill(ctx.args.remove)
    ctx.out.show(info, f"killing {info.get('id')}")


def inst_restart(ctx: Context) -> None:
    new = _inst(ctx).restart()
    config.remember(instance=new.id)
    ctx.out.show({"id": new.id}, new.id)


def event_emit(ctx: Context) -> None:
    message = parse_value(ctx.args.message) if ctx.args.message is not None else None
    answer = _inst(ctx).send_event(ctx.args.name, message)
    ctx.out.show(answer, "")


def event_on(ctx: Context) -> None:
    inst = _inst(ctx)
    if ctx.args.stream:
        for message in inst.get_event_stream(ctx.args.name):
            print(json.dumps(message), flush=True)
        return
    message = inst.get_next_event(ctx.args.name) if ctx.args.next else inst.get_event(ctx.args.name)
    print(json.dumps(message))


def _id(parser: Any) -> None:
    parser.add_argument("id", metavar="ID|-", help="instance id, or '-' for the last started")


def register(root: Commands) -> None:
    inst = root.group("inst", "instances: follow, feed, stop, kill", aliases=["instance"])
    inst.add("ls", inst_ls, "list instances", aliases=["list"])
    _id(inst.add("info", inst_info, "describe an instance"))
    _id(inst.add("health", inst_health, "an instance's health"))
    for name in ("output", "stdout", "stderr", "log"):
        p = inst.add(
            name,
            inst_stream,
            f"print the {name} stream from the start, following it until the instance ends",
        )
        p.set_defaults(stream=name)
        _id(p)
    for name, handler, what in (
        ("input", inst_input, "send a file or standard input to the instance's input"),
        ("stdin", inst_stdin, "send a file or standard input to the instance's stdin"),
        ("inout", inst_inout, "send to the input and print the output from then on"),
    ):
        p = inst.add(name, handler, what)
        target = "stdin" if name == "stdin" else "input"
        _id(p)
        p.add_argument("file", nargs="?", help="file to send (default: standard input)")
        if name != "stdin":
            p.add_argument(
                "-t", "--type", default="text/plain", help="content type (default text/plain)"
            )
        end = p.add_mutually_exclusive_group()
        end.add_argument(
            "-e",
            "--end",
            dest="end",
            action="store_const",
            const=True,
            default=None,
            help=f"close {target} after this data (the default)",
        )
        end.add_argument(
            "--no-end",
            dest="end",
            action="store_const",
            const=False,
            help=f"keep {target} open for more",
        )
    p = inst.add("stop", inst_stop, "stop: the sequence's stop handlers, then kill after TIMEOUT")
    _id(p)
    p.add_argument(
        "timeout",
        nargs="?",
        type=int,
        default=7000,
        metavar="TIMEOUT_MS",
        help="milliseconds to wait before killing (default 7000)",
    )
    p.add_argument(
        "--keepalive",
        action="store_true",
        help="let the sequence keep itself alive (canCallKeepalive)",
    )
    p = inst.add("kill", inst_kill, "kill the instance's processes at once")
    _id(p)
    p.add_argument("--remove", action="store_true", help="remove its records immediately")
    p = inst.add(
        "restart",
        inst_restart,
        "kill the instance if it runs and start its sequence again with the same args",
    )
    _id(p)

    events = inst.group("event", "send and read events")
    p = events.add("emit", event_emit, "send an event into the sequence", aliases=["invoke"])
    _id(p)
    p.add_argument("name")
    p.add_argument("message", nargs="?", help="the message, JSON where it parses")
    p = events.add("on", event_on, "print the last (or next) event the sequence emitted")
    _id(p)
    p.add_argument("name")
    how = p.add_mutually_exclusive_group()
    how.add_argument("-n", "--next", action="store_true", help="wait for the next one")
    how.add_argument(
        "-s",
        "--stream",
        action="store_true",
        help="print each one as it comes, until the instance ends",
    )
