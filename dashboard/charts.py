"""Small charts as server-rendered SVG: no chart library, no script, no inline style.

The hub's CSP allows no inline style (dashboard/middleware.py), so an SVG here carries only
geometry (x, y, width, points) and classes; colours come from static/css/console.css (dark
mode included). Every chart has a `<title>` per mark for hovering and an `aria-label` that says
its figures in words, and draws something readable for no data at all. Text is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

from sequences.resources import Sample
from sequences.trends import Bucket


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # not reached


def fmt_seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def fmt_uptime(seconds: float) -> str:
    """As static/js/uptime.js writes it, so the ticking figure does not jump on load."""
    s = max(0, int(seconds))
    d, h, m, r = s // 86400, s % 86400 // 3600, s % 3600 // 60, s % 60
    if d:
        return f"{d} d {h:02d} h {m:02d} min"
    if h:
        return f"{h} h {m:02d} min {r:02d} s"
    if m:
        return f"{m} min {r:02d} s"
    return f"{r} s"


def fmt_percent(p: float) -> str:
    return f"{p:.1f} %"


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _nice_max(value: float) -> float:
    """A round top for an axis at or above `value` (1, 2 or 5 times a power of 10)."""
    if value <= 0:
        return 1.0
    step = 1.0
    while step * 10 <= value:
        step *= 10
    while step > value:
        step /= 10
    for m in (1, 2, 5, 10):
        if m * step >= value:
            return m * step
    return 10 * step


def _svg(
    css: str, width: int, height: int, label: str, body: str, stretch: bool = False
) -> SafeString:
    # `stretch`: the drawing fills its box at any width (a chart without text in it).
    aspect = ' preserveAspectRatio="none"' if stretch else ""
    return mark_safe(  # every value in `body` was escaped or is a number
        f'<svg class="chart {escape(css)}" viewBox="0 0 {width} {height}"{aspect} '
        f'role="img" aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(label)}</title>{body}</svg>"
    )


SPARK_W, SPARK_H, SPARK_TOP = 300, 60, 2


@dataclass(frozen=True)
class Spark:
    """A resource chart: the SVG (geometry only: it stretches to its box, so it carries no
    text that would stretch with it) and its caption in HTML (the figures, in words)."""

    svg: SafeString
    caption: SafeString


def sparkline(
    samples: Sequence[Sample], what: str, css: str = "cpu", unit: str = "percent"
) -> Spark:
    """One resource over the instance's life: `what` is "cpu" or "rss" of each sample."""
    fmt = fmt_percent if unit == "percent" else fmt_bytes
    name = "CPU" if what == "cpu" else "Memory"
    values = [float(getattr(s, what)) for s in samples]
    bottom = SPARK_H - 1
    frame = (
        f'<line class="chart-grid" x1="0" y1="{SPARK_TOP}" x2="{SPARK_W}" y2="{SPARK_TOP}"/>'
        f'<line class="chart-axis" x1="0" y1="{bottom}" x2="{SPARK_W}" y2="{bottom}"/>'
    )
    if not values:
        label = f"{name}: no samples"
        return Spark(
            _svg(f"spark {css} empty", SPARK_W, SPARK_H, label, frame, stretch=True),
            format_html('<b>{}</b> <span class="muted">no samples</span>', name),
        )
    peak = max(values)
    top = _nice_max(peak * 1.05 if unit != "percent" else max(peak, 10))
    t0, t1 = samples[0].at, samples[-1].at
    span = max(t1 - t0, 1e-9)
    plot_h = bottom - SPARK_TOP

    def xy(sample: Sample, value: float) -> str:
        x = 0.0 if len(samples) == 1 else (sample.at - t0) / span * SPARK_W
        y = SPARK_TOP + plot_h - value / top * plot_h
        return f"{_num(x)},{_num(y)}"

    line = " ".join(xy(s, v) for s, v in zip(samples, values, strict=True))
    if len(samples) == 1:  # a single sample: a flat line across, so it shows
        y = line.split(",")[1]
        line = f"0,{y} {SPARK_W},{y}"
    area = f"0,{bottom} {line} {SPARK_W},{bottom}"
    last = values[-1]
    when = timezone.localtime(datetime.fromtimestamp(t1, tz=timezone.get_current_timezone()))
    count = f"{len(values)} sample{'s' if len(values) != 1 else ''}"
    label = f"{name}: now {fmt(last)}, peak {fmt(peak)}, {count} up to {when:%H:%M:%S}"
    body = (
        frame + f'<polygon class="chart-area" points="{area}"/>'
        f'<polyline class="chart-line" points="{line}"/>'
    )
    caption = format_html(
        '<b>{}</b> <span class="chart-now">{}</span> '
        '<span class="muted">· peak {} · scale 0 to {}</span>',
        name,
        fmt(last),
        fmt(peak),
        fmt(top),
    )
    return Spark(_svg(f"spark {css}", SPARK_W, SPARK_H, label, body, stretch=True), caption)


