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


@register.filter
def when(value: datetime | str | None, fmt: str = "Y-m-d H:i") -> str:
    """A moment as `<time>`: the absolute time in the hub's zone with the zone named (what a
    page without JS shows, and the hover title), which console.js turns into "3 min ago" and
    keeps ticking. `fmt` is Django's date format of the visible text:
    `{{ e.created|when:"H:i:s" }}`.
    An ISO 8601 string (a time kept in JSON) is read first; anything unreadable shows as it is.
    """
    from django.utils.dateformat import format as date_format
    from django.utils.dateparse import parse_datetime
    from django.utils.html import format_html

    if not value:
        return ""
    if isinstance(value, str):
        parsed = parse_datetime(value)
        if parsed is None:
            return value
        value = parsed
    local = timezone.localtime(value) if timezone.is_aware(value) else value
    return format_html(
        '<time datetime="{}" title="{}" data-when>{}</time>',
        value.isoformat(),
        date_format(local, "Y-m-d H:i:s T"),
        date_format(local, f"{fmt} T"),
    )


@register.simple_tag
def state_badge(instance: Any, big: bool = False) -> str:
    """An instance's badge: its outcome once it ended (colour and word: completed, failed,
    stopped, killed, lost, refused; the title says who or what ended it), else its status."""
    from django.utils.html import format_html

    from sequences import outcomes

    size = " big" if big else ""
    found = outcomes.ended(instance)
    if found is None:
        status = str(instance.status)
        return format_html(
            '<span class="badge{} {}" data-status="{}">{}</span>',
            size,
            _status_class(status),
            status,
            status,
        )
    return format_html(
        '<span class="badge{} o-{}" data-status="{}" data-outcome="{}" title="{}">{}</span>',
        size,
        found.outcome,
        instance.status,
        found.outcome,
        found.text,
        outcomes.LABELS[found.outcome],
    )


@register.filter
def ending(instance: Any) -> Any:
    """How an instance ended (sequences.outcomes.Ended: outcome, kind, user, text), or None."""
    from sequences import outcomes

    return outcomes.ended(instance)


@register.simple_tag
def run_badge(sequencer: Any, running_too: bool = False) -> str:
    """The badge of a sequencer's last run: Completed, Failed at step N, Aborted, Stopped,
    Killed, or "Paused before step N" while it waits at a breakpoint (Running alone would hide
    that nothing runs); "" when there was no run (or it runs, unless `running_too`)."""
    from django.utils.html import format_html

    from sequences import sequencer_store, statemachine

    found = statemachine.run_outcome(sequencer_store.snapshot_of(sequencer))
    if found is None or (found.outcome == "running" and not running_too):
        return ""
    return format_html(
        '<span class="badge o-{}" data-run-outcome="{}">{}</span>',
        found.outcome,
        found.outcome,
        found.label,
    )
