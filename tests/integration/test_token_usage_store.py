"""`store.token_usage` on SQLite and PostgreSQL: batches add up per slot, the sums come back
grouped by client, route, model, key (fingerprint and masked, never the key) or provider, and
the purge deletes the hours past retention but not those of the current quota periods; each
client's spend since each period's start comes from one query."""

from __future__ import annotations

import sqlalchemy as sa
from tests.helpers import ManualClock

from llmgateway.config.settings import Settings
from llmgateway.core.clients import Period
from llmgateway.core.quota import period_starts
from llmgateway.keeper import upkeep
from llmgateway.observe.masking import fingerprint, mask
from llmgateway.records import USAGE_HOUR, TokenCount
from llmgateway.store import Store
from llmgateway.store.tables import keys, token_usage
from llmgateway.store.token_usage import period_sums, purge_before, record, totals

HOUR0 = 1_800_000_000
SECRET = "sk-tokens-store-000000000001"
DAY = 86_400


def count(hour: int, client: str, key_id: int, inp: int, out: int, missing: int = 0) -> TokenCount:
    return TokenCount(hour, client, "fast", "openai", "gpt", key_id, 1, inp, out, 1, 0, missing)


async def test_counts_add_up_and_group(store: Store) -> None:
    provider = {
        "provider_type": "openai_like",
        "keys_path": "/nonexistent",
        "api_base_url": "http://127.0.0.1:9/v1",
        "default_model": "gpt",
        "models": {"gpt": {"endpoint_suffix": "/chat/completions"}},
        "access_control": {"gateway_access_token": "gw-token-0001-abcdefgh"},
    }
    await store.sync_providers(
        Settings.model_validate({"providers": {"openai": provider}}).providers
    )
    await store.sync_keys("openai", [SECRET], ["gpt"], False)
    async with store.engine.connect() as conn:
        key_id = await conn.scalar(sa.select(keys.c.id))
    assert isinstance(key_id, int)
    await record(store, [count(HOUR0, "ci", key_id, 10, 5), count(HOUR0, "-", key_id, 1, 1, 1)])
    await record(store, [count(HOUR0, "ci", key_id, 10, 5), count(HOUR0, "ci", 999, 2, 2)])
    by_client = {t.name: t for t in await totals(store, HOUR0, "client")}
    assert (by_client["ci"].requests, by_client["ci"].input, by_client["ci"].output) == (3, 22, 12)
    assert (by_client["-"].missing, by_client["-"].cached) == (1, 1)
    names = [t.name for t in await totals(store, HOUR0, "key")]
    assert f"openai {fingerprint(SECRET)} {mask(SECRET)}" in names
    assert "openai (key 999, purged)" in names
    assert SECRET not in str(names)
    assert [t.name for t in await totals(store, HOUR0, "model")] == ["openai/gpt"]
    assert [t.name for t in await totals(store, HOUR0 + USAGE_HOUR, "route")] == []
    assert await purge_before(store, HOUR0 + USAGE_HOUR) == 3
    assert await totals(store, 0, "provider") == []


async def test_period_sums_take_each_period_from_its_start_in_one_query(store: Store) -> None:
    starts = {Period.DAY: HOUR0, Period.WEEK: HOUR0 - 2 * DAY, Period.MONTH: HOUR0 - 9 * DAY}
    await record(
        store,
        [
            count(HOUR0 + USAGE_HOUR, "ci", 1, 10, 5),  # today
            count(HOUR0 - USAGE_HOUR, "ci", 1, 100, 0),  # this week, not today
            count(HOUR0 - 5 * DAY, "ci", 1, 1000, 0),  # this month, not this week
            count(HOUR0 - 30 * DAY, "ci", 1, 10_000, 0),  # last month
            count(HOUR0, "other", 1, 7, 0),
            count(HOUR0, "-", 1, 7, 0),
        ],
    )
    found = await period_sums(store, starts, ["ci", "other", "nobody"])
    assert found == {
        "ci": {Period.DAY: 15, Period.WEEK: 115, Period.MONTH: 1115},
        "other": {Period.DAY: 7, Period.WEEK: 7, Period.MONTH: 7},
    }
    before = await period_sums(store, starts, ["ci"], HOUR0)  # the hours before HOUR0 only
    assert before == {"ci": {Period.DAY: 0, Period.WEEK: 100, Period.MONTH: 1100}}
    assert await period_sums(store, starts, []) == {}


async def test_the_purge_keeps_the_token_counts_of_the_current_quota_periods(
    store: Store, clock: ManualClock
) -> None:
    """A month's quota is summed from the hourly counts: the daily purge keeps them from the
    start of the current week or month (whichever is earlier) however short the retention."""
    settings = Settings.model_validate(
        {"worker": {"usage_retention_days": 1}, "usage": {"timezone": "Europe/Berlin"}}
    )
    now = clock()
    first = min(period_starts(now, settings.usage.zone()).values())
    assert now - first > 2 * DAY  # 2027-01-15: the month began 14 days ago
    kept, gone = first, first - USAGE_HOUR
    await record(store, [count(kept, "ci", 1, 1, 1), count(gone, "ci", 1, 1, 1)])
    assert (await upkeep.maintain(settings, store, "keeper-a", clock)).purged
    async with store.engine.connect() as conn:
        hours = set((await conn.scalars(sa.select(token_usage.c.hour))).all())
    assert hours == {kept}
