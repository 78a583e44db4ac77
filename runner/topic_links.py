"""A child's topics: the supervisor moves its output into a topic and a topic into its input.

A child cannot reach Redis (the sandbox closes it), so it never touches a topic: what it
declares (`provides`, `requires`, as a PANG control message) is a request, checked here. The
starter's `outputTopic`/`inputTopic` (in the signed start request) pin the topics: a sequence
may then not declare others. Without them the sequence's declaration is granted once per
direction, before its first output byte; names are checked (sequences/topics.py) so no key but
a topic's is ever made of one. The child waits for the answer (DECLARED) before it writes
output, so no byte goes to the wrong place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.protocol import Message
from runner.control import log_line
from sequences import topics

if TYPE_CHECKING:  # the supervisor imports this module: its types only, no import cycle
    from runner.supervisor import Child, Supervisor

log = logging.getLogger(__name__)

INPUT_HIGH_WATER = 1 << 20  # bytes waiting for the child's input pipe before the feed waits


@dataclass
class Links:
    """What one child publishes to and reads from, and its registrations as a peer."""

    output_topic: str = ""
    input_topic: str = ""
    input_from: str = ""  # the topic's entry id the start request named: read after it
    input_type: str = ""  # what the sequence asked its input to be decoded as
    aligner: topics.LineAligner | None = None
    members: list[tuple[str, str, str]] = field(default_factory=list)  # (topic, role, member)
    tasks: list[asyncio.Task] = field(default_factory=list)


def from_start(req: dict[str, Any]) -> Links:
    """The links a start request names (its fields were checked by check_start)."""
    return Links(
        output_topic=str(req.get("outputTopic") or ""),
        input_topic=str(req.get("inputTopic") or ""),
        input_from=str(req.get("inputFrom") or ""),
    )


def check_start_fields(req: dict[str, Any]) -> None:
    """ValueError unless the start request's topics are topics' names (or absent)."""
    for name in ("outputTopic", "inputTopic"):
        value = req.get(name)
        if value not in (None, "") and not topics.is_name(value):
            raise ValueError(f"{name} {value!r} is not a topic's name")
    cursor = req.get("inputFrom")
    if cursor not in (None, "") and not (
        isinstance(cursor, str) and topics.ENTRY_ID.fullmatch(cursor)
    ):
        raise ValueError(f"inputFrom {cursor!r} is not a topic's entry id")


async def prepare(links: Links) -> None:
    """Before the fork: the output topic exists, so the first chunk has its type."""
    if links.output_topic:
        topic, _ = await topics.ensure(links.output_topic, topics.NDJSON, origin="instance")
        links.aligner = topics.LineAligner(topic.content_type)


async def started(sup: Supervisor, child: Child) -> None:
    """After the fork: register as the topics' peer, start feeding the input topic."""
    links = child.links
    if links is None:
        return
    if links.output_topic:
        await _attach(links, links.output_topic, topics.PRODUCER)
    if links.input_topic:
        _feed(sup, child, links.input_topic)
    links.tasks.append(sup.loop.create_task(_refresh(links)))


def output(sup: Supervisor, child: Child, data: bytes) -> bool:
    """Publish a chunk of the child's output to its topic; False when it publishes to none."""
    links = child.links
    if links is None or not links.output_topic or links.aligner is None:
        return False
    chunk = links.aligner.feed(data)
    if chunk:
        sup.outbox.publish(links.output_topic, chunk, links.aligner.kind)
    return True


def on_pang(sup: Supervisor, child: Child, data: Any) -> None:
    """A declaration from the child: grant what may be granted, answer DECLARED."""
    sup.loop.create_task(_declare(sup, child, data if isinstance(data, dict) else {}))


async def _declare(sup: Supervisor, child: Child, data: dict[str, Any]) -> None:
    if child.links is None:
        child.links = Links()
    links = child.links
    kind = data.get("contentType")
    kind = kind if kind in topics.CONTENT_TYPES else ""
    provides, requires = data.get("provides"), data.get("requires")
    try:
        if provides not in (None, ""):
            await _grant_output(sup, child, links, provides, kind)
        if requires not in (None, ""):
            _grant_input(sup, child, links, requires, kind)
    finally:
        # Always answered: the child holds its output until it hears back.
        sup.send(
            child,
            Message.DECLARED,
            {"provides": links.output_topic or None, "requires": links.input_topic or None},
        )


