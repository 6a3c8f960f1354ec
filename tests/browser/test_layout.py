"""The console on a phone's screen: no page is wider than the screen (tables scroll inside
their box, the page does not; the Traffic table too, which scrolls on a phone and not on a
laptop), and none logs a problem."""

from __future__ import annotations

import time

import sqlalchemy as sa
from playwright.async_api import Browser, expect

from llmgateway.core.outcomes import ALL_MODELS
from llmgateway.records import UsageCount
from llmgateway.store import usage
from llmgateway.store.tables import keys, providers
from llmgateway.store.usage import HOUR
from tests.browser.console_server import ConsoleServer
from tests.browser.pages import Problems, log_in

PAGES = ("/", "/keys", "/clients", "/proxies", "/breakers", "/jobs")
PHONE = 390
"""A phone's screen width, in CSS pixels."""


async def test_no_page_is_wider_than_a_phone(
    browser: Browser, problems: Problems, console: ConsoleServer
) -> None:
    context = await browser.new_context(viewport={"width": PHONE, "height": 844}, is_mobile=True)
    page = await context.new_page()
    problems.watch(page)
    await log_in(page, console)
    await page.wait_for_url(f"{console.url}/")
    for path in PAGES:
        await page.goto(f"{console.url}{path}")
        # not window.innerWidth: a mobile viewport widens to fit a page wider than the screen
        wide = await page.evaluate("() => document.documentElement.scrollWidth")
        assert wide <= PHONE, f"{path}: {wide} px wide on a {PHONE} px phone"
    await context.close()
    assert problems.seen == []


async def test_the_traffic_table_scrolls_in_its_box_on_a_phone(
    browser: Browser, problems: Problems, console: ConsoleServer
) -> None:
    await with_usage(console)
    for width, scrolls in ((320, True), (390, True), (1280, False)):
        context = await browser.new_context(
            viewport={"width": width, "height": 844}, is_mobile=width < 600
        )
        page = await context.new_page()
        problems.watch(page)
        await log_in(page, console)
        await page.wait_for_url(f"{console.url}/")
        box = page.locator("section[aria-labelledby=traffic-heading] .scroll")
        await expect(box.locator("table")).to_be_visible()
        wide = await page.evaluate("() => document.documentElement.scrollWidth")
        assert wide <= width, f"{wide} px wide on a {width} px screen"
        inner, outer = await box.evaluate("box => [box.scrollWidth, box.clientWidth]")
        assert outer <= width
        assert (inner > outer) is scrolls, (width, inner, outer)
        await context.close()
    assert problems.seen == []


async def with_usage(console: ConsoleServer) -> None:
    """A gateway's hourly counts for one key of each provider, this hour and the one before."""
    async with console.store() as store, store.engine.connect() as conn:
        query = sa.select(keys.c.id, providers.c.name).join(providers).order_by(keys.c.id)
        firsts: dict[str, int] = {}
        for key_id, name in await conn.execute(query):
            firsts.setdefault(name, key_id)
        now = time.time()
        hour = int(now // HOUR * HOUR)
        counts = [
            UsageCount(name, key_id, ALL_MODELS, start, 123_456, 7_890)
            for name, key_id in firsts.items()
            for start in (hour - HOUR, hour)
        ]
        await usage.record(store, counts, now)
