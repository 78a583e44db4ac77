"""The `when` filter: one `<time>` for every time a list shows (console.js makes it relative)."""

from __future__ import annotations

from datetime import UTC, datetime

from django.template import Context, Template
from django.utils import timezone

MOMENT = datetime(2026, 12, 3, 19, 54, 4, tzinfo=UTC)


def render(text: str, **context: object) -> str:
    return Template("{% load console %}" + text).render(Context(context))


def test_the_absolute_time_and_its_zone_are_the_text_and_the_title():
    html = render("{{ t|when }}", t=MOMENT)
    assert html == (
        '<time datetime="2026-12-03T19:54:04+00:00" title="2026-12-03 19:54:04 UTC"'
        " data-when>2026-12-03 19:54 UTC</time>"
    )
    assert ">19:54:04 UTC</time>" in render('{{ t|when:"H:i:s" }}', t=MOMENT)


def test_the_hub_zone_is_named(settings):
    settings.TIME_ZONE = "Europe/Berlin"
    with timezone.override("Europe/Berlin"):
        html = render("{{ t|when }}", t=MOMENT)
    assert 'datetime="2026-12-03T19:54:04+00:00"' in html  # the machine-readable moment stays
    assert 'title="2026-12-03 20:54:04 CET"' in html


def test_iso_strings_nothing_and_nonsense():
    assert 'datetime="2026-12-03T19:54:04+00:00"' in render("{{ t|when }}", t=MOMENT.isoformat())
    assert render("[{{ t|when }}]", t=None) == "[]"
    assert render("{{ t|when }}", t="<b>soon</b>") == "&lt;b&gt;soon&lt;/b&gt;"