def _refuse(sup: Supervisor, child: Child, why: str) -> None:
    sup.emit_chunk(child, "log", log_line("WARN", f"topic declaration refused: {why}"))


async def _grant_output(sup: Supervisor, child: Child, links: Links, name: Any, kind: str) -> None:
    if not topics.is_name(name):
        return _refuse(sup, child, f"provides {str(name)[:80]!r}: not {topics.NAME_RULE}")
    if links.output_topic:
        if links.output_topic != name:
            _refuse(sup, child, f"provides {name}: the output goes to {links.output_topic}")
        return None
    if child.seq["output"]:
        return _refuse(sup, child, f"provides {name}: output was written before it")
    topic, _ = await topics.ensure(name, kind or topics.NDJSON, origin=child.iid)
    if kind and topic.content_type != kind:
        return _refuse(sup, child, f"provides {name}: the topic holds {topic.content_type}")
    links.output_topic, links.aligner = name, topics.LineAligner(topic.content_type)
    await _attach(links, name, topics.PRODUCER)
    sup.writer.update(child.iid, output_topic=name)
    return None


def _grant_input(sup: Supervisor, child: Child, links: Links, name: Any, kind: str) -> None:
    if not topics.is_name(name):
        return _refuse(sup, child, f"requires {str(name)[:80]!r}: not {topics.NAME_RULE}")
    links.input_type = kind
    if links.input_topic:
        if links.input_topic != name:
            _refuse(sup, child, f"requires {name}: the input comes from {links.input_topic}")
        return None
    if child.input_header_sent:
        return _refuse(sup, child, f"requires {name}: input came through the API already")
    links.input_topic = name
    sup.writer.update(child.iid, input_topic=name)
    _feed(sup, child, name)
    return None


def _feed(sup: Supervisor, child: Child, name: str) -> None:
    assert child.links is not None
    child.links.tasks.append(sup.loop.create_task(_feed_input(child, name)))


async def _feed_input(child: Child, name: str) -> None:
    """Copy the topic into the child's input, from what it keeps, until it ends or is
    deleted (then the input ends), holding back while the child does not read."""
    links, pipe = child.links, child.input
    if links is None or pipe is None or pipe.is_closing():
        return
    topic, _ = await topics.ensure(name, links.input_type or topics.NDJSON, origin=child.iid)
    # The sequence's own wish decodes its input; the topic's type otherwise.
    kind = links.input_type or topic.content_type
    pipe.write(f"Content-Type: {kind}\r\n\r\n".encode())
    child.input_header_sent = True
    # A topic the start named is read from where it stood at the start (input_from); one the
    # code declared (the only other kind: a second one is refused), from the start of its
    # current stream (topics.read).
    async for chunk in topics.read(name, since="start", after=links.input_from or None):
        if pipe.is_closing():
            return
        pipe.write(chunk)
        while pipe.get_write_buffer_size() > INPUT_HIGH_WATER and not pipe.is_closing():
            await asyncio.sleep(0.01)  # the topic keeps the rest: nobody else waits
    if not pipe.is_closing():
        pipe.close()


async def _attach(links: Links, name: str, role: str) -> None:
    links.members.append((name, role, await topics.attach(name, role)))


async def _refresh(links: Links) -> None:
    while True:
        await asyncio.sleep(topics.PEER_REFRESH)
        for name, role, member in links.members:
            with contextlib.suppress(Exception):
                await topics.refresh(name, role, member)


async def finish(sup: Supervisor, child: Child) -> None:
    """The child ended: its last line goes out, its registrations and feeds end. A producer's
    end does not end the topic (others may write to it, and a restart continues it)."""
    links = child.links
    if links is None:
        return
    if links.output_topic and links.aligner is not None:
        rest = links.aligner.rest()
        if rest:
            sup.outbox.publish(links.output_topic, rest, links.aligner.kind)
    for task in links.tasks:
        task.cancel()
    for name, role, member in links.members:
        with contextlib.suppress(Exception):
            await topics.detach(name, role, member)
    links.members.clear()
