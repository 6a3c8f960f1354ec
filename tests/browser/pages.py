"""What the browser tests do on the console's pages: log in, and watch a page for problems."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmgateway.records import KeyFilter
from llmgateway.store.key_list import listing_pages

if TYPE_CHECKING:
    from playwright.async_api import ConsoleMessage, Cookie, Error, Page

    from tests.browser.console_server import ConsoleServer


@dataclass(slots=True)
class Problems:
    """Console errors and uncaught exceptions of the pages watched. Chromium reports every
    Content-Security-Policy violation as a console error (`Refused to …`), so an empty list
    means no violation either."""

    seen: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        """Record `page`'s problems from now on."""
        # plain functions: playwright marks a handler with attributes, which a slotted
        # object's bound method cannot take
        seen = self.seen

        def console(message: ConsoleMessage) -> None:
            if message.type in ("error", "assert"):
                seen.append(f"console {message.type}: {message.text} ({message.location})")

        def exception(error: Error) -> None:
            seen.append(f"uncaught: {error.message}")

        page.on("console", console)
        page.on("pageerror", exception)


async def log_in(page: Page, console: ConsoleServer, token: str | None = None) -> None:
    """Fill the login form with `token` (default: the right one) and send it."""
    await page.goto(f"{console.url}/login")
    await page.locator("input[name=token]").fill(console.token if token is None else token)
    await page.locator("form button[type=submit], form input[type=submit]").first.click()


async def session_cookies(page: Page) -> list[Cookie]:
    """The cookies the browser holds for the console."""
    return await page.context.cookies()


async def disabled_fingerprints(console: ConsoleServer) -> set[str]:
    """The fingerprints of the keys the store holds as disabled."""
    async with console.store() as store:
        found: set[str] = set()
        async for page in listing_pages(store, KeyFilter(disabled=True)):
            found |= {row.fingerprint for row in page if row.disabled_at is not None}
        return found


async def go_to(page: Page, name: str) -> None:
    """Follow the link `name` ("Keys", ...) of the console's navigation."""
    await page.locator("header nav").get_by_role("link", name=name).click()
