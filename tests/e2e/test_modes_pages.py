"""The Observations and Resources pages (issue 18 item 3) in a real headless Chromium against a
live hub with real script processes: the admin writes the configuration in the editor, an
operator configures and shuts modes down, the sequencers' current step follows live, at 1280
and 390 px; screenshots go to tests/artifacts/."""

from __future__ import annotations

import os
import time

import pytest
from playwright import sync_api as playwright_api

from tests.e2e.test_console import Console
from tests.packaging import upload
from tests.sequences.sequencer_kit import ENDED, example_package, setup

pytestmark = [pytest.mark.timeout(300), pytest.mark.django_db(transaction=True)]
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
expect = playwright_api.expect

CONFIG = """modes:
  Night:
    sequencers:
      - prefix: ESW.night
        script: darknight
      - prefix: IRIS.a_rather_long_observing_mode_name_for_phones.variation
        script: darknight
    resources: [IRIS, TCS]
  Twilight:
    sequencers:
      - prefix: TCS.twilight
        script: darknight
    resources: [TCS, APS]
"""


@pytest.fixture
def tidy(admin_api):
    yield admin_api
    instances = []
    for mode in admin_api.get("/modes").json():
        if mode["status"] == "Configured":
            instances += [s["sequencer"]["instance"] for s in mode["sequencers"] if s["sequencer"]]
            admin_api.post(f"/mode/{mode['name']}/shutdown")
    deadline = time.monotonic() + 15
    for iid in instances:
        while time.monotonic() < deadline:
            if admin_api.get(f"/instance/{iid}").json()["status"] in ENDED:
                break
            time.sleep(0.05)


def test_observations_and_resources_pages(hub, people, browser, tidy):
    api = tidy
    upload(api, example_package("darknight"))
    admin = people["admin"]
    console = Console(browser, hub.url, admin.username, admin.password)
    page = console.page

    # The nav leads there; with no configuration the page says what to do.
    console.go("/")
    page.click("nav.nav >> text=Observations")
    expect(page.locator("h1")).to_contain_text("Observations")
    expect(page.locator("#modes-list")).to_contain_text("No observing modes yet")

    # A bad configuration is refused, naming the problem and its path; nothing is stored.
    editor = page.locator("textarea[name=source]")
    editor.fill("modes:\n  Night:\n    sequencers:\n      - script: darknight\n")
    page.click("text=Save configuration")
    feedback = page.locator("#modes-feedback")
    expect(feedback).to_contain_text("modes.Night.sequencers[0].prefix: missing")
    expect(page.locator("#modes-list")).to_contain_text("No observing modes yet")

    # The good one: every mode listed, live, with its status.
    editor.fill(CONFIG)
    page.click("text=Save configuration")
    expect(feedback).to_contain_text("Configuration saved: modes Night, Twilight")
    night = page.locator("#mode-Night")
    twilight = page.locator("#mode-Twilight")
    expect(night.locator(".badge").first).to_have_text("Configurable")
    expect(twilight.locator(".badge").first).to_have_text("Configurable")

    # Configure: the sequencers come up, the ESW one first, each with its state and step.
    night.locator("button:text('Configure')").click()
    expect(feedback).to_contain_text("Night configured", timeout=60_000)
    expect(night.locator(".badge").first).to_have_text("Configured")
    rows = night.locator("tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("ESW.night")
    expect(rows.nth(0)).to_contain_text("Idle")
    expect(rows.nth(0)).to_contain_text("NA")
    expect(rows.nth(0)).to_contain_text("ESW.ESW_1")
    expect(night.locator("button:text('Shutdown')")).to_be_visible()
    expect(night.locator("button:text('Reload script')")).to_have_count(2)
    # Twilight shares TCS: not configurable, and the page says why.
    expect(twilight.locator(".badge").first).to_have_text("NonConfigurable")
    expect(twilight).to_contain_text("TCS in use by mode Night")
    expect(twilight.locator("button:text('Configure')")).to_have_count(0)

    # A running step list shows its current step, live.
    esw = next(
        s["sequencer"]
        for s in api.get("/mode/Night").json()["sequencers"]
        if s["prefix"] == "ESW.night"
    )
    steps = [setup("move", sleep=0), setup("wait", sleep=30)]
    submitted = api.post(f"/sequencer/{esw['id']}/submit", json={"commands": steps})
    assert submitted.status_code == 200, submitted.text
    expect(rows.nth(0)).to_contain_text("Step 2 In Progress", timeout=10_000)
    expect(rows.nth(0)).to_contain_text("wait")
    expect(rows.nth(0)).to_contain_text("Running")
    console.shoot("observations")
    # The sequencer's page names its mode.
    console.go(f"/sequencers/{esw['id']}/")
    expect(page.locator("[data-mode-link]")).to_have_text("Night")

    # Resources: in use by Night, or available.
    page.click("nav.nav >> text=Resources")
    expect(page.locator("h1")).to_contain_text("Resources")
    table = page.locator("#resources-table")
    expect(table).to_contain_text("2 of 3 in use")
    expect(page.locator("#res-IRIS")).to_contain_text("In use")
    expect(page.locator("#res-IRIS")).to_contain_text("Night")
    expect(page.locator("#res-APS")).to_contain_text("Available")
    console.shoot("resources")

    # A viewer sees the same, without the buttons or the editor.
    viewer = people["viewer"]
    watcher = Console(browser, hub.url, viewer.username, viewer.password)
    watcher.go("/observations/")
    expect(watcher.page.locator("#mode-Night .badge").first).to_have_text("Configured")
    expect(watcher.page.locator("#mode-Night")).to_contain_text("ESW.night")
    expect(watcher.page.locator("button:text('Shutdown')")).to_have_count(0)
    expect(watcher.page.locator("textarea[name=source]")).to_have_count(0)
    watcher.go("/resources/")
    expect(watcher.page.locator("#res-TCS")).to_contain_text("In use")
    # The resources page follows a shutdown live.
    console.go("/observations/")
    # Reload script: a fresh sequencer for ESW.night, its run gone.
    rows.nth(0).locator("button:text('Reload script')").click()
    expect(feedback).to_contain_text("ESW.night restarted", timeout=30_000)
    expect(rows.nth(0)).to_contain_text("Idle")
    expect(rows.nth(0)).to_contain_text("NA")
    night.locator("button:text('Shutdown')").click()
    expect(feedback).to_contain_text("Night shut down", timeout=30_000)
    expect(night.locator(".badge").first).to_have_text("Configurable")
    expect(twilight.locator(".badge").first).to_have_text("Configurable")
    expect(watcher.page.locator("#res-TCS")).to_contain_text("Available", timeout=10_000)
    watcher.shoot("resources-viewer")
    console.shoot("observations-after-shutdown")

    # The refusal of the bad configuration answered 422 on purpose.
    errors = [e for e in console.errors if "/observations/config/" not in e]
    assert not errors, errors
    assert not watcher.errors, watcher.errors
