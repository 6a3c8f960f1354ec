"""Debian's Chromium, headless, driven by playwright (the Python package; it never downloads a
browser of its own: the executable is always `CHROMIUM`).

Without the browser a browser test is skipped with the reason, or failed under
`LLMGATEWAY_REQUIRE_BROWSER=1` (CI, which installs it). The playwright package is a dev
dependency like any other: the tests import it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser

CHROMIUM = Path("/usr/bin/chromium")
REQUIRE_VARIABLE = "LLMGATEWAY_REQUIRE_BROWSER"
ARGS = (
    "--headless",
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
"""Chromium's switches: headless, and nothing reaching out of the loopback of the test."""


def browser_problem() -> str | None:
    """None when the browser tests can run here, else why not."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"no {CHROMIUM} (Debian: apt-get install --no-install-recommends chromium)"
    return None


def require_browser() -> None:
    """Skip the running test without the browser (fail it when the environment requires it)."""
    problem = browser_problem()
    if problem is None:
        return
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        pytest.fail(f"{problem}; {REQUIRE_VARIABLE}=1 requires it", pytrace=False)
    pytest.skip(problem)


@contextlib.asynccontextmanager
async def launched() -> AsyncIterator[Browser]:
    """A headless Chromium with a fresh profile of its own (removed when it closes)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=list(ARGS)
        )
        try:
            yield browser
        finally:
            await browser.close()
