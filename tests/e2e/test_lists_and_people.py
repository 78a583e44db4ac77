"""Lists, counts, users and tokens as a user sees them in Chromium at 1280 px and 390 px (issue
17, items 4, 5's counts, and 7).

Lists: search, filters, order and keyset pages in the address, surviving a reload; sequences
grouped by name with their older versions folded; the overview's counts equal to the rows their
links open; a duplicate upload warned about, naming the stored copy; "Run again" filling the
start form with the instance's args and appConfig. People: an admin adds a user (a bad password
refused next to its field), changes the role, deactivates (their log-in refused) and
reactivates; a token with an expiry and a lower role, refused what the role may not do.
At 390 px no page scrolls sideways (`document.scrollingElement.scrollWidth`). Screenshots go to
tests/artifacts/lists/ (ignored by git).
"""

from __future__ import annotations

import os
import re
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from playwright import sync_api as playwright_api

from tests.e2e.test_live_pages import unexpected
from tests.e2e.test_screens import DESKTOP, PHONE
from tests.packaging import package_bytes, upload

SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "lists"
SIZES = pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1280", "390"])

pytestmark = [pytest.mark.timeout(300)]
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

expect = playwright_api.expect
expect.set_options(timeout=15_000)  # a shared, busy machine

ECHO = r"""
async def run(context, input, *args):
    print("args:", repr(list(args)), "site:", context.config.get("site"), flush=True)
"""


def meta(name: str, version: str) -> dict:
    return {"name": name, "version": version, "main": "main.py", "engines": {"python3": "3.11"}}


class Screen:
    """A logged-in page at one size; page errors and CSP complaints are collected."""

    def __init__(
        self, browser, url: str, person, size: dict[str, int], shots: Path = SHOTS
    ) -> None:
        self.url, self.size, self.shots = url, size, shots
        self.context = browser.new_context(viewport=size)
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.page.on("dialog", lambda dialog: dialog.accept())  # data-confirm questions
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
        login(self.page, url, person.username, person.password)
        self.page.wait_for_url(url + "/")

    def go(self, path: str) -> None:
        self.page.goto(self.url + path)

    def shoot(self, name: str) -> None:
        """A full-page screenshot; the page must not scroll sideways at this width."""
        self.shots.mkdir(parents=True, exist_ok=True)
        width = self.size["width"]
        self.page.screenshot(path=str(self.shots / f"{name}-{width}.png"), full_page=True)
        wide = self.page.evaluate("document.scrollingElement.scrollWidth")
        inner = self.page.evaluate("window.innerWidth")
        assert wide <= inner, f"{name} scrolls sideways at {width} px ({wide} > {inner})"

    def row_ids(self) -> list[str]:
        return self.page.eval_on_selector_all(
            "#rows-table tbody tr[id^=row-]", "rows => rows.map(r => r.id)"
        )


def login(page, url: str, username: str, password: str) -> None:
    page.goto(url + "/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button.primary")


@pytest.fixture
def catalog(hub, admin_api):
    """Two versions of `alpha`, one `beta`, 50 older names to page through, and ended runs:
    130 completed of alpha, 7 failed and 3 killed of beta, a second apart."""
    from django.db.models import F
    from django.utils import timezone

    from sequences.models import Instance, Sequence

    now = timezone.now()
    fillers = [
        Sequence.objects.create(
            name=f"filler-{n:02d}", version="0.1.0", sha256=f"{n:064x}", size=1, main="main.py"
        )
        for n in range(50)
    ]
    Sequence.objects.filter(pk__in=[s.pk for s in fillers]).update(created=now - timedelta(days=2))
    alpha1 = upload(admin_api, package_bytes({"main.py": ECHO}, meta("alpha", "1.0.0")))
    alpha2 = upload(admin_api, package_bytes({"main.py": ECHO + "\n"}, meta("alpha", "2.0.0")))
    beta = upload(admin_api, package_bytes({"main.py": ECHO}, meta("beta", "1.0.0")))
    rows = []
    for n in range(140):
        if n < 130:
            sid, name, status, code, reason = alpha2, "alpha", "completed", 0, "Finished"
        elif n < 137:
            sid, name, status, code, reason = beta, "beta", "errored", 23, "Failed while running"
        else:
            sid, name, status, code, reason = beta, "beta", "completed", 137, "Instance killed"
        at = now - timedelta(hours=1) + timedelta(seconds=n)
        rows.append(
            Instance(
                sequence_id=sid,
                sequence_name=name,
                status=status,
                exit_code=code,
                reason=reason,
                started=at,
                ended=at + timedelta(milliseconds=500),
            )
        )
    made = Instance.objects.bulk_create(rows)
    Instance.objects.filter(pk__in=[r.pk for r in made]).update(created=F("started"))
    return {"alpha1": alpha1, "alpha2": alpha2, "beta": beta, "ids": [r.pk for r in made]}


