"""How the `si` CLI shows things: short lines and tables for people, one JSON document with
`--json` for scripts, errors on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from client.errors import HubClientError


def stdin_chunks() -> Iterator[bytes]:
    """Standard input as it arrives, so `si inst input` streams a pipe instead of waiting for
    its end."""
    read = getattr(sys.stdin.buffer, "read1", sys.stdin.buffer.read)
    while chunk := read(65536):
        yield chunk


def data_source(path: str | None) -> Iterator[bytes] | IO[bytes]:
    """What `input`, `stdin` and `topic send` send: the file at `path`, or standard input for
    none or `-`."""
    if path and path != "-":
        return Path(path).open("rb")
    return stdin_chunks()


def parse_value(text: str) -> Any:
    """A command-line value as JSON where it parses (`3000` → 3000, `true` → True,
    `[1,2]` → a list), else the text itself (`hello` stays "hello")."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def short_time(value: Any) -> str:
    """ISO 8601 to `YYYY-MM-DD HH:MM:SS` (tables have no room for microseconds)."""
    if not isinstance(value, str) or "T" not in value:
        return "" if value is None else str(value)
    return value.replace("T", " ")[:19]


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain text table with columns padded to their widest cell."""
    cells = [[str(h) for h in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def scalar(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value)
    return "" if value is None else str(value)


def key_values(data: dict[str, Any], keys: Iterable[str] | None = None) -> str:
    """`key: value` lines; nested values as compact JSON."""
    keys = list(keys) if keys is not None else list(data)
    width = max((len(k) for k in keys), default=0)
    return "\n".join(f"{k.ljust(width)}  {scalar(data.get(k))}" for k in keys if k in data)


class Output:
    """Where results go: `show` prints either the human rendering or the JSON document."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def show(self, data: Any, human: str | Callable[[Any], str] | None = None) -> None:
        if self.as_json:
            print(json.dumps(data))
            return
        if human is None:
            text = json.dumps(data, indent=2) if not isinstance(data, str) else data
        elif callable(human):
            text = human(data)
        else:
            text = human
        if text:
            print(text)

    def note(self, text: str) -> None:
        """A remark for people, never mixed into what scripts read from stdout."""
        if not self.as_json:
            print(text, file=sys.stderr)

    def error(self, exc: BaseException) -> None:
        if isinstance(exc, HubClientError):
            data = exc.as_json()
            text = f"error: {exc}"
        else:
            data = {"error": str(exc), "code": type(exc).__name__, "status": 0}
            text = f"error: {exc}"
        print(json.dumps(data) if self.as_json else text, file=sys.stderr)

    def write_stream(self, chunks: Iterable[bytes]) -> None:
        """Copy a stream to stdout as it arrives."""
        out = sys.stdout.buffer
        for chunk in chunks:
            out.write(chunk)
            out.flush()
