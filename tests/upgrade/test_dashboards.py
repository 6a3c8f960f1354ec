"""The original llmGateway's dashboards keep working: `llm_gateway_keys_total{provider, model,
status}` on the gateway's `/metrics` and the Keeper's, scraped over real HTTP with the metrics
token, on SQLite and PostgreSQL, equal to the store's keys (per model, and `shared`), the same
on every process, current after each refresh, and never waited on by a scrape."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import asyncpg
import httpx2 as httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmgateway.config.settings import DatabaseSettings, Settings, WorkerSettings
from llmgateway.core.outcomes import ALL_MODELS, KeyStatus
from llmgateway.keyfiles import run_sync
from llmgateway.observe.metrics import LEGACY_KEYS, Metrics
from llmgateway.observe.metrics_http import keeper_metrics
from llmgateway.observe.store_counts import StoreCounts
from llmgateway.records import StatusEvent
from llmgateway.store import Store
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import (
    METRICS_AUTH,
    OPENAI_TOKEN,
    free_port,
    gateway_settings,
    libpq_dsn,
    start_gateway,
)

OPENAI = {  # per-model statuses (gpt-4o-mini, gpt-4o) of four keys
    "sk-dash-openai-0000000000001": ("valid", "valid"),
    "sk-dash-openai-0000000000002": ("invalid_key", "invalid_key"),
    "sk-dash-openai-0000000000003": ("valid", "rate_limited"),
    "sk-dash-openai-0000000000004": ("no_quota", "untested"),
}
GEMINI = {  # one status for all models (shared_key_status)
    "AIza-dash-gemini-000000000001": "valid",
    "AIza-dash-gemini-000000000002": "invalid_key",
    "AIza-dash-gemini-000000000003": "untested",
    "AIza-dash-gemini-000000000004": "timeout",
}
REMOVED = "AIza-dash-gemini-000000000009"  # valid, then taken out of the key files
MODELS = ("gpt-4o-mini", "gpt-4o")

Counts = dict[tuple[str, str, str], float]


def expected() -> Counts:
    """What the original's `SELECT provider, model, status, count(*)` gives for the keys above:
    every active (key, model) row, `shared` for the marker."""
    counts: Counts = {}
    for statuses in OPENAI.values():
        for model, status in zip(MODELS, statuses, strict=True):
            counts["openai", model, status] = counts.get(("openai", model, status), 0) + 1
    for status in GEMINI.values():
        counts["gemini", "shared", status] = counts.get(("gemini", "shared", status), 0) + 1
    return counts


def family(text: str, name: str, label: str) -> Counts:
    """One family's samples by (provider, model, `label`), from the parsed exposition."""
    for found in text_string_to_metric_families(text):
        if found.name == name:
            assert found.type == "gauge", name
            return {
                (s.labels["provider"], s.labels["model"], s.labels[label]): s.value
                for s in found.samples
            }
    raise AssertionError(f"no family {name}")


async def scrape(http: httpx.AsyncClient, url: str) -> str:
    answer = await http.get(f"{url}/metrics", headers=METRICS_AUTH)
    assert answer.status_code == 200, answer.text
    return answer.text


async def set_status(store: Store, secret: str, model: str, status: str) -> None:
    ids = {row.secret: row.key_id for row in (await store.snapshot()).keys}
    event = StatusEvent(ids[secret], model, KeyStatus(status), observed_at=time.time())
    await store.apply_events([event])


async def prepared(settings: Settings) -> None:
    """The key files synced (the removed key once present, then gone) and each key's status
    written as a gateway or a probe would."""
    folder = Path(settings.providers["openai"].keys_path)
    write_keys(folder, OPENAI)
    gemini = Path(settings.providers["gemini"].keys_path)
    write_keys(gemini, [*GEMINI, REMOVED])
    async with await Store.configured(settings.database) as store:
        await store.upgrade()
        await run_sync(settings, store)
        await set_status(store, REMOVED, ALL_MODELS, "valid")
        write_keys(gemini, GEMINI)
        await run_sync(settings, store)
        for secret, statuses in OPENAI.items():
            for model, status in zip(MODELS, statuses, strict=True):
                if status != "untested":
                    await set_status(store, secret, model, status)
        for secret, status in GEMINI.items():
            if status != "untested":
                await set_status(store, secret, ALL_MODELS, status)


