"""Readable logs and live pages in Chromium at 1280 px and 390 px (issue 17, items 2 and 5).

What a user sees: the `log` stream as rows with levels and a level filter, the tab with lines
opening first, the time gutter, a sent event appearing in the Events card, a sequencer made by
Load script or Restart appearing on an open list, green live dots, and the "reconnecting" banner
while the web is down (actions disabled), gone after it is back, with the lines loaded with
"load earlier" still there. Screenshots go to tests/artifacts/live/ (ignored by git).
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest
from playwright import sync_api as playwright_api

from dashboard.processes import stop_process
from tests.conftest import free_port, start_web, wait_for
from tests.e2e.test_screens import DESKTOP, PHONE, ROOT, pack_dir
from tests.packaging import python_package, upload

SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "live"

pytestmark = [pytest.mark.timeout(300)]
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

expect = playwright_api.expect
CLOCK = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}$")

# Logs at every level first (no stdout), then prints what it is sent.
LOGGER = r"""
async def run(context, input, *args):
    context.logger.debug("probing the mount")
    context.logger.info("mount ready", extra={"data": {"az": 12.5}})
    context.logger.warning("wind is rising")
    context.logger.getChild("dome").error("dome stuck")
    async for line in input:
        text = line.decode() if isinstance(line, bytes) else str(line)
        print("got:", text.strip(), flush=True)
"""

# Enough lines for "load earlier" (the window is 500), then waits for input.
CHATTY = r"""
async def run(context, input, *args):
    for i in range(1200):
        print(f"line {i:04d}", flush=(i % 100 == 99))
    print("all printed", flush=True)
    async for line in input:
        text = line.decode() if isinstance(line, bytes) else str(line)
        print("got:", text.strip(), flush=True)
