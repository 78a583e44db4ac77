"""Topic pages: every topic with its rate, size, producers and consumers and the pipeline they
make; one topic's live tail; delete (operators, as `DELETE /topics/:name`: docs/api.md).

Topic data is written by sequences and clients: lines are rendered by `dashboard.logs` (escaped,
escape sequences dropped or turned into colour classes, long lines cut), names only ever come
from `topics.is_name`. Rates need two looks at a topic's totals: the page's socket
(`consumers.TopicListConsumer`) takes one every few seconds and sends the rows again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accounts.access import audit
from dashboard import logs
from dashboard.views.common import HtmxHttpRequest, feedback, role_page
from sequences import topics
from sequences.errors import HubError
from sequences.models import LIVE_STATUSES, Instance

TAIL_CHUNKS = 100
TAIL_LINES = 200

# A look at the topics' totals: name -> (monotonic time, chunks, bytes).
Looks = dict[str, tuple[float, int, int]]


def linked_instances() -> list[dict[str, Any]]:
    """Live instances that publish to or read from a topic (their start or their grant)."""
    rows = (
        Instance.objects.filter(status__in=LIVE_STATUSES)
        .exclude(output_topic="", input_topic="")
        .order_by("created")
        .values("id", "sequence_name", "output_topic", "input_topic", "status")
    )
    return [dict(row) for row in rows[:500]]


def rate_of(row: dict[str, Any], before: Looks | None, now: float) -> dict[str, float] | None:
    """Chunks and bytes per second since the previous look, or None without one."""
    seen = (before or {}).get(row["topic"])
    if seen is None or now <= seen[0] or row["chunks"] < seen[1]:
        return None  # no earlier look, or the topic was made again since
    span = now - seen[0]
    return {"chunks": (row["chunks"] - seen[1]) / span, "bytes": (row["bytes"] - seen[2]) / span}


def looks_of(rows: list[dict[str, Any]], now: float) -> Looks:
    return {row["topic"]: (now, row["chunks"], row["bytes"]) for row in rows}


def list_context(
    rows: list[dict[str, Any]], before: Looks | None = None, now: float | None = None
) -> dict[str, Any]:
    """The table and the pipeline from `topics.list_topics()` rows (runs in a thread: ORM)."""
    now = time.monotonic() if now is None else now
    linked = linked_instances()
    shown = []
    for row in rows:
        name = row["topic"]
        producers = [i for i in linked if i["output_topic"] == name]
        consumers = [i for i in linked if i["input_topic"] == name]
        shown.append(
            {
                **row,
                "rate": rate_of(row, before, now),
                "producer_instances": producers,
                "consumer_instances": consumers,
                # Registrations nobody in the database explains: API clients, console tails.
                "other_producers": max(0, row["producers"] - len(producers)),
                "other_consumers": max(0, row["consumers"] - len(consumers)),
            }
        )
    return {"topics": shown, "pipeline": pipeline(shown, linked)}


# -- the pipeline picture ----------------------------------------------------------------------

COLUMN, ROW, NODE_W, NODE_H, PAD = 220, 56, 180, 36, 12


@dataclass
class Node:
    key: str
    kind: str  # instance | topic | clients
    label: str
    sub: str = ""
    href: str = ""
    layer: int = 0
    x: int = 0
    y: int = 0
    inputs: list[str] = field(default_factory=list)


def pipeline(rows: list[dict[str, Any]], linked: list[dict[str, Any]]) -> dict[str, Any]:
    """Sequences → topics → sequences as positioned boxes and curves for a server-drawn SVG.

    Layers are the longest path from a source (cycles are cut after as many rounds as there
    are nodes), so a chain a → t1 → b → t2 → c reads left to right.
    """
    nodes: dict[str, Node] = {}
    names = {row["topic"] for row in rows}
    for row in rows:
        href = reverse("topic", args=[row["topic"]])
        nodes["t:" + row["topic"]] = Node("t:" + row["topic"], "topic", row["topic"], href=href)
    for inst in linked:
        key = "i:" + inst["id"]
        label = inst["sequence_name"] or "instance"
        node = Node(key, "instance", label, inst["id"][:8], reverse("instance", args=[inst["id"]]))
        nodes[key] = node
        if inst["input_topic"] in names:
            node.inputs.append("t:" + inst["input_topic"])
        if inst["output_topic"] in names:
            nodes["t:" + inst["output_topic"]].inputs.append(key)
    for row in rows:
        topic = nodes["t:" + row["topic"]]
        if row["other_producers"]:
            key = "p:" + row["topic"]
            nodes[key] = Node(key, "clients", f"{row['other_producers']} other producer(s)")
            topic.inputs.append(key)
        if row["other_consumers"]:
            key = "c:" + row["topic"]
            nodes[key] = Node(key, "clients", f"{row['other_consumers']} other consumer(s)")
            nodes[key].inputs.append(topic.key)
    for _ in range(len(nodes)):
        moved = False
        for node in nodes.values():
            layer = max((nodes[k].layer + 1 for k in node.inputs), default=0)
            if layer != node.layer and layer < len(nodes):
                node.layer, moved = layer, True
        if not moved:
            break
    columns: dict[int, list[Node]] = {}
    for node in sorted(nodes.values(), key=lambda n: (n.kind != "topic", n.label, n.key)):
        columns.setdefault(node.layer, []).append(node)
    for layer, column in columns.items():
        for index, node in enumerate(column):
            node.x, node.y = PAD + layer * COLUMN, PAD + index * ROW
    edges = []
    for node in nodes.values():
        for key in node.inputs:
            src = nodes[key]
            x1, y1 = src.x + NODE_W, src.y + NODE_H // 2
            x2, y2 = node.x, node.y + NODE_H // 2
            bend = max(40, abs(x2 - x1) // 2)
            path = f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"
            edges.append({"d": path, "source": key, "target": node.key})
    width = PAD * 2 + (max(columns, default=0)) * COLUMN + NODE_W
    height = PAD * 2 + max((len(c) for c in columns.values()), default=0) * ROW
    return {
        "nodes": list(nodes.values()),
        "edges": edges,
        "width": width,
        "height": height,
        "node_w": NODE_W,
        "node_h": NODE_H,
        "flows": any(n.inputs for n in nodes.values()),
    }


# -- views -------------------------------------------------------------------------------------


@require_GET
@role_page("viewer")
async def topic_list(request: HtmxHttpRequest) -> HttpResponse:
    rows = await topics.list_topics()
    context = await sync_to_async(list_context)(rows)
    return await sync_to_async(render)(request, "topics/list.html", context)


def render_tail(chunks: list[bytes], kind: str) -> tuple[list[logs.Line], logs.LineSplitter]:
    """The last lines of a topic's newest chunks, and the splitter that follows on from them."""
    splitter = logs.LineSplitter(0, ((0, 0), b""))
    raw: list[tuple[logs.Place, bytes]] = []
    for chunk in chunks:
        raw.extend(splitter.feed(chunk))
    if kind == "application/octet-stream" or splitter.current:
        raw.extend(splitter.finish())  # raw data has no lines: show what there is
    return logs.render_lines(raw[-TAIL_LINES:]), splitter


