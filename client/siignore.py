"""`.siignore`: gitignore-like patterns saying which files of a directory stay out of a package.

Supported, as in gitignore: blank lines and `#` comments; `!` to re-include; a trailing `/`
for directories only; a pattern with a `/` at the start or in the middle is anchored to the
package root, one without matches a name at any depth; `*`, `?`, `[...]`, `**` (any number of
directories). The last matching pattern wins, and a file inside an ignored directory cannot be
re-included (the directory is never entered).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Rule:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool
    source: str


def _class(pat: str, i: int) -> tuple[str, int]:
    """Translate a `[...]` class starting at `pat[i]`; a `[` with no `]` is a literal."""
    j = i + 1
    if j < len(pat) and pat[j] in "!^":
        j += 1
    if j < len(pat) and pat[j] == "]":
        j += 1
    while j < len(pat) and pat[j] != "]":
        j += 1
    if j >= len(pat):
        return re.escape("["), i + 1
    body = pat[i + 1 : j]
    if body[:1] in ("!", "^"):
        body = "^" + body[1:]
    return "[" + body.replace("\\", "\\\\") + "]", j + 1


def _translate(pat: str) -> str:
    out = []
    i = 0
    while i < len(pat):
        if pat.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pat.startswith("/**", i) and i + 3 == len(pat):
            out.append("/.*")
            i += 3
        elif pat.startswith("**", i):
            out.append(".*")
            i += 2
        elif pat[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pat[i] == "?":
            out.append("[^/]")
            i += 1
        elif pat[i] == "[":
            part, i = _class(pat, i)
            out.append(part)
        elif pat[i] == "\\" and i + 1 < len(pat):
            out.append(re.escape(pat[i + 1]))
            i += 2
        else:
            out.append(re.escape(pat[i]))
            i += 1
    return "".join(out)


def parse_rule(line: str) -> Rule | None:
    """One `.siignore` line as a rule, or None for blank lines and comments."""
    source = line
    line = line.rstrip("\n").rstrip("\r")
    # Trailing spaces are dropped unless escaped with a backslash.
    stripped = line.rstrip(" ")
    if stripped.endswith("\\") and len(stripped) < len(line):
        stripped += " "
    line = stripped
    if not line or line.startswith("#"):
        return None
    negate = line.startswith("!")
    if negate or line.startswith("\\!") or line.startswith("\\#"):
        line = line[1:]
    dir_only = line.endswith("/")
    line = line.rstrip("/")
    if not line:
        return None
    anchored = "/" in line
    line = line.lstrip("/")
    prefix = "" if anchored else "(?:.*/)?"
    return Rule(re.compile(f"^{prefix}{_translate(line)}$"), negate, dir_only, source.strip())


class IgnoreRules:
    """Rules of one `.siignore`; `ignored(path, is_dir)` takes a root-relative posix path."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules

    @classmethod
    def parse(cls, text: str) -> IgnoreRules:
        return cls([r for r in (parse_rule(line) for line in text.splitlines()) if r])

    @classmethod
    def of_dir(cls, root: Path) -> IgnoreRules:
        """The rules of `root/.siignore`, or no rules when there is none."""
        path = root / ".siignore"
        return cls.parse(path.read_text(encoding="utf-8")) if path.is_file() else cls([])

    def ignored(self, rel: str, is_dir: bool = False) -> bool:
        result = False
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.match(rel):
                result = not rule.negate
        return result

    def excluded(self, rel: str) -> bool:
        """Whether a file stays out of the package: it, or one of its directories, is ignored."""
        parts = rel.split("/")
        for n in range(1, len(parts)):
            if self.ignored("/".join(parts[:n]), is_dir=True):
                return True
        return self.ignored(rel)
