"""The clients page in a real browser on a real `serve`: sign in, create a client from the
form, see its secret once (and never again: not in the table, not on its page), disable it
from the table and see its state change, as the store holds it; a bad field is said on the
page, the form kept as typed. No CSP violation or script error on the way."""

from __future__ import annotations

import hashlib
import re

import pytest
from playwright.async_api import Page, expect

from llmgateway.core.clients import well_formed
from llmgateway.store import clients as stored
from tests.browser.console_server import ConsoleServer, KeySet
from tests.browser.pages import Problems, go_to, log_in


@pytest.fixture
def keys() -> KeySet:
    """A handful of keys: this page is about clients."""
    return KeySet.sized(good=5, invalid=2, noquota=1)


async def test_create_see_the_secret_once_then_disable(page: Page, console: ConsoleServer) -> None:
    await log_in(page, console)
    await page.wait_for_url(f"{console.url}/")
    await go_to(page, "Clients")
    await expect(page.get_by_role("heading", name="Clients", exact=True)).to_be_visible()
    await page.locator("#new-name").fill("web-team")
    await page.locator("#new-rpm").fill("30")
    await page.locator("#new-notes").fill("made in the browser")
    await page.get_by_role("button", name="Create").click()
    await expect(page.get_by_role("heading", name="Client web-team created")).to_be_visible()
    await expect(page.get_by_role("status")).to_contain_text("Copy the token now")
    secret = await page.locator("#secret").input_value()
    assert well_formed(secret)
    async with console.store() as store:
        record = await stored.find(store.engine, "web-team")
    assert record is not None
    assert record.token_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    assert record.rpm == 30

    await page.get_by_role("link", name="Back to the clients").click()
    row = page.locator("#client-web-team")
    await expect(row.locator("span.state")).to_have_text("enabled")
    await expect(row).to_contain_text(record.shown)
    await expect(row).to_contain_text("rpm 30")
    assert secret[:-4] not in await page.content()
    await row.get_by_role("button", name="Disable").click()
    await expect(page.get_by_role("status")).to_have_text("Client web-team disabled.")
    await expect(page.locator("#client-web-team span.state")).to_have_text("disabled")
    await expect(
        page.locator("#client-web-team").get_by_role("button", name="Enable")
    ).to_be_visible()
    async with console.store() as store:
        record = await stored.find(store.engine, "web-team")
    assert record is not None
    assert not record.enabled
    await page.locator("#client-web-team").get_by_role("link", name="web-team").click()
    await expect(page.get_by_role("heading", name=re.compile("Client web-team"))).to_contain_text(
        "disabled"
    )
    assert secret[:-4] not in await page.content()


async def test_a_bad_field_is_said_on_the_page(
    page: Page, console: ConsoleServer, problems: Problems
) -> None:
    await log_in(page, console)
    await page.wait_for_url(f"{console.url}/")
    await go_to(page, "Clients")
    await page.locator("#new-name").fill("web-b")
    await page.locator("#new-expires").fill("next tuesday")
    await page.get_by_role("button", name="Create").click()
    await expect(page.get_by_role("alert")).to_contain_text("expires: 'next tuesday': not a date")
    await expect(page.locator("#new-name")).to_have_value("web-b")
    await expect(page.locator("#new-expires")).to_have_value("next tuesday")
    async with console.store() as store:
        assert await stored.find(store.engine, "web-b") is None
    # the refusal is a 400 page, which Chromium reports as a failed load: that one is expected
    [refused] = [seen for seen in problems.seen if "status of 400" in seen]
    assert f"'url': '{console.url}/clients'" in refused
    problems.seen.remove(refused)
