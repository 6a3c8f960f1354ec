"""A client inventing model names cannot grow the gateway: 10,000 distinct names that one
pattern serves are all served, and leave the pool's status scopes, the metric label series and
the store's status rows as they were (all are kept per configured entry, never per name)."""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from llmgateway.conductor.app import create_app
from llmgateway.conductor.serving import running
from llmgateway.config.settings import Settings
from llmgateway.store import Store
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import METRICS_AUTH, METRICS_TOKEN, OPENAI_TOKEN

pytestmark = pytest.mark.security

NAMES = 10_000
CONCURRENCY = 20
_LABEL = re.compile(r'model="([^"]*)"')


def settings_for(tmp_path: Path, fake: FakeUpstream) -> Settings:
    provider = {
        "provider_type": "openai_like",
        "keys_path": str(tmp_path / "keys"),
        "api_base_url": fake.openai_base,
        "default_model": "gpt-4.1-mini",
        "models": {"gpt-4.1*": {"endpoint_suffix": "/chat/completions"}},
        "access_control": {"gateway_access_token": OPENAI_TOKEN},
    }
    return Settings.model_validate(
        {
            "database": {"url": f"sqlite:///{tmp_path / 'gw.db'}"},
            "metrics": {"access_token": METRICS_TOKEN},
            "providers": {"openai": provider},
        }
    )


async def chat(http: aiohttp.ClientSession, url: str, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {OPENAI_TOKEN}"}
    async with http.post(f"{url}/v1/chat/completions", json=body, headers=headers) as response:
        await response.read()
        return response.status


async def series(http: aiohttp.ClientSession, url: str) -> tuple[int, set[str]]:
    """The `llmgateway_requests_total` series of provider `openai`, and every `model` label
    value any series of that provider carries."""
    async with http.get(f"{url}/metrics", headers=METRICS_AUTH) as response:
        text = await response.text()
    lines = [line for line in text.splitlines() if 'provider="openai"' in line]
    requests = sum(line.startswith("llmgateway_requests_total{") for line in lines)
    return requests, {m for line in lines for m in _LABEL.findall(line)}


async def test_ten_thousand_invented_names_grow_nothing(tmp_path: Path, fake: FakeUpstream) -> None:
    write_keys(tmp_path / "keys", ["sk-good-openai-000000000001", "sk-good-openai-000000000002"])
    settings = settings_for(tmp_path, fake)
    app: Any = create_app(settings, rng=random.Random(7))
    async with running(app) as url, aiohttp.ClientSession() as http:
        gateway = app.state.conductor
        pool = gateway.providers["openai"].pool
        assert await chat(http, url, "gpt-4.1-mini") == 200
        scopes = dict(pool._scopes)
        before = await series(http, url)
        assert before[1] <= {"gpt-4.1*", "other"}
        names = iter(f"gpt-4.1-invented-{i:05d}" for i in range(NAMES))
        statuses: list[int] = []

        async def client() -> None:
            for name in names:
                statuses.append(await chat(http, url, name))

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
        assert statuses == [200] * NAMES
        assert pool._scopes.keys() == scopes.keys()
        assert all(pool._scopes[name] is scope for name, scope in scopes.items())
        assert await series(http, url) == before
        await gateway.writer.flush()
    async with await Store.open(settings.database.async_url) as store:
        counts = await store.status_counts()
    assert {count.model for count in counts} == {"gpt-4.1*"}
