"""The breakers page in a real browser on a real `serve`: gemini's breaker, opened by real
traffic through the gateway, is shown open, reset from its page after the confirmation, and
then closed by the gateway (the store holds the reset and the closed state)."""

from __future__ import annotations

from playwright.async_api import Dialog, Page, expect

from llmgateway.testing.fake_upstream import FakeUpstream
from tests.browser.console_server import ConsoleServer, open_gemini_breaker
from tests.browser.pages import go_to, log_in
from tests.helpers import eventually


async def test_a_breaker_reset_from_its_page_closes_it(
    page: Page, console: ConsoleServer, fake: FakeUpstream
) -> None:
    await open_gemini_breaker(console, fake)
    await log_in(page, console)
    await page.wait_for_url(f"{console.url}/")
    await go_to(page, "Breakers")
    row = page.locator("tr", has_text="gemini")
    await expect(row).to_contain_text("open")
    asked: list[str] = []

    async def confirm(dialog: Dialog) -> None:
        asked.append(dialog.message)
        await dialog.accept()

    page.once("dialog", confirm)
    await row.get_by_role("button", name="Reset").click()
    await expect(page.get_by_role("status")).to_contain_text("Reset of gemini's breakers")
    assert asked == ["Close gemini's circuit breakers in every gateway?"]
    async with console.store() as store:

        async def closed_by_the_gateway() -> bool:
            [gemini] = [b for b in await store.breakers() if b.provider == "gemini"]
            return gemini.reset_at is not None and gemini.state == 0

        await eventually(closed_by_the_gateway, 20, step=0.1, what="gemini reset and closed")
    await page.reload()
    await expect(page.locator("tr", has_text="gemini")).to_contain_text("closed")