BARS_W, BARS_H, BARS_LEFT, BARS_BOTTOM, BARS_TOP = 480, 150, 28, 18, 8


def stacked_bars(
    buckets: Sequence[Bucket], series: Sequence[tuple[str, str]], label: str
) -> SafeString:
    """Runs per bucket (an hour), one stacked bar each, coloured by class `end-<series>`."""
    total = sum(b.total for b in buckets)
    n = max(len(buckets), 1)
    plot_w = BARS_W - BARS_LEFT
    plot_h = BARS_H - BARS_BOTTOM - BARS_TOP
    slot = plot_w / n
    bar = max(slot * 0.8, 1.0)
    top = _nice_max(max((b.total for b in buckets), default=0))
    base = BARS_TOP + plot_h
    parts = [
        f'<line class="chart-grid" x1="{BARS_LEFT}" y1="{BARS_TOP}" x2="{BARS_W}" '
        f'y2="{BARS_TOP}"/>',
        f'<text class="chart-label" x="{BARS_LEFT - 4}" y="{BARS_TOP + 4}" '
        f'text-anchor="end">{_num(top)}</text>',
        f'<text class="chart-label" x="{BARS_LEFT - 4}" y="{base}" text-anchor="end">0</text>',
    ]
    for i, bucket in enumerate(buckets):
        x = BARS_LEFT + i * slot + (slot - bar) / 2
        start = timezone.localtime(bucket.start)
        y = float(base)
        for name, _ in series:
            count = bucket.counts.get(name, 0)
            if not count:
                continue
            h = count / top * plot_h
            y -= h
            parts.append(
                f'<rect class="end-{escape(name)}" x="{_num(x)}" y="{_num(y)}" '
                f'width="{_num(bar)}" height="{_num(h)}" data-count="{count}">'
                f"<title>{start:%H}:00 · {count} {escape(name)}</title></rect>"
            )
        if i % 6 == 0 or i == n - 1:
            parts.append(
                f'<text class="chart-label" x="{_num(x + bar / 2)}" y="{BARS_H - 4}" '
                f'text-anchor="middle">{start:%H}:00</text>'
            )
    parts.append(
        f'<line class="chart-axis" x1="{BARS_LEFT}" y1="{base}" x2="{BARS_W}" y2="{base}"/>'
    )
    if not total:
        parts.append(
            f'<text class="chart-empty" x="{BARS_LEFT + plot_w / 2}" y="{BARS_TOP + plot_h / 2}" '
            f'text-anchor="middle">no runs</text>'
        )
    return _svg("bars", BARS_W, BARS_H, f"{label}: {total} runs", "".join(parts))


def meter(parts: Sequence[tuple[str, float]], full: float, label: str) -> SafeString:
    """A thin horizontal bar: `parts` (class, value) laid end to end over a track of `full`."""
    body = ['<rect class="meter-track" x="0" y="0" width="100" height="8"/>']
    x = 0.0
    for css, value in parts:
        w = max(0.0, min(100.0 - x, value / full * 100 if full > 0 else 0.0))
        if w > 0:
            body.append(
                f'<rect class="{escape(css)}" x="{_num(x)}" y="0" width="{_num(w)}" height="8"/>'
            )
        x += w
    return mark_safe(  # numbers and escaped classes only
        f'<svg class="meter" viewBox="0 0 100 8" preserveAspectRatio="none" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(label)}</title>{''.join(body)}</svg>"
    )


def durations_meter(p50: float, p95: float, longest: float) -> SafeString:
    """p50 (solid) inside p95 (light), against the longest p95 shown."""
    label = f"p50 {fmt_seconds(p50)}, p95 {fmt_seconds(p95)}"
    return meter([("meter-p50", p50), ("meter-p95", max(0.0, p95 - p50))], longest, label)


def load_meter(running: int, capacity: int) -> SafeString:
    label = f"{running} of {capacity} places in use"
    return meter([("meter-load", float(running))], float(max(capacity, 1)), label)


def legend(series: Sequence[tuple[str, str]], totals: dict[str, int]) -> SafeString:
    """The key of a stacked chart, as HTML (it wraps on a phone where SVG text would not)."""
    items = [
        format_html(
            '<li><span class="swatch end-{}"></span>{} <b>{}</b></li>',
            name,
            name,
            totals.get(name, 0),
        )
        for name, _ in series
    ]
    return mark_safe(f'<ul class="legend">{"".join(items)}</ul>')  # items: format_html