@SIZES
def test_list_filters_search_order_and_pages_live_in_the_address(
    hub, people, browser, catalog, size
):
    screen = Screen(browser, hub.url, people["viewer"], size)
    page = screen.page
    screen.go("/instances/")
    expect(page.locator("#rows-table tbody tr[id^=row-]")).to_have_count(100)
    first_page = screen.row_ids()
    # Newest first: the killed ones of beta lead.
    assert first_page[0] == f"row-{catalog['ids'][-1]}"
    screen.shoot("instances")

    # A keyset page: the next 40, none of the first 100; a reload shows the same rows.
    page.locator("#rows-table a[data-page=next]").click()
    expect(page).to_have_url(re.compile(r"[?&]next="))
    expect(page.locator("#rows-table tbody tr[id^=row-]")).to_have_count(40)
    second_page = screen.row_ids()
    assert not set(first_page) & set(second_page)
    assert set(first_page) | set(second_page) == {f"row-{i}" for i in catalog["ids"]}
    page.reload()
    expect(page.locator("#rows-table tbody tr[id^=row-]")).to_have_count(40)
    assert screen.row_ids() == second_page
    page.locator("#rows-table a[data-page=first]").click()
    expect(page.locator("#rows-table tbody tr[id^=row-]")).to_have_count(100)

    # Search as typed, then an outcome, then the order: each lands in the address.
    screen.go("/instances/")
    page.locator("[data-search]").fill("beta")
    expect(page).to_have_url(re.compile(r"[?&]q=beta"))
    expect(page.locator("#rows-table tbody tr[id^=row-]")).to_have_count(10)
    page.select_option(".filters select[name=outcome]", "killed")
    expect(page).to_have_url(re.compile(r"outcome=killed"))
    rows = page.locator("#rows-table tbody tr[id^=row-]")
    expect(rows).to_have_count(3)
    for i in range(3):
        expect(rows.nth(i).locator(".badge")).to_have_text("killed")
    page.select_option(".filters select[name=order]", "oldest")
    expect(page).to_have_url(re.compile(r"order=oldest"))
    expect(rows.first).to_have_attribute("id", f"row-{catalog['ids'][137]}")
    page.reload()
    expect(page.locator("[data-search]")).to_have_value("beta")
    expect(page.locator(".filters select[name=outcome]")).to_have_value("killed")
    expect(page.locator(".filters select[name=order]")).to_have_value("oldest")
    expect(rows).to_have_count(3)
    expect(rows.first).to_have_attribute("id", f"row-{catalog['ids'][137]}")
    screen.shoot("instances-filtered")
    # Nothing matches: said so, not an empty table.
    page.locator("[data-search]").fill("no-such-sequence")
    expect(page.locator("#rows-table")).to_contain_text("No instances match this filter")

    # Sequences: grouped by name, the newest upload first, older versions folded under it.
    screen.go("/sequences/")
    groups = page.locator("tr[data-group]")
    expect(groups).to_have_count(50)
    expect(groups.first).to_have_attribute("data-group", "beta")
    alpha = page.locator('tr[data-group="alpha"]')
    expect(alpha).to_contain_text("2.0.0")
    expect(alpha).to_contain_text("+1 older")
    expect(alpha).to_contain_text("130")  # its runs, all versions together
    folded = page.locator("tr.versions", has_text="older version of alpha")
    older = folded.locator(f'a[href="/sequences/{catalog["alpha1"]}/"]')
    expect(older).to_be_hidden()
    folded.locator("summary").click()
    expect(older).to_be_visible()
    expect(folded).to_contain_text("1.0.0")
    screen.shoot("sequences")
    # The 51st and 52nd names are on the next page, which a reload keeps.
    page.locator("a[data-page=next]").click()
    expect(page).to_have_url(re.compile(r"[?&]next="))
    expect(groups).to_have_count(2)
    expect(groups.first).to_have_attribute("data-group", re.compile(r"^filler-"))
    page.reload()
    expect(groups).to_have_count(2)
    # Search by name, kept in the address.
    page.locator("[data-search]").fill("bet")
    page.locator("[data-search]").press("Enter")
    expect(page).to_have_url(re.compile(r"[?&]q=bet"))
    expect(groups).to_have_count(1)
    page.reload()
    expect(groups).to_have_count(1)
    expect(groups.first).to_have_attribute("data-group", "beta")

    # The overview's counts are the rows their links open.
    screen.go("/")
    count = page.locator("a[data-count=sequences] b")
    expect(count).to_have_text("52")  # names, as the list groups them
    expect(page.locator("a[data-count=sequences]")).to_have_attribute("title", "53 uploads")
    errored = page.locator('#ov-counts a[href="/instances/?status=errored"] b')
    expect(errored).to_have_text("7")
    screen.shoot("overview-counts")
    page.locator('#ov-counts a[href="/instances/?status=errored"]').click()
    expect(page.locator("#rows-table tbody tr[id^=row-]")).to_have_count(7)
    expect(page.locator(".filters select[name=status]")).to_have_value("errored")
    assert not screen.errors, screen.errors


