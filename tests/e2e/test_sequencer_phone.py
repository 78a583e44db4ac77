"""The sequencer page on a 390 px phone, driven as an operator would (issue 17, item 8):
editor and command buttons enabled only in the states that take them, a breakpoint, Step
(ESW's step-through), each finished step's duration, Reload list; every button reachable
without sideways scrolling. `test_console.py` drives the same at 1280 px from an upload on.
Screenshots go to tests/artifacts/sequencer/ (ignored by git).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import pytest
from playwright import sync_api as playwright_api

from tests.e2e.test_console import STEPS
from tests.e2e.test_lists_and_people import Screen
from tests.e2e.test_screens import PHONE, ROOT, pack_dir
from tests.packaging import upload

SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "sequencer"

pytestmark = [pytest.mark.timeout(300)]
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

expect = playwright_api.expect


@pytest.fixture
def sequencer(hub, admin_api):
    dark = upload(admin_api, pack_dir(ROOT / "examples" / "darknight"))
    comp = f"ESW.phone{uuid.uuid4().hex[:4]}"
    assert admin_api.post("/components", json={"name": comp}).status_code == 201
    loaded = admin_api.post(
        f"/component/{comp}/load-script", json={"sequence": dark, "prefix": "ESW.darknight"}
    )
    assert loaded.status_code == 200, loaded.text
    found = next(s for s in admin_api.get("/sequencers").json() if s.get("component") == comp)
    yield found["id"]
    admin_api.post(f"/component/{comp}/unload-script", json={})


def reachable(page, locator) -> None:
    """On screen, inside the phone's width: a thumb can press it."""
    locator.scroll_into_view_if_needed()
    box = locator.bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box


def test_the_sequencer_page_on_a_phone(hub, people, browser, sequencer):
    screen = Screen(browser, hub.url, people["operator"], PHONE, SHOTS)
    page = screen.page
    screen.go(f"/sequencers/{sequencer}/")
    state = page.locator("#sq-state [data-state]")
    expect(state).to_have_attribute("data-state", "Idle")
    # Idle: nothing to start, step or reload; loading is what it takes.
    for name in ("startSequence", "stepThrough", "reload", "resume", "pause"):
        expect(page.locator(f"button[data-command={name}]").first).to_be_disabled()
    editor = page.locator("#sq-editor-buttons")
    expect(editor.locator("button[data-command=loadSequence]")).to_be_enabled()
    screen.shoot("sequencer-idle")

    page.fill("#steps-json", json.dumps(STEPS))
    load = editor.locator("button[data-command=loadSequence]")
    reachable(page, load)
    load.click()
    expect(state).to_have_attribute("data-state", "Loaded")
    steps = page.locator("ol.steps li")
    expect(steps).to_have_count(4)
    start = page.locator("button[data-command=startSequence]")
    expect(start).to_be_enabled()
    # A breakpoint before the second step, from the step's own button.
    brk = steps.nth(1).locator("button", has_text="● break")
    reachable(page, brk)
    brk.click()
    expect(steps.nth(1)).to_have_class(re.compile(r"\bbp\b"))
    reachable(page, start)
    start.click()
    paused = page.locator("#sq-state [data-paused-before]")
    expect(paused).to_have_text("Paused before step 2", timeout=30_000)
    expect(steps.nth(0).locator("[data-took]")).to_have_text(re.compile(r"^took \d"))
    # Running: loading another list is refused by the state, so its button is off.
    expect(editor.locator("button[data-command=loadSequence]")).to_be_disabled()
    step = page.locator("button[data-command=stepThrough]")
    expect(step).to_be_enabled()
    screen.shoot("sequencer-paused")
    reachable(page, step)
    step.click()
    expect(paused).to_have_text("Paused before step 3", timeout=30_000)
    expect(steps.nth(1)).to_have_class(re.compile(r"st-success"))
    expect(steps.nth(2)).to_have_class(re.compile(r"st-pending"))
    resume = page.locator("button[data-command=resume]")
    reachable(page, resume)
    resume.click()
    expect(page.locator("ol.steps li.st-success")).to_have_count(4, timeout=30_000)
    expect(state).to_have_attribute("data-state", "Idle")
    expect(page.locator("ol.steps li [data-took]")).to_have_count(4)
    expect(page.locator("#sq-state")).to_contain_text("Completed")
    screen.shoot("sequencer-done")
    # The script's log followed live, with no false "reconnecting" gap between its lines.
    script_log = page.locator("#log-log-lines")
    expect(script_log).to_contain_text("shutter closed")
    expect(script_log.locator(".skipped")).to_have_count(0)

    # Reload list: the finished list again, fresh, ready to start.
    reload = page.locator("button[data-command=reload]")
    expect(reload).to_be_enabled()
    reachable(page, reload)
    reload.click()
    expect(state).to_have_attribute("data-state", "Loaded")
    expect(page.locator("ol.steps li.st-pending")).to_have_count(4)
    expect(reload).to_be_disabled()
    screen.shoot("sequencer-reloaded")
    assert not screen.errors, screen.errors
