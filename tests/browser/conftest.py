"""Browser tests of the console: Playwright's sync API driving Debian's headless Chromium against a real
gateway process (`switchboard serve`) in front of the fault upstream, itself a process. One gateway, one
upstream and one browser per test module; each test gets its own page in a logged-in browser context.

Without a Chromium these tests skip, saying how to run them; with `CI` set they fail instead (CI never
skips them). Screenshots go to `test-output/browser/` at the repo root (`$SWITCHBOARD_TEST_OUTPUT/browser/`
when that is set).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from console_harness import (
    ADMIN_TOKEN,
    CHROMIUM_ARGS,
    ROOT,
    SECRET_ENV,
    START_S,
    Gateway,
    Process,
    chromium_path,
    config_text,
)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = chromium_path()
    if path is None:
        message = (
            "no Chromium for the console's browser tests: install it (apt-get install chromium) or run "
            "scripts/test as root, which installs it"
        )
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: these tests never skip there)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, chromium: str) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("browser")
    env = {**os.environ, **SECRET_ENV, "PYTHONUNBUFFERED": "1"}
    for name in ("LOCAL_API_KEY", "SWITCHBOARD_DATA_DIR", "SWITCHBOARD_PORT", "SWITCHBOARD_HOST"):
        env.pop(name, None)
    upstream = Process([sys.executable, str(ROOT / "scripts" / "fault_upstream.py"), "--port", "0"], env)
    try:
        upstream_url = upstream.wait_for("listening on ", START_S)
        config = tmp / "switchboard.toml"
        config.write_text(config_text(upstream_url, tmp / "data"))
        serve = Process([sys.executable, "-m", "service.cli", "serve", "--config", str(config)], env)
        try:
            url = serve.wait_for("switchboard listening on ", START_S)
            yield Gateway(url, tmp / "data", serve)
        finally:
            serve.stop()
    finally:
        upstream.stop()


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def console(browser: object, gateway: Gateway) -> Iterator[object]:
    """A browser context logged in once through the login page; its cookie serves every page after."""
    from playwright.sync_api import Browser, expect

    assert isinstance(browser, Browser)
    context = browser.new_context(base_url=gateway.url, viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.goto("/admin/")
    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
    page.close()
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(console: object) -> Iterator[object]:
    from playwright.sync_api import BrowserContext

    assert isinstance(console, BrowserContext)
    page = console.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        yield page
    finally:
        page.close()
    # A script error or a CSP violation is a failure of the page, whatever the test looked at.
    assert not errors, errors
