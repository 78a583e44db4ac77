"""`si topic` commands: list, create, delete, send to and follow topics (docs/topics.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from client.cli_output import data_source, table

if TYPE_CHECKING:
    from client.cli import Commands, Context

TYPES = "application/x-ndjson, text/x-ndjson, text/plain or application/octet-stream"


def _created(value: Any) -> str:
    """The hub gives `created` as seconds since the epoch."""
    if not isinstance(value, int | float):
        return ""
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


def topic_ls(ctx: Context) -> None:
    def human(items: list[dict[str, Any]]) -> str:
        rows = [
            [
                t.get("topic") or t.get("topicName"),
                t.get("contentType"),
                t.get("producers", ""),
                t.get("consumers", ""),
                t.get("length", ""),
                t.get("chunks", ""),
                t.get("bytes", ""),
                _created(t.get("created")),
            ]
            for t in items
        ]
        header = ["TOPIC", "TYPE", "PRODUCERS", "CONSUMERS", "KEPT", "CHUNKS", "BYTES", "CREATED"]
        return table(rows, header)

    ctx.out.show(ctx.host.get_topics(), human)


def topic_create(ctx: Context) -> None:
    answer = ctx.host.create_topic(ctx.args.name, ctx.args.type)
    ctx.out.show(answer, f"created {ctx.args.name} ({answer.get('contentType')})")


def topic_delete(ctx: Context) -> None:
    answer = ctx.host.delete_topic(ctx.args.name)
    ctx.out.show(answer, f"deleted {ctx.args.name}")


def topic_send(ctx: Context) -> None:
    answer = ctx.host.send_named_data(
        ctx.args.name, data_source(ctx.args.file), ctx.args.type, ctx.args.end
    )
    ctx.out.show(answer, "")


def topic_get(ctx: Context) -> None:
    ctx.out.write_stream(ctx.host.get_named_data(ctx.args.name, ctx.args.type, ctx.args.from_now))


def register(root: Commands) -> None:
    topic = root.group("topic", "topics: named streams between sequences and clients")
    topic.add(
        "ls", topic_ls, "list topics with their producers, consumers and size", aliases=["list"]
    )
    p = topic.add("create", topic_create, "make a topic holding one content type")
    p.add_argument("name")
    p.add_argument(
        "-t",
        "--type",
        default="application/x-ndjson",
        metavar="TYPE",
        help=f"{TYPES} (default application/x-ndjson)",
    )
    p = topic.add("delete", topic_delete, "delete a topic and what it holds", aliases=["rm"])
    p.add_argument("name")
    p = topic.add("send", topic_send, "send a file or standard input to a topic (made if missing)")
    p.add_argument("name")
    p.add_argument("file", nargs="?", help="file to send (default: standard input)")
    p.add_argument(
        "-t",
        "--type",
        metavar="TYPE",
        help=f"{TYPES} (default: the topic's own; application/x-ndjson for a new one)",
    )
    p.add_argument(
        "-e",
        "--end",
        action="store_true",
        help="end the topic's stream after this data: its readers finish",
    )
    p = topic.add(
        "get",
        topic_get,
        "print a topic from what it keeps, following it until its stream ends (Ctrl-C to stop)",
    )
    p.add_argument("name")
    p.add_argument("-t", "--type", metavar="TYPE", help="the type of the topic if this makes it")
    p.add_argument("--from-now", action="store_true", help="only what is sent from now on")
