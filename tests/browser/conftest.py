"""Fixtures of the browser tests: the console served by a real `llmgateway serve` process
(`console`), a headless Chromium (`browser`), and a page in a fresh browser context that
records every console error, uncaught exception and Content-Security-Policy violation
(`page`, `problems`). Every test here is skipped, before any fixture is set up, without
Chromium or playwright (failed instead under LLMGATEWAY_REQUIRE_BROWSER=1)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from llmgateway.testing.fake_upstream import FakeUpstream
from tests.browser.chromium import launched, require_browser
from tests.browser.console_server import ConsoleServer, KeySet, console_server
from tests.browser.pages import Problems

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """No browser, no test: decided before the server or the browser is started."""
    require_browser()


@pytest.fixture
def keys() -> KeySet:
    """The data set: a few hundred keys in several states (a module may override it)."""
    return KeySet.sized()


@pytest.fixture
async def console(tmp_path: Path, fake: FakeUpstream, keys: KeySet) -> AsyncIterator[ConsoleServer]:
    """`llmgateway serve` with the console on, seeded with `keys`."""
    async with console_server(tmp_path / "served", fake, keys) as server:
        yield server


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium of the test's own."""
    async with launched() as chromium:
        yield chromium


@pytest.fixture
def problems() -> Problems:
    """What went wrong in the test's pages (console errors, exceptions, CSP violations)."""
    return Problems()


@pytest.fixture
async def page(browser: Browser, problems: Problems) -> AsyncIterator[Page]:
    """A page in a fresh context (no cookies); the test fails when its pages logged a console
    error, an uncaught exception or a CSP violation (`problems`)."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    tab = await context.new_page()
    problems.watch(tab)
    yield tab
    await context.close()
    assert problems.seen == [], "the console's pages had problems"