@SIZES
def test_the_audit_log_filters_and_pages_in_the_address(hub, people, browser, size):
    from django.utils import timezone

    from accounts.models import AuditEntry

    now = timezone.now()
    made = AuditEntry.objects.bulk_create(
        AuditEntry(actor="pager-bot", action="instance.start", target=f"t-{n:03d}")
        for n in range(130)
    )
    for n, entry in enumerate(made):  # a second apart, t-129 the newest
        AuditEntry.objects.filter(pk=entry.pk).update(created=now - timedelta(seconds=200 - n))
    screen = Screen(browser, hub.url, people["viewer"], size)
    page = screen.page
    screen.go("/audit/")
    actor = page.locator(".filters input[name=actor]")
    actor.fill("pager")
    expect(page).to_have_url(re.compile(r"[?&]actor=pager"))
    rows = page.locator("#rows tbody tr")
    expect(rows).to_have_count(100)
    expect(rows.first).to_contain_text("t-129")
    expect(rows.last).to_contain_text("t-030")
    screen.shoot("audit")
    # Straight from typing to the next page: the filter's own refresh must not undo it.
    page.locator("#rows a[data-page=next]").click()
    expect(page).to_have_url(re.compile(r"actor=pager.*next=|next=.*actor=pager"))
    expect(rows).to_have_count(30)
    expect(rows.first).to_contain_text("t-029")
    expect(rows.last).to_contain_text("t-000")
    page.reload()
    expect(actor).to_have_value("pager")
    expect(rows).to_have_count(30)
    expect(rows.first).to_contain_text("t-029")
    page.locator("#rows a[data-page=prev]").click()
    expect(rows).to_have_count(100)
    expect(rows.first).to_contain_text("t-129")
    assert not screen.errors, screen.errors


