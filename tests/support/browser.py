"""What the browser tests share: Debian's Chromium driven by Playwright, and reporting helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
VIEWER = "ana"


def launched_chromium(sync_api: Any) -> Iterator[Any]:
    """The body of a module-scoped ``browser`` fixture: the system Chromium, or a skip saying how to get it."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install Debian's browser with "
                    "`apt-get install -y --no-install-recommends chromium chromium-driver` (`make test` does this when it is missing)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def log_in(page: Any, base_url: str) -> None:
    """Open the login link, as a user does with the one ``metawsm serve`` prints: the daemon sets
    the session cookie and sends the browser to ``/`` without the token in the address bar."""
    from support.http import token_for

    page.goto(f"{base_url}/?token={token_for(base_url)}")
    page.wait_for_function("() => location.hash === '' && !!localStorage.getItem('metawsm.pageKey')")
    assert page.url == base_url + "/", page.url  # the key left the address bar for the page's storage
    # Leave the app: each test's own first navigation then loads it afresh (and opens its
    # WebSocket after the test's routes are in place).
    page.goto("about:blank")


def record_page_problems(page: Any, base_url: str, external: list[str], errors: list[str]) -> None:
    """Collect requests that leave the daemon (``external``) and JavaScript errors (``errors``)."""
    host = base_url.split("//", 1)[1]
    page.on("request", lambda r: None if r.url.split("//", 1)[-1].startswith(host) or r.url.startswith("data:")
            else external.append(r.url))
    page.on("pageerror", lambda error: errors.append(str(error)))


def announce(request: pytest.FixtureRequest, text: str) -> None:
    """A line in the test output even when output is captured."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(text)
    else:
        print(text)
