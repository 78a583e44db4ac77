"""Bounded windows over an instance's streams: the last N lines, earlier pages, rendering.

A stream is stored as numbered chunks of arbitrary bytes (a line may span chunks), so a place
in it is `(chunk seq, byte offset)`: "at" strings `"S:O"`. Every line the console shows carries
the place where it starts, so "load earlier" asks for the lines before the first one shown,
however the browser trimmed its window. Colours are rendered here (ansi2html); the raw bytes
stay untouched in storage, in downloads and in the API.
"""

from __future__ import annotations

import datetime
import html
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ansi2html import Ansi2HTMLConverter
from django.conf import settings
from django.utils import timezone

from core.protocol import STREAMS as STREAMS  # what the consoles show: every stream
from sequences.models import StreamChunk

MAX_LINE_CHARS = 4000
MAX_WINDOW_BYTES = 16 << 20  # a window never reads more than this, whatever the line lengths

Place = tuple[int, int]


def window_lines() -> int:
    return int(getattr(settings, "HUB_LOG_WINDOW", 500))


def place_text(place: Place) -> str:
    return f"{place[0]}:{place[1]}"


def parse_place(text: str) -> Place | None:
    seq, _, off = (text or "").partition(":")
    if not (seq.isdigit() and off.isdigit()):
        return None
    return int(seq), int(off)


@dataclass
class Line:
    at: str
    html: str
    time: str = ""  # the gutter: when the chunk the line starts in arrived ('' unknown)
    level: str = ""  # `log` rows only: debug, info, warn, error ('' for a line that is not JSON)


# The `log` stream's levels (Python's and the Node runtime's names) as the four the filter
# offers; anything else counts as info.
LEVELS = {
    "TRACE": "debug",
    "DEBUG": "debug",
    "INFO": "info",
    "WARN": "warn",
    "WARNING": "warn",
    "ERROR": "error",
    "FATAL": "error",
    "CRITICAL": "error",
}
LOG_STREAM = "log"


def clock(when: datetime.datetime) -> str:
    """A line's time in the hub's zone, to the millisecond (the zone is in the pane's head)."""
    return timezone.localtime(when).strftime("%H:%M:%S.%f")[:-3]


def log_row(text: str) -> tuple[str, str, str] | None:
    """A `log` stream line (`{"ts", "level", "msg", "from"?, "data"?, "exc"?}`) as
    (time, level class, HTML of level, logger and message); None when it is not such a line."""
    if not text.startswith("{"):
        return None
    try:
        entry = json.loads(text)
    except ValueError:
        return None
    if not isinstance(entry, dict) or "msg" not in entry:
        return None
    raw_level = str(entry.get("level") or "INFO").upper()
    level = LEVELS.get(raw_level, "info")
    when = ""
    ts = entry.get("ts")
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        try:
            when = clock(datetime.datetime.fromtimestamp(ts / 1000, tz=datetime.UTC))
        except (ValueError, OverflowError, OSError):
            when = ""  # out of range: the row shows no time rather than failing the page
    logger = entry.get("from") or entry.get("logger") or entry.get("name") or ""
    message = entry.get("msg")
    parts = [
        f'<span class="lv">{plain(raw_level[:8])}</span>',
        f'<span class="lg">{plain(str(logger)[:80])}</span>',
        f'<span class="m">{plain(text_of(message))}',
    ]
    extra = {
        k: v
        for k, v in entry.items()
        if k not in ("ts", "level", "msg", "from", "logger", "name", "exc")
    }
    if extra:
        data = json.dumps(extra.get("data") if list(extra) == ["data"] else extra, default=str)
        parts.append(f' <span class="ld">{plain(data[:MAX_LINE_CHARS])}</span>')
    if entry.get("exc"):
        parts.append(f'\n<span class="lx">{plain(str(entry["exc"])[:MAX_LINE_CHARS])}</span>')
    parts.append("</span>")
    return when, level, "".join(parts)


def plain(text: str) -> str:
    """HTML for a `log` row's field: rows draw no colours, so every escape sequence goes."""
    return html.escape(strip_escapes(text, keep_colours=False))


def text_of(message: Any) -> str:
    return message if isinstance(message, str) else json.dumps(message, default=str)


