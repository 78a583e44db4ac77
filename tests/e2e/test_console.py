"""The console in a real headless Chromium, against a live hub (daphne + worker).

Saves screenshots of the main pages at desktop and phone widths under tests/artifacts/.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path

import pytest
from playwright import sync_api as playwright_api

from tests.packaging import python_package

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
ROOT = Path(__file__).resolve().parent.parent.parent

# The browser: tests/e2e/conftest.py (Debian's Chromium or Playwright's; in CI, one or a failure).
pytestmark = [pytest.mark.timeout(300)]

# Playwright's sync API runs an event loop in this thread; the test's own ORM calls are safe.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

ECHO = r"""
import asyncio


async def run(context, input, *args):
    print("args:", *args, flush=True)
    for i in range(3):
        print(f"\x1b[32mtick {i}\x1b[0m", flush=True)
    print("see \x1b]8;;https://evil.example/\x07the docs\x1b]8;;\x07 here", flush=True)
    async for line in input:
        text = line.decode() if isinstance(line, bytes) else str(line)
        print("echo:", text.strip(), flush=True)
"""

STEPS = [
    {"type": "Setup", "command": "slew", "params": {"ra": "10:00:00", "sleep": 0.8}},
    {"type": "Setup", "command": "configure", "params": {"filter": "H", "sleep": 0.8}},
    {"type": "Observe", "command": "expose", "params": {"exposure": 1.0}},
    {"type": "Observe", "command": "readout", "params": {"sleep": 0.5}},
]


def pack_dir(path: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for item in sorted(path.iterdir()):
            if item.is_file():
                tar.add(item, arcname=item.name)
    return buf.getvalue()


class Console:
    """A logged-in page plus the habits of these tests (screenshots, CSP errors)."""

    def __init__(self, browser, url: str, username: str, password: str) -> None:
        self.url = url
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("dialog", lambda dialog: dialog.accept())
        self.page.on("response", self._response)
        self.page.goto(url + "/login/")
        self.page.fill("input[name=username]", username)
        self.page.fill("input[name=password]", password)
        self.page.click("button.primary")
        self.page.wait_for_url(url + "/")

    def _console(self, message) -> None:
        if "Failed to load resource" in message.text:
            return  # reported with its URL by _response
        if message.type == "error" or "Content Security Policy" in message.text:
            self.errors.append(message.text)

    def _response(self, response) -> None:
        # Refusals the test provokes on purpose come back as 409 to htmx; anything else is a bug.
        if response.status >= 400 and response.status != 409:
            self.errors.append(f"{response.status} {response.url}")

    def go(self, path: str) -> None:
        self.page.goto(self.url + path)

    def shoot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.set_viewport_size({"width": 1280, "height": 900})
        self.page.screenshot(path=str(ARTIFACTS / f"{name}-desktop.png"), full_page=True)
        self.page.set_viewport_size({"width": 390, "height": 844})
        self.page.screenshot(path=str(ARTIFACTS / f"{name}-phone.png"), full_page=True)
        width = self.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 392, f"{name} scrolls sideways on a phone ({width} px)"
        self.page.set_viewport_size({"width": 1280, "height": 900})

    def feedback(self, selector: str, text: str) -> None:
        self.page.wait_for_selector(f"{selector} >> text={text}")


def test_run_a_sequence_from_the_console(hub, people, browser):
    admin = people["admin"]
    console = Console(browser, hub.url, admin.username, admin.password)
    page = console.page
    expect = playwright_api.expect

    # Upload through the form.
    package = ARTIFACTS.parent / "artifacts" / "echo.tar.gz"
    ARTIFACTS.mkdir(exist_ok=True)
    package.write_bytes(python_package(ECHO))
    console.go("/sequences/")
    page.set_input_files("input[name=package]", str(package))
    page.click("form.upload button.primary")
    expect(page.locator(".flash")).to_contain_text("Uploaded test-seq")
    console.shoot("sequence")

    # Start it with two arguments: a string and a number.
    fields = page.locator("input[name=arg]")
    fields.nth(0).fill("hello")
    fields.nth(1).fill("42")
    page.click("#start button.primary")
    page.wait_for_url(re.compile(r".*/instances/[^/]+/$"))
    iid = page.url.rstrip("/").rsplit("/", 1)[1]

    # Its output appears live, colours rendered.
    log = page.locator("#log-stdout-lines")
    expect(log).to_contain_text("args: hello 42")
    expect(log.locator("span.ansi32").first).to_have_text("tick 0")
    # An OSC 8 hyperlink shows as its text, not as a link (docs/console.md).
    expect(log).to_contain_text("see the docs here")
    expect(log.locator("a")).to_have_count(0)
    expect(page.locator("[data-live]").first).to_have_class(re.compile("ws-open"))

    # Input comes back as an echo.
    page.fill("#inst-actions input[name=text]", "ping")
    page.click("#inst-actions form.send button:text('Send')")
    console.feedback("#inst-feedback", "Sent 5 bytes to input")
    expect(log).to_contain_text("echo: ping")
    console.shoot("instance")

    # Search on the server finds the echo among the lines.
    page.fill("input[name=q]", "echo")
    page.click(".search-form button")
    expect(page.locator("#search-results")).to_contain_text("1 line of stdout")

    # Stop it, with a timeout; the status changes without a reload.
    page.fill("#inst-status input[name=timeout]", "2000")
    page.click("#inst-status button:text('Stop')")
    console.feedback("#inst-feedback", "Stopped")
    expect(page.locator("#inst-status [data-status]")).to_have_attribute("data-status", "completed")
    expect(page.locator("#inst-status .exit")).to_contain_text("138")
    expect(page.locator("#inst-status button:text('Kill')")).to_be_disabled()

    for name, path in [
        ("overview", "/"),
        ("sequences", "/sequences/"),
        ("instances", "/instances/"),
        ("audit", "/audit/"),
        ("tokens", "/tokens/"),
    ]:
        console.go(path)
        console.shoot(name)
    console.go(f"/instances/{iid}/")
    expect(page.locator("#log-stdout-lines")).to_contain_text("echo: ping")
    assert not console.errors, console.errors


def test_drive_a_sequencer_from_the_console(hub, people, browser):
    admin = people["admin"]
    console = Console(browser, hub.url, admin.username, admin.password)
    page = console.page
    expect = playwright_api.expect
    ARTIFACTS.mkdir(exist_ok=True)

    package = ARTIFACTS / "darknight.tar.gz"
    package.write_bytes(pack_dir(ROOT / "examples" / "darknight"))
    console.go("/sequences/")
    page.set_input_files("input[name=package]", str(package))
    page.click("form.upload button.primary")
    expect(page.locator(".flash")).to_contain_text("Uploaded darknight")

    # A component, and the script loaded into it.
    console.go("/components/")
    page.fill("input[name=name]", "ESW.e2e")
    page.click("form.row button.primary")
    expect(page.locator(".flash")).to_contain_text("Created sequence component ESW.e2e")
    row = page.locator("#components-table tr:has-text('ESW.e2e') + tr.actions-row")
    row.locator("input[name=prefix]").fill("ESW.darknight")
    row.locator("button:text('Load script')").click()
    expect(page.locator("#comp-feedback")).to_contain_text("Loaded", timeout=60_000)
    console.shoot("components")
    page.click("#components-table a:text('ESW.darknight')")
    page.wait_for_url(re.compile(r".*/sequencers/[^/]+/$"))
    state = page.locator("#sq-state [data-state]")
    expect(state).to_have_attribute("data-state", "Idle")
    expect(page.locator("button[data-command=startSequence]")).to_be_disabled()

    # A step list from a JSON file, loaded, then started.
    steps = ARTIFACTS / "steps.json"
    steps.write_text(json.dumps({"commands": STEPS}))
    page.set_input_files("input[name=steps_file]", str(steps))
    expect(page.locator("#steps-json")).to_have_value(re.compile("slew"))
    page.click("#sq-editor button:text('Load')")
    expect(state).to_have_attribute("data-state", "Loaded")
    expect(page.locator("ol.steps li")).to_have_count(4)
    start = page.locator("button[data-command=startSequence]")
    expect(start).to_be_enabled()
    steps_shown = page.locator("ol.steps li")
    step_button = page.locator("button[data-command=stepThrough]")
    expect(step_button).to_be_disabled()
    # A breakpoint before the second step: the run pauses there.
    steps_shown.nth(1).locator("button:text('● break')").click()
    expect(steps_shown.nth(1)).to_have_class(re.compile(r"\bbp\b"))
    start.click()
    expect(page.locator("#sq-feedback")).to_contain_text("Started run")

    # The step colours follow the engine: in flight, then success, one by one.
    expect(state).to_have_attribute("data-state", "Running")
    expect(page.locator("ol.steps li.st-success")).to_have_count(1, timeout=30_000)
    console.shoot("sequencer")
    # Paused before step 2: Step runs exactly that one and pauses before step 3.
    expect(page.locator("#sq-state [data-paused-before]")).to_have_text("Paused before step 2")
    expect(step_button).to_be_enabled()
    step_button.click()
    expect(page.locator("ol.steps li.st-success")).to_have_count(2, timeout=30_000)
    expect(steps_shown.nth(2)).to_have_class(re.compile(r"\bbp\b"))
    expect(steps_shown.nth(3)).to_have_class(re.compile(r"st-pending"))
    expect(page.locator("#sq-state [data-paused-before]")).to_have_text("Paused before step 3")
    expect(state).to_have_attribute("data-state", "Running")
    page.click("button[data-command=resume]")
    expect(page.locator("ol.steps li.st-success")).to_have_count(4, timeout=30_000)
    expect(state).to_have_attribute("data-state", "Idle")
    expect(page.locator("#log-stdout-lines")).to_contain_text("reading out exposure 1")
    # Each finished step says how long it ran.
    expect(page.locator("ol.steps li [data-took]")).to_have_count(4)

    # The finished list loads again, fresh, with one button.
    page.click("button[data-command=reload]")
    expect(state).to_have_attribute("data-state", "Loaded")
    expect(page.locator("ol.steps li.st-pending")).to_have_count(4)
    page.click("button[data-command=reset]")
    expect(state).to_have_attribute("data-state", "Idle")

    # Offline and back; the editor's buttons follow what the state accepts.
    page.click("button[data-command=goOffline]")
    expect(state).to_have_attribute("data-state", "Offline")
    expect(page.locator("button[data-command=goOffline]")).to_be_disabled()
    expect(page.locator("#sq-editor button[data-command=add]")).to_be_disabled()
    expect(page.locator("#sq-editor button[data-command=loadSequence]")).to_be_disabled()
    page.click("button[data-command=goOnline]")
    expect(page.locator("#sq-editor button[data-command=loadSequence]")).to_be_enabled()
    expect(state).to_have_attribute("data-state", "Idle")
    expect(page.locator("#sq-history")).to_contain_text("goOnline")
    console.shoot("sequencer-idle")

    page.click("button[data-command=shutdown]")
    expect(state).to_have_attribute("data-state", "Killed")
    expect(page.locator("button[data-command=goOffline]")).to_be_disabled()
    console.go("/sequencers/")
    console.shoot("sequencers")
    assert not console.errors, console.errors


LONG = """
def run(context, input, *args):
    for i in range(1200):
        print(f"line {i:04d}")
