"""How runs ended, as a user sees it in Chromium at 1280 px and 390 px (issue 17, item 1): a
badge of its own colour and word for completed, failed, stopped and killed instances (who ended
it on the instance's page), the outcome filter kept in the URL, the overview's recently ended,
and a sequencer's run: Paused before step N, then Aborted (not Completed).

Screenshots go to tests/artifacts/outcomes/ (ignored by git).
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest
from playwright import sync_api as playwright_api

from tests.conftest import wait_for
from tests.e2e.test_screens import DESKTOP, PHONE, ROOT, pack_dir
from tests.packaging import python_package, upload
from tests.runner.test_instances_api import start, wait_ended
from tests.runner.test_outcomes import SEQUENCE, wait_running

SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "outcomes"

pytestmark = [pytest.mark.timeout(300)]
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

expect = playwright_api.expect

BACKGROUND = "el => getComputedStyle(el).backgroundColor"
SLOW_STEPS = [
    {"type": "Setup", "command": "slew", "params": {"sleep": 0.5}},
    {"type": "Setup", "command": "wait", "params": {"sleep": 0.2}},
    {"type": "Observe", "command": "expose", "params": {"exposure": 0.2}},
]


@pytest.fixture
def ended(hub, admin_api, operator_api):
    """One instance per ending: completed, failed, stopped (by the operator), killed (by the
    operator)."""
    seq = upload(admin_api, python_package(SEQUENCE))
    ids = {
        "completed": start(admin_api, seq, ["finish"]),
        "failed": start(admin_api, seq, ["fail"]),
        "stopped": start(admin_api, seq, ["wait"]),
        "killed": start(admin_api, seq, ["wait"]),
    }
    wait_running(admin_api, ids["stopped"])
    wait_running(admin_api, ids["killed"])
    assert operator_api.post(f"/instance/{ids['stopped']}/_stop", json={"timeout": 5000})
    assert operator_api.post(f"/instance/{ids['killed']}/_kill", json={}).status_code == 202
    for iid in ids.values():
        wait_ended(admin_api, iid)
    return ids


def log_in(browser, url: str, person, size: dict[str, int]):
    context = browser.new_context(viewport=size)
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url + "/login/")
    page.fill("input[name=username]", person.username)
    page.fill("input[name=password]", person.password)
    page.click("button.primary")
    page.wait_for_url(url + "/")
    return context, page, errors


def shoot(page, name: str, size: dict[str, int]) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}-{size['width']}.png"), full_page=True)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= size["width"] + 1, f"{name} scrolls sideways at {size['width']} px ({width})"


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1280", "390"])
def test_each_ending_has_its_own_badge_and_filter(hub, people, browser, ended, size):
    operator = people["operator"].username
    context, page, errors = log_in(browser, hub.url, people["admin"], size)
    try:
        page.goto(hub.url + "/instances/")
        colours = {}
        for outcome, iid in ended.items():
            shown = page.locator(f"#row-{iid} .badge")
            expect(shown).to_have_text(outcome)
            expect(shown).to_have_attribute("data-outcome", outcome)
            expect(shown).to_be_visible()
            colours[outcome] = shown.evaluate(BACKGROUND)
        # Four endings, four colours: a kill no longer looks like a completion.
        assert len(set(colours.values())) == 4, colours
        shoot(page, "instances", size)

        # The filter: the list shows killed ones only, and the address says so (a reload or a
        # shared link keeps it).
        page.select_option("select[name=outcome]", "killed")
        expect(page).to_have_url(re.compile(r"[?&]outcome=killed"))
        expect(page.locator(f"#row-{ended['killed']}")).to_be_visible()
        for outcome in ("completed", "failed", "stopped"):
            expect(page.locator(f"#row-{ended[outcome]}")).to_have_count(0)
        page.reload()
        expect(page.locator("select[name=outcome]")).to_have_value("killed")
        expect(page.locator(f"#row-{ended['completed']}")).to_have_count(0)
        shoot(page, "instances-killed", size)

        # Its page: the badge, and who ended it.
        page.goto(f"{hub.url}/instances/{ended['killed']}/")
        badge = page.locator("#inst-status h2 .badge")
        expect(badge).to_have_text("killed")
        expect(page.locator("#inst-status [data-ended-by]")).to_have_text(
            f"Ended: killed at {operator}'s request"
        )
        shoot(page, "instance-killed", size)
        page.goto(f"{hub.url}/instances/{ended['stopped']}/")
        expect(page.locator("#inst-status h2 .badge")).to_have_text("stopped")
        expect(page.locator("#inst-status [data-ended-by]")).to_contain_text(
            f"stopped at {operator}'s request"
        )
        page.goto(f"{hub.url}/instances/{ended['failed']}/")
        expect(page.locator("#inst-status h2 .badge")).to_have_text("failed")

        # The overview's recently ended, with the same badges.
        page.goto(hub.url + "/")
        for iid in ended.values():
            expect(page.locator(f"#ov-ended a[href='/instances/{iid}/']")).to_be_visible()
        expect(page.locator("#ov-ended .badge.o-killed").first).to_have_text("killed")
        # The recent activity and the audit log say how the stop and the kill ended.
        expect(
            page.locator("#ov-recent li:has-text('instance.kill') [data-ended]").first
        ).to_have_text("killed")
        shoot(page, "overview", size)
        page.goto(hub.url + "/audit/")
        for outcome in ("killed", "stopped"):
            entry = page.locator(f"tr:has-text('{ended[outcome]}') [data-ended]")
            expect(entry).to_have_text(outcome)
        shoot(page, "audit", size)
        assert not errors, errors
    finally:
        context.close()


def test_a_sequencer_run_says_paused_before_step_n_then_aborted(hub, people, browser, admin_api):
    script = upload(admin_api, pack_dir(ROOT / "examples" / "darknight"))
    comp = f"ESW.outcomes{uuid.uuid4().hex[:4]}"
    prefix = f"ESW.run{uuid.uuid4().hex[:4]}"
    assert admin_api.post("/components", json={"name": comp}).status_code == 201
    loaded = admin_api.post(
        f"/component/{comp}/load-script", json={"sequence": script, "prefix": prefix}
    )
    assert loaded.status_code == 200, loaded.text
    sid = next(s["id"] for s in admin_api.get("/sequencers").json() if s["prefix"] == prefix)
    try:
        started = admin_api.post(f"/sequencer/{sid}/submit", json={"commands": SLOW_STEPS})
        assert started.json()["type"] == "Started", started.text
        # Paused while the first step runs: the run holds before step 2.
        assert admin_api.post(f"/sequencer/{sid}/pause").status_code == 200
        for size in (DESKTOP, PHONE):
            context, page, errors = log_in(browser, hub.url, people["admin"], size)
            try:
                page.goto(f"{hub.url}/sequencers/{sid}/")
                expect(page.locator("#sq-state [data-state]")).to_have_attribute(
                    "data-state", "Running"
                )
                run = page.locator("#sq-state [data-run-outcome]")
                expect(run).to_have_text("Paused before step 2", timeout=30_000)
                shoot(page, "sequencer-paused", size)
                page.goto(hub.url + "/sequencers/")
                expect(page.locator(f"#sqr-{sid} [data-run-outcome]")).to_have_text(
                    "Paused before step 2"
                )
                shoot(page, "sequencers-paused", size)
                assert not errors, errors
            finally:
                context.close()

        # Aborted: ESW answers Completed on the wire; people see Aborted.
        assert admin_api.post(f"/sequencer/{sid}/abortSequence").status_code == 200
        data = wait_for(
            lambda: (d := admin_api.get(f"/sequencer/{sid}").json())["state"] == "Idle" and d,
            timeout=20,
            what="the aborted run to end",
        )
        assert data["runResult"]["type"] == "Completed", data
        assert data["runOutcome"] == {"outcome": "aborted", "label": "Aborted", "step": None}
        for size in (DESKTOP, PHONE):
            context, page, errors = log_in(browser, hub.url, people["admin"], size)
            try:
                page.goto(f"{hub.url}/sequencers/{sid}/")
                run = page.locator("#sq-state [data-run-outcome]")
                expect(run).to_have_text("Aborted")
                expect(run).to_have_attribute("data-run-outcome", "aborted")
                expect(page.locator("#sq-state")).not_to_contain_text("Completed")
                shoot(page, "sequencer-aborted", size)
                assert not errors, errors
            finally:
                context.close()
    finally:
        admin_api.post(f"/component/{comp}/unload-script", json={})


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1280", "390"])
def test_kill_from_the_page_turns_the_badge_killed_live(hub, people, browser, admin_api, size):
    seq = upload(admin_api, python_package(SEQUENCE))
    iid = start(admin_api, seq, ["wait"])
    wait_running(admin_api, iid)
    admin = people["admin"].username
    context, page, errors = log_in(browser, hub.url, people["admin"], size)
    page.on("dialog", lambda dialog: dialog.accept())
    try:
        page.goto(f"{hub.url}/instances/{iid}/")
        badge = page.locator("#inst-status h2 .badge")
        expect(badge).to_have_text("running")
        page.click("#inst-status button.danger:text('Kill')")
        # The socket pushes the new status region: no reload.
        expect(badge).to_have_text("killed")
        expect(badge).to_have_attribute("data-outcome", "killed")
        expect(page.locator("#inst-status [data-ended-by]")).to_have_text(
            f"Ended: killed at {admin}'s request"
        )
        expect(page.locator("#inst-feedback")).to_contain_text("it ended killed")
        shoot(page, "instance-killed-from-page", size)
        from accounts.models import AuditEntry

        entry = AuditEntry.objects.get(action="instance.kill", target=iid)
        assert (entry.actor, entry.via, entry.detail["ended"]) == (admin, "web", "killed")
        assert not errors, errors
    finally:
        context.close()
