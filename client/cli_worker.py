"""`si worker` commands: list the hub's workers, show one, drain one (docs/operations.md,
"Drain and rolling restart")."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from client.cli_output import key_values, short_time, table

if TYPE_CHECKING:
    from client.cli import Commands, Context


def worker_ls(ctx: Context) -> None:
    def human(items: list[dict[str, Any]]) -> str:
        rows = [
            [
                w.get("name"),
                w.get("state"),
                w.get("hostname"),
                w.get("pid"),
                w.get("running"),
                w.get("capacity"),
                w.get("free"),
                short_time(w.get("lastSeen")),
            ]
            for w in items
        ]
        header = ["NAME", "STATE", "HOST", "PID", "RUNNING", "CAPACITY", "FREE", "LAST SEEN"]
        return table(rows, header)

    ctx.out.show(ctx.host.list_workers(), human)


def worker_info(ctx: Context) -> None:
    ctx.out.show(ctx.host.get_worker(ctx.args.name), key_values)


def worker_drain(ctx: Context) -> None:
    answer = ctx.host.drain_worker(ctx.args.name, ctx.args.deadline)
    ctx.out.show(
        answer,
        f"draining {answer.get('name')}: it takes no more starts; its {answer.get('running')} "
        f"instances may run until {short_time(answer.get('drainDeadline'))} UTC, then are "
        "stopped, and it exits",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0")
    return value


def register(root: Commands) -> None:
    worker = root.group("worker", "the hub's workers: list, show, drain for a rolling restart")
    worker.add("ls", worker_ls, "list workers with their state and free places", aliases=["list"])
    p = worker.add("info", worker_info, "one worker, with the instances and sequencers it runs")
    p.add_argument("name")
    p = worker.add(
        "drain",
        worker_drain,
        "drain a worker (admin): no more starts, its instances finish or are stopped at the "
        "deadline, then it exits",
    )
    p.add_argument("name")
    p.add_argument(
        "-d",
        "--deadline",
        type=_seconds,
        metavar="S",
        help="seconds its instances may still run before they are stopped (hub default 300)",
    )
