"""A sequencer's page shows its upstream and downstreams, live (issue 18 item 2), in a real
headless Chromium against a live hub; screenshots go to tests/artifacts/."""

from __future__ import annotations

import os

import pytest
from playwright import sync_api as playwright_api

from tests.e2e.test_console import Console
from tests.runner.test_upstream import drive, load_conductor, run
from tests.sequences import sequencer_kit
from tests.sequences.sequencer_kit import setup

pytestmark = [pytest.mark.timeout(300), pytest.mark.django_db(transaction=True)]
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
kit = sequencer_kit.kit  # the fixture
expect = playwright_api.expect


def test_the_links_card_follows_the_downstreams_state(hub, people, browser, kit):
    down = kit.load()
    up = load_conductor(kit)
    assert (
        run(kit, up["id"], [drive(down["prefix"], "submit_and_wait", [setup("move")])])["type"]
        == "Completed"
    )
    viewer = people["viewer"]
    console = Console(browser, hub.url, viewer.username, viewer.password)
    page = console.page
    console.go(f"/sequencers/{up['id']}/")
    card = page.locator("#sq-links")
    expect(card).to_contain_text(down["prefix"])
    badge = card.locator(f"a:text('{down['prefix']}') + [data-link-state]")
    expect(badge).to_have_attribute("data-link-state", "Idle")
    # A change of the downstream alone redraws the upstream's page.
    assert kit.send(down["id"], "goOffline") == {"type": "Ok"}
    expect(badge).to_have_attribute("data-link-state", "Offline", timeout=10_000)
    console.shoot("sequencer-links")
    # The downstream's page names its upstream, and its history the upstream's run and step.
    console.go(f"/sequencers/{down['id']}/")
    expect(page.locator("#sq-links")).to_contain_text(up["prefix"])
    expect(page.locator("#sq-history [data-upstream]").first).to_contain_text(up["prefix"])
    console.shoot("sequencer-upstream")
    assert not console.errors, console.errors