# Escape sequences, one alternative per form, tried in this order at every ESC or C1 control
# (U+0080-U+009F, the 8-bit forms: U+009B is CSI, U+009D OSC, U+009C ST):
#   1. SGR, `ESC [ digits;: m`: colours, the only sequence kept (ansi2html draws them);
#   2. any other CSI (cursor moves, erase, `ESC [ ? 25 l`), complete or cut short;
#   3. string controls, OSC (`ESC ]`: OSC 8 hyperlinks, window titles), DCS, SOS, PM and APC,
#      with their contents, up to BEL or ST, or cut short by the next ESC/C1 or the line's end.
#      ansi2html would turn OSC 8 into a live <a href> of the sequence's choosing; they are
#      dropped, and a link's visible text stays as plain text (docs/console.md);
#   4. any other ESC sequence (`ESC ( 0`, `ESC 7`), or a lone ESC / C1 control.
# It is one left-to-right pass in which every ESC and C1 character is part of some match, so
# what is left holds no ESC but the kept SGR ones, each followed by `[`: removing a sequence
# cannot join its neighbours into a new one (`ESC ESC ] BEL ]8;;url` stays text, not a link).
ESCAPES = re.compile(
    r"(?P<sgr>\x1b\[[0-9;:]*m)"
    r"|(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x80-\x9f]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?"
    r"|[\x80-\x9f]"
)
HAS_ESCAPES = re.compile(r"[\x1b\x80-\x9f]")


def strip_escapes(text: str, keep_colours: bool = True) -> str:
    """`text` without escape sequences or C1 controls; SGR (colours) kept if `keep_colours`."""
    if not HAS_ESCAPES.search(text):
        return text
    if keep_colours:
        return ESCAPES.sub(lambda m: m.group("sgr") or "", text)
    return ESCAPES.sub("", text)


def render_lines(
    raw_lines: Iterable[tuple[Place, bytes]],
    times: Mapping[int, datetime.datetime | None] | None = None,
    stream: str = "",
) -> list[Line]:
    """HTML for each line: escaped, ANSI colours as classes, OSC sequences (hyperlinks)
    dropped, very long lines cut. `times`: when each chunk arrived (by number), for the
    gutter; the `log` stream's JSON lines become rows (time, level, logger, message)."""
    converter: Ansi2HTMLConverter | None = None
    out = []
    clocks: dict[int, str] = {}
    for place, raw in raw_lines:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        when = ""
        if times:
            seq = place[0]
            if seq not in clocks:
                arrived = times.get(seq)
                clocks[seq] = clock(arrived) if arrived is not None else ""
            when = clocks[seq]
        if stream == LOG_STREAM:
            row = log_row(text)
            if row is not None:
                out.append(Line(place_text(place), row[2], row[0] or when, row[1]))
                continue
        more = ""
        if len(text) > MAX_LINE_CHARS:
            more = f" … ({len(text) - MAX_LINE_CHARS} more characters)"
            text = text[:MAX_LINE_CHARS]
        # The note goes on after stripping, so a sequence cut short by the cut cannot swallow it.
        text = strip_escapes(text) + more
        if "\x1b" in text:
            # One converter per batch: ansi2html keeps state between calls of one converter.
            converter = converter or Ansi2HTMLConverter(inline=False, escaped=True)
            body = converter.convert(text, full=False)
        else:
            body = html.escape(text)
        out.append(Line(place_text(place), body, when))
    return out


def split_pieces(
    pieces: list[tuple[int, int, bytes]], at_start: bool
) -> tuple[list[tuple[Place, bytes]], tuple[Place, bytes]]:
    """Complete lines with their places, and the unfinished last line, from ascending pieces.

    A piece is `(seq, offset of its first byte in that chunk, bytes)`. Unless the pieces begin
    at the stream's start, the first line may have begun earlier, so it is left out.
    """
    lines: list[tuple[Place, bytes]] = []
    if not pieces:
        return lines, ((0, 0), b"")
    start: Place = (pieces[0][0], pieces[0][1])
    current = b""
    complete_first = at_start
    for seq, base, data in pieces:
        last = 0
        while (idx := data.find(b"\n", last)) >= 0:
            if complete_first:
                lines.append((start, current + data[last:idx]))
            complete_first = True
            current = b""
            start = (seq, base + idx + 1)
            last = idx + 1
        current += data[last:]
    return lines, (start, current if complete_first else b"")


