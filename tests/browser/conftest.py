"""Playwright driving the system's Chromium (never a downloaded browser) against the stack.

Screenshots go to `tests/browser/artifacts/` (ignored by git).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack_fixtures import RunningStack

playwright_sync = pytest.importorskip("playwright.sync_api")

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def chromium_path() -> str | None:
    for candidate in (os.environ.get("SDSTACK_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[playwright_sync.Browser]:
    executable = chromium_path()
    if executable is None:
        pytest.skip("no system Chromium (scripts/install_system_packages.sh installs it)")
    with playwright_sync.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: playwright_sync.Browser, running_stack: RunningStack) -> Iterator:
    context = browser.new_context(
        base_url=running_stack.base_url, viewport={"width": 1280, "height": 900}, locale="en-US"
    )
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, errors


def screenshot(page, name: str) -> Path:
    """Save a full-page screenshot as an artifact of the test run."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