"""


def test_a_long_log_is_windowed_and_earlier_lines_load(hub, people, browser, admin_api):
    from tests.packaging import upload

    sid = upload(admin_api, python_package(LONG))
    started = admin_api.post(f"/sequence/{sid}/start", json={})
    assert started.status_code == 200, started.text
    iid = started.json()["id"]
    admin = people["admin"]
    console = Console(browser, hub.url, admin.username, admin.password)
    page = console.page
    expect = playwright_api.expect
    console.go(f"/instances/{iid}/")
    expect(page.locator("#inst-status [data-status]")).to_have_attribute("data-status", "completed")
    lines = page.locator("#log-stdout-lines")
    expect(lines).to_contain_text("line 1199")
    expect(lines.locator(".l")).to_have_count(500)
    # The socket's snapshot (status, then the streams) replaces the window: let it land first.
    expect(page.locator("[ws-connect]").first).to_have_attribute(
        "data-ws-messages", re.compile(r"^([2-9]|\d\d+)$")
    )
    earlier = page.locator("#log-stdout-earlier a")
    earlier.click()
    expect(lines.locator(".l")).to_have_count(1000)
    expect(lines.locator(".l").first).to_have_text("line 0200")
    page.locator("#log-stdout-earlier a").click()
    expect(lines.locator(".l").first).to_have_text("line 0000")
    expect(page.locator("#log-stdout-earlier")).to_contain_text("start of stdout")
    # Reading back turned following off, so the page does not jump to the end.
    expect(page.locator("[data-follow]")).not_to_be_checked()
    assert not console.errors, console.errors


TICKER = """
import asyncio

