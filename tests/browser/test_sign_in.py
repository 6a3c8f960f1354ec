"""Signing in to the console in a real browser: a wrong token is refused, the right one lands on
the overview with a session cookie the page's scripts cannot read and other sites cannot send,
and logging out ends the session. No page logs an error or a CSP violation (the `page`
fixture fails the test on any)."""

from __future__ import annotations

import re

from playwright.async_api import Page, expect

from tests.browser.console_server import ConsoleServer
from tests.browser.pages import Problems, go_to, log_in, session_cookies


async def test_a_wrong_token_is_refused(
    page: Page, console: ConsoleServer, problems: Problems
) -> None:
    await log_in(page, console, token=console.token[:-1] + "x")
    await expect(page.get_by_role("alert")).to_have_text("Wrong token.")
    await expect(page).to_have_url(re.compile(r"/admin/login"))
    # the refusal's 401 is the one error Chromium logs: it is the answer, not a fault
    [refused] = problems.seen
    assert "status of 401" in refused
    problems.seen.clear()
    assert await session_cookies(page) == []
    await page.goto(f"{console.url}/breakers")
    await expect(page).to_have_url(re.compile(r"/admin/login"))


async def test_the_right_token_lands_on_the_overview_until_logout(
    page: Page, console: ConsoleServer
) -> None:
    await log_in(page, console)
    await expect(page).to_have_url(f"{console.url}/")
    [cookie] = await session_cookies(page)
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False  # plain HTTP on loopback: a Secure cookie would be dropped
    assert console.token not in cookie["value"]
    await go_to(page, "Breakers")
    await expect(page).to_have_url(f"{console.url}/breakers")
    await expect(page.get_by_role("heading", name="Breakers")).to_be_visible()
    await page.get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(re.compile(r"/admin/login"))
    assert await session_cookies(page) == []  # the cookie is gone with the session
    await page.goto(f"{console.url}/breakers")
    await expect(page).to_have_url(re.compile(r"/admin/login"))