"""


def unexpected(text: str) -> bool:
    """Errors the browser logs that the tests did not cause on purpose (a stopped web)."""
    # htmx logs a socket's error event as "[object Event]".
    return not any(s in text for s in ("WebSocket", "Failed to load", "[object Event]"))


class Page:
    """One logged-in page; page errors and CSP complaints are collected."""

    def __init__(self, browser, url: str, person) -> None:
        self.url = url
        self.context = browser.new_context(viewport=DESKTOP)
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"page: {exc}"))
        self.page.on(
            "console",
            lambda m: (
                self.errors.append(m.text)
                if "Content Security Policy" in m.text or (m.type == "error" and unexpected(m.text))
                else None
            ),
        )
        self.login(person)

    def login(self, person) -> None:
        self.page.goto(self.url + "/login/")
        self.page.fill("input[name=username]", person.username)
        self.page.fill("input[name=password]", person.password)
        self.page.click("button.primary")
        self.page.wait_for_url(self.url + "/")

    def go(self, path: str) -> None:
        self.page.goto(self.url + path)

    def shoot(self, name: str, size: dict[str, int]) -> None:
        """A screenshot at this size, which must not scroll sideways."""
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.set_viewport_size(size)
        self.page.screenshot(path=str(SHOTS / f"{name}-{size['width']}.png"), full_page=True)
        width = self.page.evaluate("document.documentElement.scrollWidth")
        assert width <= size["width"] + 2, f"{name} scrolls sideways at {size['width']} px"

    def gutter(self, line) -> str | None:
        """The time shown before a line (drawn by CSS), or None while hidden."""
        return line.evaluate(
            "el => { const s = getComputedStyle(el, '::before');"
            " return s.display === 'none' || s.content === 'none' ? null"
            " : s.content.replace(/^\"|\"$/g, ''); }"
        )

    def colour(self, selector: str, prop: str = "color") -> str:
        return self.page.eval_on_selector(selector, f"el => getComputedStyle(el).{prop}")


def start(api, code: str) -> str:
    sid = upload(api, python_package(code))
    started = api.post(f"/sequence/{sid}/start", json={})
    assert started.status_code == 200, started.text
    return started.json()["id"]


def has_chunks(iid: str, stream: str) -> bool:
    from sequences.models import StreamChunk

    return StreamChunk.objects.filter(instance_id=iid, stream=stream).exists()


def test_log_rows_level_filter_time_gutter_and_live_events(hub, people, browser, admin_api):
    iid = start(admin_api, LOGGER)
    wait_for(lambda: has_chunks(iid, "log"), timeout=30, what="the log stream to be stored")
    screen = Page(browser, hub.url, people["operator"])
    page = screen.page
    try:
        for size in (DESKTOP, PHONE):
            page.set_viewport_size(size)
            screen.go(f"/instances/{iid}/")
            # Only the log stream has lines: its tab opens first.
            expect(page.locator('[data-tab="log"]')).to_have_class(re.compile(r"\bon\b"))
            expect(page.locator("#pane-log")).to_be_visible()
            expect(page.locator("#pane-stdout")).to_be_hidden()
            rows = page.locator("#log-log-lines .l")
            expect(rows).to_have_count(4)
            for level, text in [
                ("debug", "probing the mount"),
                ("info", "mount ready"),
                ("warn", "wind is rising"),
                ("error", "dome stuck"),
            ]:
                row = page.locator(f"#log-log-lines .l.lv-{level}")
                expect(row).to_be_visible()
                expect(row.locator(".m")).to_contain_text(text)
                assert CLOCK.match(screen.gutter(row) or ""), screen.gutter(row)
            expect(page.locator("#log-log-lines .lv-info .lv")).to_have_text("INFO")
            expect(page.locator("#log-log-lines .lv-error .lg")).to_have_text("dome")
            expect(page.locator("#log-log-lines .lv-info .ld")).to_contain_text('"az": 12.5')
            # Level colours: errors red, warnings amber, each at a glance.
            assert screen.colour("#log-log-lines .lv-error .lv") == "rgb(255, 107, 107)"
            assert screen.colour("#log-log-lines .lv-warn .lv") == "rgb(224, 176, 80)"
            assert screen.colour("#log-log-lines .lv-info .lv") != screen.colour(
                "#log-log-lines .lv-debug .lv"
            )
            # The filter: warnings and errors only, then errors only, then all again.
            page.select_option("[data-level-filter]", "warn")
            expect(page.locator("#log-log-lines .lv-debug")).to_be_hidden()
            expect(page.locator("#log-log-lines .lv-info")).to_be_hidden()
            expect(page.locator("#log-log-lines .lv-warn")).to_be_visible()
            expect(page.locator("#log-log-lines .lv-error")).to_be_visible()
            page.select_option("[data-level-filter]", "error")
            expect(page.locator("#log-log-lines .lv-warn")).to_be_hidden()
            screen.shoot("log-rows-errors-only", size)
            page.select_option("[data-level-filter]", "debug")
            expect(page.locator("#log-log-lines .l:visible")).to_have_count(4)

        # Sent input comes back on stdout; its lines get a time gutter when switched on.
        page.set_viewport_size(DESKTOP)
        page.fill("input[name=text]", "hello gutter")
        page.click("form.send[data-clear-on-send] button")
        page.click('[data-tab="stdout"]')
        line = page.locator("#log-stdout-lines .l", has_text="got: hello gutter")
        expect(line).to_be_visible()
        assert screen.gutter(line) is None  # off by default: the lines as printed
        expect(line).to_have_text("got: hello gutter")  # the time is never part of the text
        page.check("[data-times]")
        assert CLOCK.match(screen.gutter(line) or ""), screen.gutter(line)
        # The choice is remembered: after a reload, lines from the database have times too.
        page.reload()
        page.click('[data-tab="stdout"]')
        expect(page.locator("[data-times]")).to_be_checked()
        line = page.locator("#log-stdout-lines .l", has_text="got: hello gutter")
        assert CLOCK.match(screen.gutter(line) or ""), screen.gutter(line)
        for size in (DESKTOP, PHONE):
            screen.shoot("stdout-time-gutter", size)
        page.set_viewport_size(DESKTOP)
        page.uncheck("[data-times]")
        assert screen.gutter(line) is None

        # A sent event shows in the Events card without a reload, at both widths.
        page.evaluate("window.__notReloaded = true")
        for size, name in ((DESKTOP, "wide-event"), (PHONE, "phone-event")):
            page.set_viewport_size(size)
            expect(page.locator("#inst-events")).not_to_contain_text(name)
            page.fill("input[name=name]", name)
            page.fill("input[name=message]", '{"n": 1}')
            page.click("text=Send event")
            expect(page.locator("#inst-events")).to_contain_text(name, timeout=10_000)
            expect(page.locator("#inst-events tr", has_text=name)).to_contain_text("sent in")
            screen.shoot("events-card", size)
        assert page.evaluate("window.__notReloaded") is True
        assert not screen.errors, screen.errors
    finally:
        admin_api.post(f"/instance/{iid}/_kill", json={})
        screen.context.close()


def test_sequencers_from_load_and_restart_appear_on_open_lists(hub, people, browser, admin_api):
    dark = upload(admin_api, pack_dir(ROOT / "examples" / "darknight"))
    comp = f"ESW.live{uuid.uuid4().hex[:4]}"
    prefix = f"ESW.dark{uuid.uuid4().hex[:4]}"
    assert admin_api.post("/components", json={"name": comp}).status_code == 201
    lists = Page(browser, hub.url, people["viewer"])
    components = lists.context.new_page()
    page = lists.page
    try:
        lists.go("/sequencers/")
        components.goto(hub.url + "/components/")
        # The dots sit inside what the socket marks: green once connected, on both lists.
        ok = page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--ok')")
        for p in (page, components):
            expect(p.locator("[data-live].ws-open .live-dot")).to_be_visible()
            dot = p.eval_on_selector(".live-dot", "el => getComputedStyle(el).backgroundColor")
            grey = "rgb(181, 189, 201)"
            assert dot != grey, f"the live dot on {p.url} is still grey ({ok})"
        expect(page.locator("#sequencers-table")).not_to_contain_text(prefix)

        loaded = admin_api.post(
            f"/component/{comp}/load-script", json={"sequence": dark, "prefix": prefix}
        )
        assert loaded.status_code == 200, loaded.text
        first = next(s for s in admin_api.get("/sequencers").json() if s["prefix"] == prefix)
        expect(page.locator(f"#sqr-{first['id']}")).to_contain_text(prefix, timeout=15_000)
        expect(components.locator("#components-table")).to_contain_text(prefix)
        for size in (DESKTOP, PHONE):
            lists.shoot("sequencers-after-load", size)
        page.set_viewport_size(DESKTOP)

        restarted = admin_api.post(f"/component/{comp}/restart", json={})
        assert restarted.status_code == 200, restarted.text
        second = next(
            s
            for s in admin_api.get("/sequencers").json()
            if s["prefix"] == prefix and s["id"] != first["id"] and s.get("state") != "Killed"
        )
        expect(page.locator(f"#sqr-{second['id']}")).to_contain_text(prefix, timeout=15_000)
        page.set_viewport_size(PHONE)
        expect(page.locator(f"#sqr-{second['id']}")).to_be_visible()
        lists.shoot("sequencers-after-restart", PHONE)
        assert not lists.errors, lists.errors
    finally:
        admin_api.post(f"/component/{comp}/unload-script", json={})
        lists.context.close()


def test_the_banner_holds_actions_while_the_web_is_down_and_lines_survive(
    hub, people, browser, admin_api, tmp_path
):
    """A web of this test's own (the session's hub stays up for the other tests) is stopped
    under an open instance page and started again on the same port."""
    iid = start(admin_api, CHATTY)

    def printed() -> bool:
        from dashboard import logs

        return any(b"all printed" in raw for _, raw in logs.tail(iid, "stdout", 5).lines)

    wait_for(printed, timeout=60, what="the instance to print its lines")
    port = free_port()
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    web = start_web(tmp_path / "a", port)
    url = f"http://127.0.0.1:{port}"
    screen = Page(browser, url, people["operator"])
    page = screen.page
    try:
        screen.go(f"/instances/{iid}/")
        expect(page.locator("[data-live].ws-open")).to_have_count(1)
        lines = page.locator("#log-stdout-lines .l[data-at]")
        expect(lines.last).to_contain_text("all printed")
        shown = lines.count()
        link = page.locator("#log-stdout-earlier a[data-earlier]")
        for _ in range(5):  # 500 lines a page: back to the first line
            if not link.count():
                break
            before = lines.first.get_attribute("data-at")
            page.click("#log-stdout-earlier a[data-earlier]")
            expect(lines.first).not_to_have_attribute("data-at", before or "")
        expect(lines.first).to_contain_text("line 0000")
        expect(page.locator("#log-stdout-earlier")).to_contain_text("start of stdout")
        loaded = lines.count()
        assert loaded > shown
        first_at = lines.first.get_attribute("data-at")
        banner = page.locator("#ws-banner")
        expect(banner).to_be_hidden()
        kill = page.locator("#inst-status button.danger")
        send = page.locator("form.send[data-clear-on-send] button")
        expect(kill).to_be_enabled()

        # Another live page in the same browser: every live page shows the banner.
        listing = screen.context.new_page()
        listing.goto(url + "/sequencers/")
        expect(listing.locator("[data-live].ws-open")).to_have_count(1)
        expect(listing.locator("#ws-banner")).to_be_hidden()

        stop_process(web.proc)
        expect(listing.locator("#ws-banner")).to_contain_text("Reconnecting", timeout=15_000)
        expect(listing.locator("[data-live].ws-closed .live-dot")).to_be_visible()
        expect(banner).to_be_visible(timeout=15_000)
        expect(banner).to_contain_text("Reconnecting")
        expect(kill).to_be_disabled()
        expect(send).to_be_disabled()
        for size in (DESKTOP, PHONE):
            screen.shoot("reconnecting-banner", size)
            expect(banner).to_be_visible()
        page.set_viewport_size(DESKTOP)

        web = start_web(tmp_path / "b", port)
        expect(banner).to_be_hidden(timeout=90_000)
        expect(listing.locator("#ws-banner")).to_be_hidden(timeout=90_000)
        expect(listing.locator("[data-live].ws-open .live-dot")).to_be_visible()
        expect(kill).to_be_enabled()
        expect(send).to_be_enabled()
        # What the reader loaded with "load earlier" is still there, in order, no line twice.
        assert lines.first.get_attribute("data-at") == first_at
        expect(lines.first).to_contain_text("line 0000")
        texts = page.eval_on_selector_all(
            "#log-stdout-lines .l[data-at]", "els => els.map(e => e.textContent)"
        )
        assert len(texts) == len(set(texts)) == loaded, (len(texts), len(set(texts)), loaded)
        # And the page follows again: a line sent now appears after them.
        page.fill("input[name=text]", "after the outage")
        send.click()
        expect(lines.last).to_contain_text("got: after the outage", timeout=15_000)
        for size in (DESKTOP, PHONE):
            screen.shoot("reconnected", size)
            expect(banner).to_be_hidden()
        assert not screen.errors, screen.errors
    finally:
        admin_api.post(f"/instance/{iid}/_kill", json={})
        screen.context.close()
        stop_process(web.proc)


# 50 000 lines as fast as print goes, then a marker.
FLOOD = r"""
import sys


