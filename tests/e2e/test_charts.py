"""Resources and trends in a real browser (issue 17, item 3): the instance page's CPU and memory
charts fill in live while a real worker samples the instance and its uptime ticks; the
overview's runs chart, duration table and worker load draw; at 1280 px and 390 px, without
sideways scrolling. Screenshots go to tests/artifacts/charts/ (ignored by git).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from playwright import sync_api as playwright_api

from tests.conftest import wait_for
from tests.e2e.test_screens import DESKTOP, OVERFLOWING, PHONE, Screen
from tests.packaging import python_package, upload
from tests.runner.test_resources import BUSY

SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "charts"

pytestmark = [pytest.mark.timeout(300)]
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

expect = playwright_api.expect


def fits(page, name: str, size: dict[str, int]) -> None:
    """No sideways scrolling at this width; a full-page screenshot is kept either way."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size(size)
    page.wait_for_timeout(150)  # a layout pass at the new width
    page.screenshot(path=str(SHOTS / f"{name}-{size['width']}.png"), full_page=True)
    found = page.evaluate(OVERFLOWING)
    assert found["scroll"] <= found["inner"], f"{name} at {size['width']} px: {found}"


def chart_fits(page, selector: str, size: dict[str, int]) -> None:
    box = page.locator(selector).first.bounding_box()
    assert box is not None and box["width"] > 100, f"{selector} is not drawn: {box}"
    assert box["x"] >= 0 and box["x"] + box["width"] <= size["width"], box


def test_instance_charts_fill_in_live_and_the_uptime_ticks(hub, people, browser, admin_api):
    sid = upload(admin_api, python_package(BUSY))
    started = admin_api.post(f"/sequence/{sid}/start", json={"args": []})
    assert started.status_code == 200, started.text
    iid = started.json()["id"]
    screen = Screen(browser, hub.url, people["admin"])
    page = screen.page
    try:
        screen.go(f"/instances/{iid}/")
        cpu = page.locator("#inst-resources svg.chart.cpu")
        rss = page.locator("#inst-resources svg.chart.rss")
        expect(cpu).to_be_visible()
        # Samples come over the page's socket (every HUB_SAMPLE_SECONDS), with no reload: the
        # count the page shows grows past what it loaded with.
        loaded = int(page.locator("[data-samples]").get_attribute("data-samples") or 0)
        page.wait_for_function(
            "n => Number(document.querySelector('[data-samples]').dataset.samples) > n",
            arg=max(loaded, 1),
            timeout=30_000,
        )
        expect(page.locator("#inst-resources svg.chart.cpu polyline.chart-line")).to_have_count(1)
        expect(rss).to_have_attribute("aria-label", re.compile(r"Memory: now \d"))
        label = rss.get_attribute("aria-label") or ""
        assert "MiB" in label, label  # it holds 64 MiB
        uptime = page.locator("#inst-resources time[data-uptime]")
        first = uptime.inner_text()
        page.wait_for_timeout(2100)
        assert uptime.inner_text() != first, "the uptime does not tick"
        for size in (DESKTOP, PHONE):
            fits(page, "instance-resources", size)
            chart_fits(page, "#inst-resources svg.chart.cpu", size)
            chart_fits(page, "#inst-resources svg.chart.rss", size)
        page.set_viewport_size(DESKTOP)
        # After the end the charts stay, and the uptime becomes how long it ran.
        admin_api.post(f"/instance/{iid}/_kill", json={})
        expect(page.locator("#inst-resources time[data-uptime]")).to_have_count(0, timeout=20_000)
        expect(page.locator("#inst-resources h2")).to_contain_text("ran ")
        expect(cpu).not_to_have_class(re.compile(r"\bempty\b"))
        fits(page, "instance-resources-ended", DESKTOP)
    finally:
        admin_api.post(f"/instance/{iid}/_kill", json={})
    assert not screen.errors, screen.errors


def test_overview_trends_draw_at_both_widths(hub, people, browser, admin_api):
    sid = upload(admin_api, python_package("def run(context, input):\n    return 'done'\n"))
    iid = admin_api.post(f"/sequence/{sid}/start", json={"args": []}).json()["id"]
    wait_for(
        lambda: admin_api.get(f"/instance/{iid}").json()["status"] == "completed",
        what="the run to end",
    )
    # A worker's row as its heartbeat keeps it. (The session hub's own worker row does not
    # survive the table flush between transactional tests: its beats update, never create.)
    from django.utils import timezone

    from sequences.models import Worker

    Worker.objects.update_or_create(
        name="e2e-load-worker",
        defaults={"hostname": "e2e", "pid": 1, "capacity": 4, "running": 3},
        create_defaults={
            "hostname": "e2e",
            "pid": 1,
            "capacity": 4,
            "running": 3,
            "last_seen": timezone.now(),
        },
    )
    Worker.objects.filter(name="e2e-load-worker").update(last_seen=timezone.now())
    screen = Screen(browser, hub.url, people["admin"])
    page = screen.page
    # The web works the trends out at most every 10 s: look again until this run is in them.
    deadline = time.monotonic() + 25
    while True:
        screen.go("/")
        if page.locator("#ov-trends svg.chart.bars rect.end-completed").count():
            break
        assert time.monotonic() < deadline, "the completed run is not in the runs chart"
        page.wait_for_timeout(1000)
    expect(page.locator("#ov-trends [data-failure-rate]")).to_have_text(
        re.compile(r"^(\d+\.\d %|—)$")
    )
    expect(page.locator("#ov-trends table.durations tbody tr").first).to_be_visible()
    load = page.locator("#ov-workers svg.meter[aria-label='3 of 4 places in use']")
    expect(load).to_be_visible()
    for size in (DESKTOP, PHONE):
        fits(page, "overview-trends", size)
        chart_fits(page, "#ov-trends svg.chart.bars", size)
        legend = page.locator("#ov-trends ul.legend").bounding_box()
        assert legend and legend["x"] + legend["width"] <= size["width"], legend
    assert not screen.errors, screen.errors
