"""The console on any screen: every page at 390 px and 1280 px without sideways scrolling, the
nav menu on a phone, dark mode, keyboard shortcuts and relative times (issue 17, item 6).

One browser and one logged-in page per test; screenshots of every page at both widths, light
and dark, go to tests/artifacts/screens/ (ignored by git).
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import uuid
from pathlib import Path

import pytest
from playwright import sync_api as playwright_api

from tests.packaging import package_bytes, upload

SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screens"
ROOT = Path(__file__).resolve().parent.parent.parent
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}

pytestmark = [pytest.mark.timeout(300)]
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

expect = playwright_api.expect

# Long words on purpose: they used to push tables and cards wider than a phone.
CHATTY = r"""
async def run(context, input, *args):
    print("args:", *args, flush=True)
    print("a_very_long_unbroken_identifier_that_used_to_push_the_page_sideways_on_phones" * 2)
    print("\x1b[31mred\x1b[0m and plain", flush=True)
"""

LONG_PACKAGE_JSON = {
    "name": "a-rather-long-sequence-name-for-small-phones",
    "version": "1.0.0-rc.1+build.20261203",
    "main": "main.py",
    "engines": {"python3": "3.11"},
    "description": "Long words: https://example.org/a/very/long/path/that/does/not/break/anywhere",
    "homepage": "https://example.org/a/very/long/path/that/does/not/break/anywhere/at/all/really",
}

# Names every element that reaches past the viewport (or whose content spills past it) and is
# not inside a box that scrolls on its own, so a failure says what to fix.
OVERFLOWING = """() => {
  const w = window.innerWidth;
  const out = [];
  const scrolls = (el) => {
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      const right = p.getBoundingClientRect().right;
      if (getComputedStyle(p).overflowX !== 'visible' && right <= w + 1) return true;
    }
    return false;
  };
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    const visible = getComputedStyle(el).overflowX === 'visible';
    const right = Math.max(r.right, visible ? r.left + el.scrollWidth : 0);
    if (r.width > 0 && right > w + 1 && !scrolls(el)) {
      const cls = typeof el.className === 'string' ? el.className.trim() : '';
      out.push(el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
        (cls ? '.' + cls.split(/\\s+/).join('.') : '') + ' right=' + Math.round(right));
    }
  }
  return {scroll: document.documentElement.scrollWidth, inner: w, culprits: out.slice(0, 12)};
}"""


LUMINANCE = """(el, prop) => {
  const colour = getComputedStyle(el)[prop];
  if (!colour) return null;
  const ctx = document.createElement('canvas').getContext('2d');
  ctx.fillStyle = colour;
  ctx.fillRect(0, 0, 1, 1);
  const [r, g, b] = ctx.getImageData(0, 0, 1, 1).data;
  return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255;
}"""


def pack_dir(path: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for item in sorted(path.iterdir()):
            if item.is_file():
                tar.add(item, arcname=item.name)
    return buf.getvalue()


CSP_DETAILS = """
document.addEventListener("securitypolicyviolation", (e) => {
  const el = e.target instanceof Element ? e.target : null;
  const what = el ? `<${el.tagName.toLowerCase()} id=${el.id} class=${el.className}>` : "";
  console.error(`CSP ${e.violatedDirective} blocked ${e.blockedURI} in ${e.sourceFile}:` +
    `${e.lineNumber} ${what} ${e.sample}`);
}, true);
"""


class Screen:
    """One logged-in page of one browser context; errors of the page are collected."""

    def __init__(self, browser, url: str, person, **context) -> None:
        self.url = url
        self.context = browser.new_context(viewport=DESKTOP, **context)
        # Chromium's CSP message names neither the page's element nor the script that styled
        # it: the violation event does, and says so in the errors collected below.
        self.context.add_init_script(CSP_DETAILS)
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.errors: list[str] = []
        self.wide: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"{self.page.url}: {exc}"))
        self.page.on(
            "console",
            lambda m: (
                self.errors.append(f"{self.page.url}: {m.text}")
                if m.type == "error" and "Failed to load resource" not in m.text
                else None
            ),
        )
        self.page.goto(url + "/login/")
        self.fits("login", DESKTOP)
        self.fits("login", PHONE)
        self.page.set_viewport_size(DESKTOP)
        self.page.fill("input[name=username]", person.username)
        self.page.fill("input[name=password]", person.password)
        self.page.click("button.primary")
        self.page.wait_for_url(url + "/")

    def go(self, path: str) -> None:
        self.page.goto(self.url + path)

    def fits(self, name: str, size: dict[str, int], tag: str = "") -> None:
        """At this size the page does not scroll sideways (else noted in `self.wide`); a
        full-page screenshot is kept."""
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.set_viewport_size(size)
        found = self.page.evaluate(OVERFLOWING)
        self.page.screenshot(path=str(SHOTS / f"{name}-{size['width']}{tag}.png"), full_page=True)
        if found["scroll"] > found["inner"]:
            self.wide.append(f"{name} at {size['width']} px: {found}")


@pytest.fixture
def data(hub, admin_api):
    """Real things for every page to show: a sequence with a finished instance (long words in
    its output), a sequencer in a component, a topic."""
    sid = upload(admin_api, package_bytes({"main.py": CHATTY}, LONG_PACKAGE_JSON))
    started = admin_api.post(f"/sequence/{sid}/start", json={"args": ["hello", 42]})
    assert started.status_code == 200, started.text
    iid = started.json()["id"]
    dark = upload(admin_api, pack_dir(ROOT / "examples" / "darknight"))
    comp = f"ESW.screens{uuid.uuid4().hex[:4]}"
    assert admin_api.post("/components", json={"name": comp}).status_code == 201
    loaded = admin_api.post(
        f"/component/{comp}/load-script", json={"sequence": dark, "prefix": "ESW.darknight"}
    )
    assert loaded.status_code == 200, loaded.text
    sequencers = admin_api.get("/sequencers").json()
    sequencer = next(s for s in sequencers if s.get("component") == comp)
    topic = f"screens-{uuid.uuid4().hex[:6]}"
    assert admin_api.post("/topics", json={"id": topic, "content-type": "text/plain"}).is_success
    yield {"sequence": sid, "instance": iid, "sequencer": sequencer["id"], "topic": topic}
    admin_api.post(f"/component/{comp}/unload-script", json={})
    admin_api.delete(f"/topics/{topic}")


def pages(data) -> list[tuple[str, str]]:
    return [
        ("overview", "/"),
        ("sequences", "/sequences/"),
        ("sequence", f"/sequences/{data['sequence']}/"),
        ("instances", "/instances/"),
        ("instance", f"/instances/{data['instance']}/"),
        ("sequencers", "/sequencers/"),
        ("sequencer", f"/sequencers/{data['sequencer']}/"),
        ("components", "/components/"),
        ("observations", "/observations/"),
        ("resources", "/resources/"),
        ("topics", "/topics/"),
        ("topic", f"/topics/{data['topic']}/"),
        ("workers", "/workers/"),
        ("audit", "/audit/"),
        ("tokens", "/tokens/"),
        ("users", "/users/"),
    ]


def test_every_page_fits_a_phone_and_a_desktop_light_and_dark(hub, people, browser, data):
    screen = Screen(browser, hub.url, people["admin"])
    page = screen.page

    def luminance(selector: str, prop: str = "backgroundColor") -> float:
        # A canvas reads any CSS colour syntax the browser may answer with as RGB. A live page
        # may swap the element out between finding and reading it (a detached element has no
        # computed style): read again.
        for _ in range(20):
            value = page.eval_on_selector(selector, LUMINANCE, prop)
            if value is not None:
                return value
            page.wait_for_timeout(100)
        raise AssertionError(f"no colour for {selector} {prop}")

    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        tag = "-dark" if scheme == "dark" else ""
        for name, path in pages(data):
            screen.go(path)
            if name == "instance":
                expect(page.locator("#log-stdout-lines")).to_contain_text("args: hello 42")
            if scheme == "dark":
                assert luminance("body") < 0.15, f"{name}: the page is not dark"
                assert luminance("body", "color") > 0.75, f"{name}: the text is not light"
                if page.locator(".card").count():
                    assert luminance(".card") < 0.2, f"{name}: cards are not dark"
            else:
                assert luminance("body") > 0.9, f"{name}: the page is not light"
            screen.fits(name, DESKTOP, tag)
            screen.fits(name, PHONE, tag)
            page.set_viewport_size(DESKTOP)
    # In the dark, fields and badges are dark too, their text readable.
    screen.go("/instances/")
    assert luminance(".filters select") < 0.2
    assert luminance(".badge") < 0.3 and luminance(".badge", "color") > 0.5
    assert not screen.wide, "\n".join(screen.wide)
    assert not screen.errors, screen.errors


def test_the_nav_is_a_menu_on_a_phone(hub, people, browser):
    screen = Screen(browser, hub.url, people["admin"])
    page = screen.page
    page.set_viewport_size(PHONE)
    toggle = page.locator("[data-menu-toggle]")
    links = page.locator("nav.nav a")
    # Folded: one button, no links showing, nothing cut off at the side.
    expect(toggle).to_be_visible()
    expect(toggle).to_have_attribute("aria-expanded", "false")
    expect(links.first).to_be_hidden()
    # Opened from the keyboard: every link shows, inside the screen, and takes a tap.
    toggle.focus()
    page.keyboard.press("Enter")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    for i in range(links.count()):
        expect(links.nth(i)).to_be_visible()
        box = links.nth(i).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
    expect(page.locator(".who")).to_contain_text("admin-user")
    screen.fits("menu-open", PHONE)
    # Esc folds it again and gives the focus back to the button.
    page.keyboard.press("Escape")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    expect(toggle).to_be_focused()
    toggle.click()
    page.locator("nav.nav a", has_text="Audit").click()
    page.wait_for_url(hub.url + "/audit/")
    expect(page.locator("h1")).to_have_text("Audit log")
    # A tablet has the menu too; at desktop width the links are simply there, in one row.
    page.set_viewport_size({"width": 900, "height": 900})
    expect(toggle).to_be_visible()
    screen.fits("audit-nav", {"width": 900, "height": 900})
    page.set_viewport_size(DESKTOP)
    expect(toggle).to_be_hidden()
    tops = {round(links.nth(i).bounding_box()["y"]) for i in range(links.count())}
    assert len(tops) == 1, f"the nav wraps at 1280 px: {tops}"
    assert not screen.wide, "\n".join(screen.wide)
    assert not screen.errors, screen.errors


def test_the_nav_wraps_without_javascript(hub, people, browser):
    context = browser.new_context(viewport=PHONE, java_script_enabled=False)
    page = context.new_page()
    page.goto(hub.url + "/login/")
    page.fill("input[name=username]", people["admin"].username)
    page.fill("input[name=password]", people["admin"].password)
    page.click("button.primary")
    page.wait_for_url(hub.url + "/")
    expect(page.locator("[data-menu-toggle]")).to_be_hidden()
    links = page.locator("nav.nav a")
    for i in range(links.count()):
        box = links.nth(i).bounding_box()
        assert box and box["x"] + box["width"] <= PHONE["width"], box
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    # Times show absolute, with their zone, when nothing makes them relative.
    page.goto(hub.url + "/audit/")
    first = page.locator("#rows time[data-when]").first
    expect(first).to_have_text(re.compile(r"^(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d UTC$"))
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "audit-nojs-390.png"), full_page=True)
    context.close()


def test_keyboard_shortcuts(hub, people, browser):
    screen = Screen(browser, hub.url, people["admin"])
    page = screen.page
    # g then a letter goes there.
    for letter, path, title in [
        ("s", "/sequences/", "Sequences"),
        ("a", "/audit/", "Audit log"),
        ("i", "/instances/", "Instances"),
        ("q", "/sequencers/", "Sequencers"),
        ("c", "/components/", "Sequence components"),
        ("t", "/topics/", "Topics"),
        ("o", "/", "Overview"),
    ]:
        page.keyboard.press("g")
        page.keyboard.press(letter)
        page.wait_for_url(hub.url + path)
        expect(page.locator("h1")).to_contain_text(title)
    # `/` focuses the page's filter; typing there is typing, not shortcuts.
    screen.go("/audit/")
    page.keyboard.press("/")
    actor = page.locator(".filters input[name=actor]")
    expect(actor).to_be_focused()
    page.keyboard.type("g?ga")
    expect(actor).to_have_value("g?ga")
    expect(page).to_have_url(hub.url + "/audit/")
    expect(page.locator("dialog.keys")).to_have_count(0)
    # A page's own search box comes first.
    screen.go("/sequences/")
    page.keyboard.press("/")
    expect(page.locator("[data-search]")).to_be_focused()
    # `?` opens the help, Esc closes it.
    page.locator("h1").click()
    page.keyboard.press("?")
    help_ = page.locator("dialog.keys")
    expect(help_).to_be_visible()
    expect(help_).to_contain_text("go to sequencers")
    page.set_viewport_size(PHONE)
    screen.fits("shortcuts-help", PHONE)
    page.keyboard.press("Escape")
    expect(help_).to_be_hidden()
    assert not screen.errors, screen.errors


def test_times_are_relative_with_the_absolute_time_on_hover(hub, people, browser, admin_api):
    upload(admin_api, package_bytes({"main.py": CHATTY}, LONG_PACKAGE_JSON))
    screen = Screen(browser, hub.url, people["admin"])
    page = screen.page
    for path, where in [("/sequences/", "table.rows"), ("/audit/", "#rows"), ("/", "#ov-recent")]:
        screen.go(path)
        moment = page.locator(f"{where} time[data-when]").first
        expect(moment).to_have_text(re.compile(r"^(just now|\d+ (s|min) ago)$"))
        expect(moment).to_have_attribute(
            "title", re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")
        )
        assert re.match(r"^\d{4}-\d\d-\d\dT", moment.get_attribute("datetime") or "")
    # It keeps ticking: with the page's clock a few minutes on, the same entry says so.
    page.clock.install()
    screen.go("/")
    moment = page.locator("#ov-recent time[data-when]").first
    expect(moment).to_have_text(re.compile(r"^(just now|\d+ s ago)$"))
    page.clock.fast_forward("05:00")
    expect(moment).to_have_text(re.compile(r"^[5-6] min ago$"))
    assert not screen.errors, screen.errors
