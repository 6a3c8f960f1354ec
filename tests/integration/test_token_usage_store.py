"""`store.token_usage` on SQLite and PostgreSQL: batches add up per slot, the sums come back
grouped by client, route, model, key (fingerprint and masked, never the key) or provider, and
the purge deletes the hours past retention."""

from __future__ import annotations

import sqlalchemy as sa

from llmgateway.config.settings import Settings
from llmgateway.observe.masking import fingerprint, mask
from llmgateway.records import USAGE_HOUR, TokenCount
from llmgateway.store import Store
from llmgateway.store.tables import keys
from llmgateway.store.token_usage import purge_before, record, totals

HOUR0 = 1_800_000_000
SECRET = "sk-tokens-store-000000000001"


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
