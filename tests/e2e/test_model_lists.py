"""Models lists of providers with a pattern entry: the configured names plus the upstream's
names a pattern serves, as the Keeper last fetched them, seen through the official SDKs."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import openai
import sqlalchemy as sa
from google import genai
from google.genai import types

from llmgateway.conductor.app import create_app
from llmgateway.conductor.serving import running
from llmgateway.config.settings import Settings
from llmgateway.keeper.run import run_once
from llmgateway.store import Store
from llmgateway.store.tables import provider_models
from llmgateway.testing.configs import two_providers, write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import GEMINI_TOKEN, OPENAI_TOKEN, eventually

UPSTREAM = [
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.1-mini",
    "o3-mini",
    "gemini-2.5-pro",
    "gemini-1.5-flash",
    "gemini-2.5-flash",
    "gpt-4.1 bad",
]


def settings_for(tmp_path: Path, fake: FakeUpstream) -> Settings:
    document = two_providers(
        tmp_path,
        fake,
        openai_token=OPENAI_TOKEN,
        gemini_token=GEMINI_TOKEN,
        openai_models=("gpt-4o-mini", "gpt-4.1*"),
        gemini_models=("gemini-2.5-*",),
        openai={"default_model": "gpt-4.1-mini"},
        gemini={"default_model": "gemini-2.5-flash"},
        gateway={"refresh_interval_sec": 0.1},
    )
    return Settings.model_validate(document)


async def listed(url: str) -> tuple[list[str], list[str | None]]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=OPENAI_TOKEN, max_retries=0)
    names = [model.id for model in (await client.models.list()).data]
    options = types.HttpOptions(base_url=url, retry_options=types.HttpRetryOptions(attempts=1))
    gemini = genai.Client(api_key=GEMINI_TOKEN, http_options=options)
    return names, [model.name async for model in await gemini.aio.models.list()]


async def test_models_lists_show_the_upstream_names_a_pattern_serves(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    openai_key, gemini_key = "sk-good-openai-000000000001", "AIza-good-gemini-00000000001"
    write_keys(tmp_path / "keys" / "openai", [openai_key])
    write_keys(tmp_path / "keys" / "gemini", [gemini_key])
    fake.set_models(UPSTREAM)
    settings = settings_for(tmp_path, fake)
    app: Any = create_app(settings, rng=random.Random(7))
    async with running(app) as url:
        assert await listed(url) == (["gpt-4o-mini"], [])  # nothing fetched yet
        assert fake.calls(openai_key) == fake.calls(gemini_key) == 0  # answered locally
        async with await Store.open(settings.database.async_url) as store:
            await run_once(settings, store)  # a Keeper round
        expected = (
            ["gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini"],
            ["models/gemini-2.5-pro", "models/gemini-2.5-flash"],
        )

        async def listed_as_expected() -> bool:
            return await listed(url) == expected

        await eventually(listed_as_expected)  # until the gateway's next refresh takes them
        gateway = app.state.conductor
        provider = gateway.providers["openai"]
        assert provider.listed == expected[0]

        async with await Store.open(settings.database.async_url) as store:
            async with store.engine.begin() as conn:  # behind the revision's back: not seen
                await conn.execute(sa.update(provider_models).values(names='["gpt-4.1-sneaky"]'))
            seen = gateway.readiness.last_refresh
            await eventually(lambda: gateway.readiness.last_refresh != seen)
            assert "gpt-4.1-sneaky" not in provider.listed
            await store.save_model_names("openai", ["gpt-4.1-next"])  # a new revision: seen
        await eventually(lambda: provider.listed == ["gpt-4o-mini", "gpt-4.1-next"])
        assert (await listed(url))[0] == ["gpt-4o-mini", "gpt-4.1-next"]