@SIZES
def test_run_again_and_a_duplicate_upload(hub, people, browser, admin_api, size):
    from sequences.models import Instance

    data = package_bytes({"main.py": ECHO}, meta(f"echo-{uuid.uuid4().hex[:4]}", "1.0.0"))
    sid = upload(admin_api, data)
    started = admin_api.post(
        f"/sequence/{sid}/start", json={"args": ["hello", 42], "appConfig": {"site": "north"}}
    )
    assert started.status_code == 200, started.text
    iid = started.json()["id"]
    screen = Screen(browser, hub.url, people["admin"], size)
    page = screen.page
    screen.go(f"/instances/{iid}/")
    expect(page.locator("#log-stdout-lines")).to_contain_text("args: ['hello', 42] site: north")

    # Run again: its sequence's start form, filled, to check before Start.
    page.locator("a.button", has_text="Run again").click()
    expect(page).to_have_url(re.compile(rf"/sequences/{sid}/\?again={iid}"))
    # The args as they were, typed and all: a JSON array (a field per value would lose
    # whether 42 was a number).
    expect(page.locator("#start input[name=args_mode][value=json]")).to_be_checked()
    args = page.locator("#start textarea[name=args_json]")
    expect(args).to_be_visible()
    expect(args).to_have_value('["hello", 42]')
    expect(page.locator("#start textarea[name=app_config]")).to_have_value(re.compile("north"))
    screen.shoot("run-again")
    page.locator("#start button.primary").click()
    page.wait_for_url(re.compile(r".*/instances/[^/]+/$"))
    again = page.url.rstrip("/").rsplit("/", 1)[1]
    assert again != iid
    expect(page.locator("#log-stdout-lines")).to_contain_text("args: ['hello', 42] site: north")
    copy = Instance.objects.get(pk=again)
    assert copy.args == ["hello", 42] and copy.app_config == {"site": "north"}

    # The same package uploaded again is kept, and the page names the stored one.
    SHOTS.mkdir(parents=True, exist_ok=True)
    package = SHOTS / f"duplicate-{size['width']}.tar.gz"
    package.write_bytes(data)
    screen.go("/sequences/")
    page.set_input_files("input[name=package]", str(package))
    page.click("form.upload button.primary")
    warning = page.locator(".flash.warning")
    expect(warning).to_contain_text(f"identical (same sha256) to sequence {sid}")
    expect(page.locator(".flash.success")).to_contain_text("Uploaded")
    screen.shoot("duplicate-upload")
    assert not screen.errors, screen.errors


