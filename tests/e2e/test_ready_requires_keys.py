"""`gateway.ready_requires_keys`, over real HTTP against a real gateway on the fake upstream:
`/readyz` is 503 with the reason while no provider has a usable key (none in the files, or
every key found invalid), 200 while the keys only cool down after 429s (they come back by
themselves, and clients get 429 + Retry-After meanwhile), and off by default (200 without any
key, as before)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from starlette.applications import Starlette

from llmgateway.conductor.admin import KEYLESS_HOLD_SEC, admin_routes
from llmgateway.conductor.app import Conductor
from llmgateway.conductor.readiness import NO_USABLE_KEY
from llmgateway.conductor.serving import running
from llmgateway.config.settings import Settings
from llmgateway.core.outcomes import ALL_MODELS, KeyStatus
from llmgateway.core.pool_keys import KeyEntry
from llmgateway.observe.metrics import Metrics
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.faults import Behavior
from tests.helpers import (
    METRICS_AUTH,
    OPENAI_TOKEN,
    ManualClock,
    gateway_settings,
    start_gateway,
)

pytestmark = pytest.mark.e2e

INVALID = ("sk-ready-invalid-00000000001", "sk-ready-invalid-00000000002")
LIMITED = ("sk-ready-limited-00000000001",)
GOOD = "AIza-ready-good-000000000001"

Started = Callable[..., AbstractAsyncContextManager[str]]


@pytest.fixture
def started(tmp_path: Path, fake: FakeUpstream) -> Started:
    """`async with started(openai_keys, requires=…) as url:` a real gateway whose openai
    provider has those keys (none: no keys folder at all) and whose gemini provider has no
    keys folder, with `ready_requires_keys` as given (None: not in the config)."""

    @asynccontextmanager
    async def start(
        openai: tuple[str, ...] = (), requires: bool | None = True
    ) -> AsyncIterator[str]:
        if openai:
            write_keys(tmp_path / "keys" / "openai", list(openai))
        section: dict[str, Any] = {} if requires is None else {"ready_requires_keys": requires}
        settings: Settings = gateway_settings(tmp_path, fake, section)
        async with start_gateway(settings) as running:
            yield running.url

    return start


async def chat(http: httpx.AsyncClient, url: str) -> httpx.Response:
    return await http.post(
        f"{url}/v1/chat/completions",
        headers={"authorization": f"Bearer {OPENAI_TOKEN}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )


async def test_no_key_at_all_is_not_ready_and_says_why(started: Started) -> None:
    async with started() as url, httpx.AsyncClient() as http:
        public = await http.get(f"{url}/readyz")
        detailed = await http.get(f"{url}/readyz", headers=METRICS_AUTH)
        alive = await http.get(f"{url}/healthz")
    assert alive.status_code == 200, "alive, only not ready"
    assert public.status_code == 503
    assert public.json() == {"ready": False, "problem": NO_USABLE_KEY}
    assert detailed.status_code == 503
    body = detailed.json()
    assert body["problem"] == NO_USABLE_KEY
    assert body["pool_loaded"] is True
    assert body["store_reachable"] is True
    assert any(w.startswith("provider openai: no keys; put key files in") for w in body["warnings"])
    assert any(w.startswith("provider gemini: no keys; put key files in") for w in body["warnings"])


async def test_every_key_invalid_is_not_ready(started: Started, fake: FakeUpstream) -> None:
    for secret in INVALID:
        fake.set_behavior(secret, Behavior(invalid=True))
    async with started(INVALID) as url, httpx.AsyncClient() as http:
        before = await http.get(f"{url}/readyz")
        assert before.status_code == 200, "untested keys count: they may serve"
        answer = await chat(http, url)
        assert answer.status_code >= 400  # both keys tried, both refused by the provider
        after = await http.get(f"{url}/readyz", headers=METRICS_AUTH)
    assert after.status_code == 503, after.text
    body = after.json()
    assert body["problem"] == NO_USABLE_KEY
    assert body["providers"]["openai"]["models"]["gpt-4o-mini"] == {"invalid": 2}


async def test_keys_cooling_after_429s_stay_ready(started: Started, fake: FakeUpstream) -> None:
    for secret in LIMITED:
        fake.set_behavior(secret, Behavior(rate_limited=True, retry_after=120.0))
    async with started(LIMITED) as url, httpx.AsyncClient() as http:
        answer = await chat(http, url)
        ready = await http.get(f"{url}/readyz", headers=METRICS_AUTH)
    assert answer.status_code == 429, answer.text
    assert "retry-after" in answer.headers
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] is True
    assert body["problem"] is None
    assert body["providers"]["openai"]["models"]["gpt-4o-mini"] == {"cooling": 1}


@pytest.mark.parametrize("requires", [None, False])
async def test_off_by_default_no_key_is_still_ready(
    started: Started, requires: bool | None
) -> None:
    async with started(requires=requires) as url, httpx.AsyncClient() as http:
        ready = await http.get(f"{url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "problem": None}


async def test_a_finding_of_no_key_holds_one_second(tmp_path: Path, fake: FakeUpstream) -> None:
    """Finding no usable key looks at every key, so it is kept for `KEYLESS_HOLD_SEC` (a load
    balancer probing often does not redo it); a key that arrives meanwhile counts after it.
    The gateway's own routes, served over HTTP, on a clock moved by hand."""
    settings = gateway_settings(tmp_path, fake, {"ready_requires_keys": True})
    clock = ManualClock()
    conductor = Conductor(settings, clock=clock)
    conductor.build_providers()
    conductor.readiness.pool_loaded = conductor.readiness.store_ok = True
    routes = admin_routes(conductor.readiness, conductor, clock, Metrics.create())
    app = Starlette(routes=routes)
    async with running(app, handle_signals=False) as url, httpx.AsyncClient() as http:
        assert (await http.get(f"{url}/readyz")).status_code == 503
        entry = KeyEntry(1, GOOD, ALL_MODELS, KeyStatus.VALID, None)
        conductor.providers["gemini"].pool.load([entry], clock.now)
        clock.advance(KEYLESS_HOLD_SEC - 0.001)
        assert (await http.get(f"{url}/readyz")).status_code == 503, "still held"
        clock.advance(0.001)
        assert (await http.get(f"{url}/readyz")).status_code == 200