def _collect_backwards(
    chunks: Iterator[tuple[int, bytes]], first: tuple[int, int, bytes] | None, n: int
) -> tuple[list[tuple[int, int, bytes]], bool]:
    """Read chunks newest first until n+1 line ends (or the start): ascending pieces, at_start."""
    pieces: list[tuple[int, int, bytes]] = [first] if first is not None else []
    newlines = first[2].count(b"\n") if first is not None else 0
    size = len(first[2]) if first is not None else 0
    for seq, data in chunks:
        if newlines > n or size > MAX_WINDOW_BYTES:
            break
        pieces.append((seq, 0, data))
        newlines += data.count(b"\n")
        size += len(data)
    pieces.reverse()
    at_start = bool(pieces) and pieces[0][0] == 0 and pieces[0][1] == 0
    return pieces, at_start


def _chunks_desc(
    iid: str, stream: str, before: int | None, times: dict[int, datetime.datetime | None]
) -> Iterator[tuple[int, bytes]]:
    """Chunks newest first; notes in `times` when each one read arrived."""
    rows = StreamChunk.objects.filter(instance_id=iid, stream=stream)
    if before is not None:
        rows = rows.filter(seq__lt=before)
    fields = ("seq", "data", "created")
    for seq, data, created in rows.order_by("-seq").values_list(*fields).iterator(chunk_size=64):
        times[seq] = created
        yield seq, bytes(data)


@dataclass
class Window:
    lines: list[tuple[Place, bytes]]
    earlier: Place | None  # where "load earlier" starts; None at the stream's start
    next_seq: int  # the first chunk not read yet (to follow from)
    pending: tuple[Place, bytes]  # the unfinished last line
    times: dict[int, datetime.datetime | None] = field(default_factory=dict)  # chunk arrivals


def tail(iid: str, stream: str, n: int | None = None) -> Window:
    """The last n complete lines of a stream as the database holds it now."""
    n = n or window_lines()
    times: dict[int, datetime.datetime | None] = {}
    chunks = _chunks_desc(iid, stream, None, times)
    pieces, at_start = _collect_backwards(chunks, None, n)
    if not pieces:
        return Window([], None, 0, ((0, 0), b""))
    lines, pending = split_pieces(pieces, at_start)
    shown = lines[-n:]
    earlier = None
    if shown and not (at_start and len(lines) <= n):
        earlier = shown[0][0]
    return Window(shown, earlier, pieces[-1][0] + 1, pending, times)


def earlier(iid: str, stream: str, before: Place, n: int | None = None) -> Window:
    """The n lines that end where the line at `before` starts."""
    n = n or window_lines()
    seq, off = before
    first = None
    times: dict[int, datetime.datetime | None] = {}
    if off > 0:
        row = StreamChunk.objects.filter(instance_id=iid, stream=stream, seq=seq).first()
        if row is not None:
            first = (seq, 0, bytes(row.data)[:off])
            times[seq] = row.created
    pieces, at_start = _collect_backwards(_chunks_desc(iid, stream, seq, times), first, n)
    lines, _ = split_pieces(pieces, at_start)
    shown = lines[-n:]
    more = shown[0][0] if shown and not (at_start and len(lines) <= n) else None
    return Window(shown, more, seq, ((0, 0), b""), times)


def raw_chunks(iid: str, stream: str) -> Iterator[bytes]:
    """Every stored chunk in order, for downloads."""
    rows = StreamChunk.objects.filter(instance_id=iid, stream=stream).order_by("seq")
    for data in rows.values_list("data", flat=True).iterator(chunk_size=64):
        yield bytes(data)


class LineSplitter:
    """Turns followed chunks into complete lines with places, remembering the unfinished one."""

    def __init__(self, next_seq: int, pending: tuple[Place, bytes]) -> None:
        self.seq = next_seq
        self.start, self.current = pending
        if not self.current and self.start == (0, 0) and next_seq > 0:
            self.start = (next_seq, 0)

    def feed(self, data: bytes) -> list[tuple[Place, bytes]]:
        seq = self.seq
        self.seq += 1
        out = []
        last = 0
        while (idx := data.find(b"\n", last)) >= 0:
            out.append((self.start, self.current + data[last:idx]))
            self.current = b""
            self.start = (seq, idx + 1)
            last = idx + 1
        self.current += data[last:]
        if len(self.current) > 1 << 20:
            # A "line" that never ends: show it in pieces rather than hold it forever.
            out.append((self.start, self.current))
            self.current = b""
            self.start = (seq, len(data))
        return out

    def finish(self) -> list[tuple[Place, bytes]]:
        if not self.current:
            return []
        line, self.current = (self.start, self.current), b""
        return [line]
