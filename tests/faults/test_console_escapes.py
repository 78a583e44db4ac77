"""Escape sequences a hostile sequence prints, against the console's renderer (`render_lines`).

docs/console.md: OSC 8 hyperlinks are never links on the hub's pages (their text shows as
plain text) and only SGR colours are drawn. Each case here is a way to smuggle a sequence past
a stripper: nesting one inside another, so that removing the inner one forms the outer; ESC
inside an OSC; the 8-bit C1 forms; either terminator; a sequence split across chunks or cut
by the line's end. Whatever the form, the HTML holds no `<a`, no `href`, no ESC and no C1
control.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboard.logs import MAX_LINE_CHARS, LineSplitter, Place, render_lines

LINK = "\x1b]8;;https://evil.example/\x07click me\x1b]8;;\x07"
C1 = re.compile(r"[\x80-\x9f]")

# What the brief of this fix reported: after one pass of stripping, the link re-formed.
NESTED = "\x1b\x1b]\x07]8;;https://evil.example/\x07click me\x1b\x1b]\x07]8;;\x07"

HOSTILE = [
    NESTED,
    # An OSC inside an OSC's opener, with either terminator.
    "\x1b]\x1b]8;;https://evil.example/\x07\x07click me\x1b]8;;\x07",
    "\x1b]8;;\x1b]8;;https://evil.example/\x1b\\\x1b\\click me\x1b]8;;\x1b\\",
    # ESC inside an OSC's body cuts it short; the rest must not form a link either.
    "\x1b]8;;https://evil.example/\x1b\x1b]8;;\x07x\x07click me\x1b]8;;\x07",
    "\x1b]8;;https://evil.\x1b[31mexample/\x07click me\x1b]8;;\x07",
    # A CSI or another ESC sequence (charset, save cursor) wedged between ESC and `]`.
    "\x1b\x1b[0m]8;;https://evil.example/\x07click me\x1b\x1b[0m]8;;\x07",
    "\x1b\x1b(B]8;;https://evil.example/\x07click me\x1b\x1b7]8;;\x07",
    "\x1b[\x1b]8;;https://evil.example/\x07click me\x1b]8;;\x07",
    # Deeper nesting: three levels of `ESC ESC ] BEL ]`.
    "\x1b\x1b\x1b\x1b]\x07]\x07]\x07]8;;https://evil.example/\x07click me\x1b]8;;\x07",
    # The 8-bit forms: C1 OSC (U+009D) and ST (U+009C), C1 CSI (U+009B), DCS, APC.
    "\x9d8;;https://evil.example/\x9cclick me\x9d8;;\x9c",
    "\x9d8;;https://evil.example/\x07click me\x9d8;;\x07",
    "\x1b\x9d\x9c]8;;https://evil.example/\x07click me\x1b]8;;\x07",
    "\x1b\x9b0m]8;;https://evil.example/\x07click me\x1b]8;;\x07",
    "\x1bP\x1b]8;;https://evil.example/\x07click me\x1b\\\x1b]8;;\x07",
    "\x1b_\x1b\x1b]\x07]8;;https://evil.example/\x07click me\x1b]8;;\x07\x9c",
    # Terminators mixed: opened with BEL, closed with ST, and the other way round.
    "\x1b]8;;https://evil.example/\x07click me\x1b]8;;\x1b\\",
    "\x1b]8;;https://evil.example/\x1b\\click me\x1b]8;;\x07",
    # javascript: links and ids, ansi2html's own OSC 8 form with no closing.
    "\x1b]8;id=1;javascript:alert(1)\x07click me\x1b]8;;\x07",
    "\x1b]8;;javascript:alert(1)\x07click me",
]


def rendered(text: str | bytes, stream: str = "stdout") -> str:
    raw = text if isinstance(text, bytes) else text.encode()
    return render_lines([((0, 0), raw)], stream=stream)[0].html


def assert_inert(html: str) -> None:
    assert "<a" not in html and "href" not in html, repr(html)
    assert "\x1b" not in html, repr(html)
    assert not C1.search(html), repr(html)


@pytest.mark.parametrize("line", HOSTILE, ids=range(len(HOSTILE)))
def test_no_nested_or_odd_escape_becomes_a_link(line):
    html = rendered(line)
    assert_inert(html)
    assert "click me" in html


@pytest.mark.parametrize("line", HOSTILE, ids=range(len(HOSTILE)))
def test_the_raw_c1_bytes_are_inert_too(line):
    # A C1 control as one byte (latin-1), not UTF-8: not valid UTF-8, so it decodes to U+FFFD.
    assert_inert(rendered(line.encode("utf-8").replace(b"\xc2", b"")))


def test_a_removable_sequence_wedged_anywhere_in_a_link_forms_nothing():
    """Every place in the link, every sequence a stripper removes, once and nested twice."""
    wedges = ["\x1b]\x07", "\x1b]\x1b\\", "\x1b[0K", "\x1b(B", "\x1b", "\x9d\x9c", "\x9b", "\x1bP"]
    for i in range(len(LINK) + 1):
        for wedge in wedges:
            for inner in ("", *wedges):
                nested = wedge[:1] + inner + wedge[1:] if inner else wedge
                assert_inert(rendered(LINK[:i] + nested + LINK[i:]))


@settings(max_examples=600, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.text(alphabet="\x1b\x07\x9b\x9c\x9d]8;[\\(Pmhax=:/ <>\"'", max_size=60))
def test_fuzzed_escape_soup_is_inert(soup):
    assert_inert(rendered(soup))
    assert_inert(rendered(soup + LINK))
    assert_inert(rendered(LINK.replace("click", soup)))


def chunked_renders(data: bytes, cut: int) -> list[str]:
    """What the live console shows when `data` arrives in two chunks cut at `cut`: after each
    chunk the finished lines and the unfinished one (a prompt), as dashboard/consumers.py."""
    splitter = LineSplitter(0, ((0, 0), b""))
    shown: list[str] = []
    for chunk in (data[:cut], data[cut:]):
        lines: list[tuple[Place, bytes]] = splitter.feed(chunk)
        shown += [line.html for line in render_lines(lines)]
        if splitter.current:
            shown.append(render_lines([(splitter.start, splitter.current)])[0].html)
    shown += [line.html for line in render_lines(splitter.finish())]
    return shown


def test_sequences_split_across_chunks_form_nothing():
    for line in (LINK, NESTED, HOSTILE[10]):
        data = ("before\n" + line + "\nafter " + line).encode()
        for cut in range(len(data) + 1):
            shown = chunked_renders(data, cut)
            for html in shown:
                assert_inert(html)
            assert "before" in shown


def test_a_link_split_across_lines_forms_nothing():
    lines = [b"\x1b]8;;https://evil.example/", b"\x07click me\x1b]8;;", b"\x07"]
    for line in render_lines([((0, i), raw) for i, raw in enumerate(lines)]):
        assert_inert(line.html)


def test_log_rows_carry_no_escapes():
    entry = {"ts": 0, "level": "info", "msg": NESTED, "from": "\x1b]0;t\x07x", "exc": LINK}
    html = rendered(json.dumps(entry), stream="log")
    assert '<span class="m">' in html  # a row, not a plain line
    assert_inert(html)
    assert "click me" in html


def test_what_legit_output_looks_like_is_kept():
    """The documented behaviour: colours drawn, OSC 8 shown as its text, others dropped."""
    assert rendered("\x1b[31mred\x1b[0m plain") == '<span class="ansi31">red</span> plain'
    assert rendered("\x1b[1;38;5;208mx\x1b[0m") == '<span class="ansi1 ansi38-208">x</span>'
    assert rendered("see " + LINK + " now") == "see click me now"
    assert rendered("see \x1b]8;;u\x1b\\the docs\x1b]8;;\x1b\\ now") == "see the docs now"
    assert rendered("\x1b]0;title\x07\x1b[31mred\x1b[0m") == '<span class="ansi31">red</span>'
    # Cursor, erase and mode sequences vanish whole rather than leaving `[2J` behind.
    assert rendered("\x1b[2J\x1b[Hclear\x1b[?25l\x1b[K") == "clear"
    assert rendered("<b>\x1b[0m&</b>") == "&lt;b&gt;&amp;&lt;/b&gt;"
    # An OSC cut by the line's cap does not swallow the note that says so.
    long = "x" * (MAX_LINE_CHARS - 5) + LINK + "y" * 10
    html = rendered(long)
    assert html.startswith("x" * 10) and html.endswith("more characters)")
    assert_inert(html)
