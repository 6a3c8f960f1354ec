"""The console's overview over a real socket, on SQLite and PostgreSQL: the page, and the
fragment htmx polls, which shows new counts without a reload; keys masked, never in full."""

from __future__ import annotations

import aiohttp
from tests.helpers import ManualClock
from tests.integration.test_usage import SECRETS, _count, _provider_keys

from llmgateway.config.settings import Settings
from llmgateway.console.app import console_app
from llmgateway.console.context import Console
from llmgateway.console.listener import own_listener
from llmgateway.observe.masking import fingerprint
from llmgateway.observe.metrics_http import listening
from llmgateway.records import Actor
from llmgateway.store import Store, audit, usage

TOKEN = "admin-token-for-the-overview-test-0001"


async def test_the_overview_page_and_its_polled_fragment(store: Store, clock: ManualClock) -> None:
    ids = await _provider_keys(store)
    now = clock()
    await usage.record(store, [_count(ids[3], now, 30, 5)], now)
    await audit.record(store, Actor("bearer", "127.0.0.1", "test"), "disable", "--status x", 4)
    settings = Settings.model_validate({"admin": {"token": TOKEN}})
    console = Console.create(settings, store, clock=clock)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        listening(own_listener(console_app(console)), "127.0.0.1", 0) as base,
        aiohttp.ClientSession(headers=headers) as client,
    ):
        async with client.get(f"{base}/admin/") as answer:
            assert answer.status == 200
            page = await answer.text()
        assert "<html" in page
        assert 'hx-get="/admin/" hx-trigger="every 5s"' in page
        assert fingerprint(SECRETS[3]) in page
        assert "30 requests, 5 failed" in page
        assert "disable" in page
        assert "--status x" in page

        poll = {"HX-Request": "true"}
        await usage.record(store, [_count(ids[1], now, 70, 9)], now)
        async with client.get(f"{base}/admin/", headers=poll) as answer:
            assert answer.status == 200
            fragment = await answer.text()
        assert "<html" not in fragment
        assert fragment.lstrip().startswith('<div id="overview"')
        shown = fragment.index(fingerprint(SECRETS[1])) < fragment.index(fingerprint(SECRETS[3]))
        assert shown  # the key with 9 failures now leads the attention list
        assert "100 requests, 14 failed" in fragment
        assert all(secret not in page + fragment for secret in SECRETS)

        async with (  # no token: no overview
            aiohttp.ClientSession() as stranger,
            stranger.get(f"{base}/admin/", headers=poll) as answer,
        ):
            assert answer.status == 401
            assert fingerprint(SECRETS[1]) not in await answer.text()
