"""The overview in a real browser on a real `serve`: it refreshes itself in place, so a change
the gateway writes to the store (gemini's breaker opening under real traffic) shows up with no
reload, and the keys the seed probed are counted by state."""

from __future__ import annotations

from playwright.async_api import Page, expect

from llmgateway.testing.fake_upstream import FakeUpstream
from tests.browser.console_server import ConsoleServer, open_gemini_breaker
from tests.browser.pages import log_in


async def test_the_overview_shows_a_store_change_without_a_reload(
    page: Page, console: ConsoleServer, fake: FakeUpstream
) -> None:
    await log_in(page, console)
    await page.wait_for_url(f"{console.url}/")
    keys = page.locator("section[aria-labelledby=keys-heading] tbody tr", has_text="openai")
    invalid = len(console.keys.openai_invalid)
    await expect(keys.locator("[data-state=invalid_key]")).to_have_text(f"invalid_key {invalid}")
    breakers = page.locator("section[aria-labelledby=breakers-heading] tbody tr")
    gemini = breakers.filter(has_text="gemini").locator("[data-state]")
    await expect(gemini).not_to_have_text("open")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    await open_gemini_breaker(console, fake)
    await expect(gemini).to_have_text("open", timeout=20_000)
    assert navigations == [], "refreshed in place, not reloaded"