async def run(context, input, *args):
    for i in range(50_000):
        sys.stdout.write(f"flood line {i:05d} with some words to make it a real line\n")
    sys.stdout.write("flood done\n")
    sys.stdout.flush()
    context.logger.info("flood done")
    async for _ in input:
        pass
"""

LONG_TASKS = """() => {
  window.__longest = 0;
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) window.__longest = Math.max(window.__longest, e.duration);
  }).observe({ type: "longtask", buffered: false });
}"""


def test_fifty_thousand_lines_with_times_keep_the_page_responsive(hub, people, browser, admin_api):
    """The gutter and the rows add no per-line work in the browser: while 50 000 lines arrive
    with times shown, no main-thread task is long enough for a user to feel (the bound is
    generous: the test machine is shared)."""
    screen = Page(browser, hub.url, people["operator"])
    page = screen.page
    sid = upload(admin_api, python_package(FLOOD))
    try:
        # Open on an instance that is waiting, then start the flood in view.
        screen.go("/instances/")
        iid = admin_api.post(f"/sequence/{sid}/start", json={}).json()["id"]
        screen.go(f"/instances/{iid}/")
        page.check("[data-times]")
        page.evaluate(LONG_TASKS)
        expect(page.locator("#log-stdout-lines")).to_contain_text("flood done", timeout=60_000)
        longest = page.evaluate("window.__longest")
        line = page.locator("#log-stdout-lines .l").last
        assert CLOCK.match(screen.gutter(line) or "")
        print(f"longest main-thread task while 50 000 lines arrived: {longest:.0f} ms")
        assert longest < 500, f"a {longest:.0f} ms task: the page froze while lines arrived"
        screen.shoot("flood-with-times", DESKTOP)
    finally:
        admin_api.post(f"/instance/{iid}/_kill", json={})
        screen.context.close()
