"""The console on a phone's screen: no page is wider than the screen (tables scroll inside
their box, the page does not), and none logs a problem."""

from __future__ import annotations

from playwright.async_api import Browser

from tests.browser.console_server import ConsoleServer
from tests.browser.pages import Problems, log_in

PAGES = ("/", "/keys", "/proxies", "/breakers", "/jobs")


async def test_no_page_is_wider_than_a_phone(
    browser: Browser, problems: Problems, console: ConsoleServer
) -> None:
    context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = await context.new_page()
    problems.watch(page)
    await log_in(page, console)
    await page.wait_for_url(f"{console.url}/")
    for path in PAGES:
        await page.goto(f"{console.url}{path}")
        widths = await page.evaluate(
            "() => [document.documentElement.scrollWidth, window.innerWidth]"
        )
        assert widths[0] <= widths[1], f"{path}: {widths[0]} px wide on a {widths[1]} px phone"
    await context.close()
    assert problems.seen == []