@SIZES
def test_admins_add_users_set_roles_and_deactivate(hub, people, browser, size):
    name = f"new-{uuid.uuid4().hex[:6]}"
    password = "a sturdy passphrase 7"
    screen = Screen(browser, hub.url, people["admin"], size)
    page = screen.page
    screen.go("/users/")
    form = page.locator("form[action$='/users/new/']").first
    # What each role may do, as the hub enforces it: uploading is an admin's.
    expect(form).to_contain_text("admin also uploads")
    expect(form).not_to_contain_text("operator also uploads")

    # A bad password is refused next to its field, the name typed kept.
    form.locator("input[name=username]").fill(name)
    form.locator("input[name=password]").fill("12345678")
    form.locator("select[name=role]").select_option("operator")
    form.locator("button.primary").click()
    refusal = page.locator("form.stack input[name=password] >> xpath=../following-sibling::p[1]")
    expect(refusal).to_have_class(re.compile(r"\berror\b"))
    expect(refusal).to_contain_text(re.compile("numeric|common|short", re.I))
    expect(page.locator("form.stack input[name=username]")).to_have_value(name)
    expect(page.locator(f'tr[data-user="{name}"]')).to_have_count(0)
    screen.shoot("users-refused")

    page.locator("form.stack input[name=password]").fill(password)
    page.locator("form.stack select[name=role]").select_option("operator")
    page.locator("form.stack button.primary").click()
    expect(page.locator(".flash.success")).to_have_text(f"Added {name} as operator.")
    row = page.locator(f'tr[data-user="{name}"]')
    expect(row.locator("select[name=role]")).to_have_value("operator")
    expect(row).to_contain_text("active")

    # Their role, lowered.
    row.locator("select[name=role]").select_option("viewer")
    row.locator("button", has_text="Set").click()
    expect(page.locator(".flash.success")).to_have_text(f"{name} is now viewer.")
    expect(row.locator("select[name=role]")).to_have_value("viewer")
    # The admin cannot deactivate themselves: no button on their own row.
    expect(page.locator('tr[data-user="admin-user"] button', has_text="Deactivate")).to_have_count(
        0
    )
    screen.shoot("users")

    # Deactivated: their log-in is refused; reactivated: it works.
    row.locator("button", has_text="Deactivate").click()
    expect(page.locator(".flash.success")).to_contain_text(f"{name} is deactivated")
    expect(row).to_contain_text("deactivated")
    expect(row).to_have_class(re.compile(r"\bmuted\b"))
    other = browser.new_context(viewport=size).new_page()
    login(other, hub.url, name, password)
    expect(other.locator(".flash.error")).to_be_visible()
    assert other.url.endswith("/login/")
    row.locator("button", has_text="Reactivate").click()
    expect(page.locator(".flash.success")).to_have_text(f"{name} can log in again.")
    login(other, hub.url, name, password)
    other.wait_for_url(hub.url + "/")
    expect(other.locator(".who")).to_contain_text(name)
    # A viewer has no users page.
    answer = other.goto(hub.url + "/users/")
    assert answer is not None and answer.status == 403
    other.context.close()

    # Each change is in the audit log.
    screen.go(f"/audit/?target={name}")
    audit = page.locator("#rows")
    for action in ("user.create", "user.role", "user.deactivate", "user.activate"):
        expect(audit).to_contain_text(action)
    # So is the refused log-in of the deactivated user.
    logins = page.locator("#rows tbody tr", has_text="login")
    expect(logins.filter(has_text="refused")).to_have_count(1)
    expect(logins.filter(has_text="refused")).to_contain_text("bad credentials")
    screen.shoot("users-audit")
    assert not screen.errors, screen.errors


@SIZES
def test_a_token_with_an_expiry_and_a_lower_role(hub, people, browser, size):
    screen = Screen(browser, hub.url, people["operator"], size)
    page = screen.page
    screen.go("/tokens/")
    form = page.locator("form[action$='/tokens/new/']").first
    # No role above the owner's is offered.
    roles = form.locator("select[name=role] option")
    expect(roles).to_have_count(3)
    expect(form.locator("select[name=role] option[value=admin]")).to_have_count(0)
    form.locator("input[name=name]").fill("wall display")
    form.locator("select[name=expires_in]").select_option("7")
    form.locator("select[name=role]").select_option("viewer")
    form.locator("button.primary").click()
    shown = page.locator("pre.code.token")
    expect(shown).to_be_visible()
    raw = shown.inner_text().strip()
    row = page.locator("tr", has_text="wall display")
    until = row.locator("time[data-when]").last  # created, then lapses
    expect(until).to_have_text(re.compile(r"^in [67] d"))
    expect(until).to_have_attribute("title", re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"))
    if size["width"] > 600:
        expect(row.locator("td").nth(2)).to_have_text("viewer")
    screen.shoot("tokens")

    # The token reads, but may not do what a viewer may not.
    with httpx.Client(
        base_url=hub.api, headers={"Authorization": f"Bearer {raw}"}, timeout=30
    ) as client:
        assert client.get("/sequences").status_code == 200
        refused = client.post("/sequence/nope/start", json={})
        assert refused.status_code == 403, refused.text

    # Revoked from the page: refused at once.
    row.locator("button", has_text="Revoke").click()
    expect(page.locator(".flash.success")).to_contain_text("Revoked token wall display")
    expect(row).to_contain_text("revoked")
    with httpx.Client(
        base_url=hub.api, headers={"Authorization": f"Bearer {raw}"}, timeout=30
    ) as client:
        assert client.get("/sequences").status_code == 401
    assert not screen.errors, screen.errors