def dashboard_settings(tmp_path: Path, fake: FakeUpstream, url: str) -> Settings:
    return gateway_settings(tmp_path, fake).model_copy(
        update={
            "database": DatabaseSettings(url=url),
            "worker": WorkerSettings(metrics_port=free_port()),
        }
    )


async def test_gateway_and_keeper_export_the_stores_counts_as_the_original_did(
    tmp_path: Path, fake: FakeUpstream, db_url: str
) -> None:
    settings = dashboard_settings(tmp_path, fake, db_url)
    await prepared(settings)
    keeper_url = f"http://127.0.0.1:{settings.worker.metrics_port}"
    async with (
        start_gateway(settings) as gateway,
        await Store.configured(settings.database) as store,
        keeper_metrics(settings, Metrics.create(), store) as keeper_counts,
        httpx.AsyncClient() as http,
    ):
        gateway_counts: StoreCounts = gateway.app.state.store_counts
        assert keeper_counts is not None
        at_gateway = await scrape(http, gateway.url)
        at_keeper = await scrape(http, keeper_url)
        want = expected()
        assert family(at_gateway, LEGACY_KEYS, "status") == want
        assert family(at_keeper, LEGACY_KEYS, "status") == want  # the same: max(), not sum()
        # the key removed from the files was valid too: it is not counted
        assert want["gemini", "shared", "valid"] == 1
        # the gateway's own gauges speak of states, the original's of stored statuses
        states = family(at_gateway, "llmgateway_key_states", "state")
        assert states["openai", "gpt-4o", "invalid"] == 1
        assert ("openai", "gpt-4o", "invalid_key") not in states
        assert family(at_keeper, "llmgateway_keys", "status") == want

        # a status change shows after the next refresh of each process, not before
        await set_status(store, "AIza-dash-gemini-000000000003", ALL_MODELS, "no_access")
        unchanged = family(await scrape(http, gateway.url), LEGACY_KEYS, "status")
        assert unchanged == want, "a scrape shows the counts last read: it does not query"
        assert await gateway_counts.refresh()
        assert await keeper_counts.refresh()
        del want["gemini", "shared", "untested"]  # its one key
        want["gemini", "shared", "no_access"] = 1
        assert family(await scrape(http, gateway.url), LEGACY_KEYS, "status") == want
        assert family(await scrape(http, keeper_url), LEGACY_KEYS, "status") == want


@pytest.mark.postgres
async def test_a_locked_store_delays_neither_scrapes_nor_requests_and_is_logged_once(
    tmp_path: Path, fake: FakeUpstream, pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "llmgateway.metrics")
    settings = dashboard_settings(tmp_path, fake, pg_database)
    await prepared(settings)
    async with start_gateway(settings) as gateway, httpx.AsyncClient() as http:
        counts: StoreCounts = gateway.app.state.store_counts
        counts.timeout = 0.5
        want = expected()
        assert family(await scrape(http, gateway.url), LEGACY_KEYS, "status") == want
        locker = await asyncpg.connect(libpq_dsn(pg_database))
        try:
            locking = locker.transaction()
            await locking.start()
            await locker.execute("LOCK TABLE key_status IN ACCESS EXCLUSIVE MODE")
            assert not await counts.refresh()
            assert not await counts.refresh()
            # the lock stays until the end of this block: anything querying key_status waits
            text = await asyncio.wait_for(scrape(http, gateway.url), 10)
            assert family(text, LEGACY_KEYS, "status") == want  # the last counts read
            client = openai.AsyncOpenAI(
                base_url=f"{gateway.url}/v1", api_key=OPENAI_TOKEN, max_retries=0
            )
            reply = await asyncio.wait_for(
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                ),
                10,
            )
            assert reply.choices[0].message.content
            await locking.rollback()
        finally:
            await locker.close()
        assert await counts.refresh()
    logged = [r for r in caplog.records if r.name == "llmgateway.metrics"]
    assert [r.levelno for r in logged] == [logging.WARNING, logging.INFO], logged
    assert "timed out" in logged[0].getMessage()