provides = {"provides": "TOPIC", "contentType": "text/plain"}


async def run(context, input, *args):
    n = 0
    while True:
        yield f"<img src=x> \\x1b[34mtick {n}\\x1b[0m\\n"
        n += 1
        await asyncio.sleep(0.1)
"""

READER = """
requires = {"requires": "TOPIC", "contentType": "text/plain"}


async def run(context, input, *args):
    async for line in input:
        pass
"""


def test_the_topics_page_while_a_producer_runs(hub, people, browser, admin_api):
    import uuid

    from tests.packaging import upload

    name = f"ticks-{uuid.uuid4().hex[:6]}"
    made = admin_api.post("/topics", json={"id": name, "content-type": "text/plain"})
    assert made.status_code == 200, made.text
    started = []
    for code in (TICKER, READER):
        sid = upload(admin_api, python_package(code.replace("TOPIC", name)))
        answer = admin_api.post(f"/sequence/{sid}/start", json={})
        assert answer.status_code == 200, answer.text
        started.append(answer.json()["id"])
    producer, consumer = started
    try:
        viewer = people["viewer"]
        console = Console(browser, hub.url, viewer.username, viewer.password)
        page = console.page
        expect = playwright_api.expect
        page.click("nav.nav >> text=Topics")
        row = page.locator(f'tr[data-topic="{name}"]')
        expect(row.locator("[data-producers]")).to_contain_text(producer[:8])
        expect(row.locator("[data-consumers]")).to_contain_text(consumer[:8])
        # The socket's second look gives the rate.
        expect(row.locator("[data-rate]")).to_contain_text("chunks/s", timeout=15_000)
        expect(page.locator(f'#topics-pipeline [data-node="t:{name}"]')).to_have_count(1)
        expect(page.locator(f'#topics-pipeline [data-node="i:{producer}"]')).to_have_count(1)
        # Its two flows (other tests' topics may still flow on this hub).
        flows = ", ".join(
            f'#topics-pipeline path.flow[data-{end}="t:{name}"]' for end in ("from", "to")
        )
        expect(page.locator(flows)).to_have_count(2)
        assert "Delete" not in row.inner_text()  # a viewer may not
        console.shoot("topics")
        row.locator(f'a[href="/topics/{name}/"]').click()
        lines = page.locator("#log-topic-lines")
        expect(lines).to_contain_text("tick")
        first = lines.locator(".l").last.inner_text()
        # Followed live: newer ticks arrive without a reload, escaped and coloured.
        expect(lines.locator(".l").last).not_to_have_text(first, timeout=10_000)
        expect(lines.locator("span.ansi34").first).to_contain_text("tick")
        expect(lines.locator("img")).to_have_count(0)
        expect(lines).to_contain_text("<img src=x>")
        console.shoot("topic-tail")
        assert not console.errors, console.errors
    finally:
        for iid in started:
            admin_api.post(f"/instance/{iid}/_kill", json={})
        admin_api.delete(f"/topics/{name}")
