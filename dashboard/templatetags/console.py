"""Small template helpers for the console pages."""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

from django import template
from django.utils import timezone

register = template.Library()


@register.filter
def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False)


@register.filter
def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "), ensure_ascii=False)


@register.filter
def lower_class(value: Any) -> str:
    """A status or state as a CSS class: `InFlight` -> `s-inflight`."""
    return _status_class(str(value))


@functools.lru_cache(maxsize=256)
def _status_class(value: str) -> str:
    # Once per distinct status: a list page asks for the same few hundreds of times.
    return "s-" + "".join(ch for ch in value.lower() if ch.isalnum())


@register.simple_tag
def duration(start: datetime | None, end: datetime | None = None) -> str:
    """`1 h 02 min`, `3.2 s`: how long from start to end (or to now)."""
    if start is None:
        return ""
    seconds = ((end or timezone.now()) - start).total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@register.filter
def breakable(value: Any) -> str:
    """Escaped text that may wrap after `.`, `-`, `_` or `/` (narrow tables on phones)."""
    from django.utils.html import escape
    from django.utils.safestring import mark_safe

    text = str(escape(value))
    for mark in ".-_/":
        text = text.replace(mark, mark + "<wbr>")
    return mark_safe(text)