@require_GET
@role_page("viewer")
async def topic_detail(request: HttpRequest, name: str) -> HttpResponse:
    topic = await topics.get(name) if topics.is_name(name) else None
    if topic is None:
        return await sync_to_async(render)(
            request, "404.html", {"what": f"Topic {name}"}, status=404
        )
    chunks, _ = await topics.tail_cursor(name, TAIL_CHUNKS)
    lines, _ = render_tail(chunks, topic.content_type)
    rows = [r for r in await topics.list_topics() if r["topic"] == name]
    context = await sync_to_async(list_context)(rows)
    context.update(topic=topic, row=context["topics"][0] if context["topics"] else None)
    context["lines"] = lines
    return await sync_to_async(render)(request, "topics/detail.html", context)


@require_POST
@role_page("operator")
async def topic_delete(request: HtmxHttpRequest, name: str) -> HttpResponse:
    fallback = reverse("topics")
    user = await request.auser()
    try:
        await topics.delete(topics.check_name(name))
    except HubError as exc:
        await sync_to_async(audit)(user, "topic.delete", name[:200], outcome="refused")
        return await sync_to_async(feedback)(request, "error", exc.message, fallback, exc.status)
    await sync_to_async(audit)(user, "topic.delete", name, via="console")
    return await sync_to_async(feedback)(request, "ok", f"Deleted topic {name}.", fallback)
