"""The browser the console tests drive: Debian's Chromium, or the one Playwright downloads."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI

GET_CHROMIUM = "no Chromium: `apt-get install chromium` or `python -m playwright install chromium`"


@functools.cache
def chromium() -> str | None:
    """Debian's Chromium, else Playwright's own (`python -m playwright install chromium`)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        for path in (shutil.which("chromium"), p.chromium.executable_path):
            if path and Path(path).exists():
                return path
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before the test's fixtures (a whole hub) start. In CI a browser test that cannot run
    # fails: a skip there would hide it.
    if "browser" in getattr(item, "fixturenames", ()) and chromium() is None:
        if IN_CI:
            pytest.fail(GET_CHROMIUM)
        pytest.skip(GET_CHROMIUM)


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium(),
            args=[
                "--no-sandbox",
                "--headless",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()
