"""The retry budget, the deadline rule, and a manual-reset breaker reset through the store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx2 as httpx

from llmgateway.core.resilience import BreakerState
from llmgateway.store import Store
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.faults import Behavior
from tests.helpers import OPENAI_TOKEN, chaos_settings, eventually, start_gateway

KEYS = [f"sk-budget-key-{i:08d}" for i in range(10)]
FAILING = Behavior(error_rate=1.0, error_status=500, delay=0.3)
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _policy(**extra: object) -> dict[str, object]:
    policy: dict[str, object] = {
        "retry": {"on_server_error": {"attempts": 4, "backoff_sec": 0.0}},  # 3 retries
        "circuit_breaker": {"enabled": False},
        "retry_budget": {"percent": 20, "min_concurrent": 3},
        "outlier_detection": {"consecutive_failures": 100},
    }
    policy.update(extra)
    return policy


async def _burst(url: str, n: int, headers: dict[str, str] | None = None) -> list[int]:
    auth = {"authorization": f"Bearer {OPENAI_TOKEN}", **(headers or {})}
    async with httpx.AsyncClient(timeout=30) as http:
        replies = await asyncio.gather(
            *[http.post(f"{url}/v1/chat/completions", json=BODY, headers=auth) for _ in range(n)]
        )
    return [reply.status_code for reply in replies]


async def test_retries_stay_within_the_budget(tmp_path: Path, fake: FakeUpstream) -> None:
    write_keys(tmp_path / "keys" / "openai", KEYS)
    for key in KEYS:
        fake.set_behavior(key, FAILING)
    settings = chaos_settings(tmp_path, fake, gateway_policy=_policy())
    async with start_gateway(settings) as gw:
        assert await _burst(gw.url, 30) == [500] * 30
        calls = sum(fake.calls(key) for key in KEYS)
        # 30 first attempts; retries in flight ≤ max(3, 20 % of 30) = 6, each request ≤ 3
        assert 30 + 6 <= calls <= 30 + 6 * 3, calls
        budget = gw.gateway.providers["openai"].budget
        assert (budget.active, budget.retries) == (0, 0)


async def test_client_sdk_retries_use_up_the_budget(tmp_path: Path, fake: FakeUpstream) -> None:
    write_keys(tmp_path / "keys" / "openai", KEYS)
    for key in KEYS:
        fake.set_behavior(key, FAILING)
    settings = chaos_settings(tmp_path, fake, gateway_policy=_policy())
    async with start_gateway(settings) as gw:
        statuses = await _burst(gw.url, 30, {"x-stainless-retry-count": "1"})
        assert statuses == [500] * 30
        calls = sum(fake.calls(key) for key in KEYS)
        # 30 client retries fill the budget; only the last few requests, once fewer than
        # min_concurrent (3) are left, may retry (≤ 3 retries each): 120 calls without it
        assert 30 <= calls <= 30 + 3 * 3, calls


async def test_a_retry_that_cannot_finish_in_time_is_not_started(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    write_keys(tmp_path / "keys" / "openai", KEYS)
    for key in KEYS:
        fake.set_behavior(key, Behavior(error_rate=1.0, error_status=500, delay=0.6))
    settings = chaos_settings(
        tmp_path, fake, gateway_policy=_policy(), timeouts={"connect": 0.5, "total": 1.0}
    )
    async with start_gateway(settings) as gw:
        assert await _burst(gw.url, 1) == [500]
        assert sum(fake.calls(key) for key in KEYS) == 1  # 0.4 s left < the 0.5 s connect


async def test_manual_reset_breaker_stays_open_until_reset_through_the_store(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    write_keys(tmp_path / "keys" / "openai", KEYS)
    breaker = {
        "enabled": True,
        "mode": "manual_reset",
        "failure_threshold": 3,
        "backoff": {"base_duration_sec": 0.5, "max_duration_sec": 1.0},
        "jitter_sec": 0,
    }
    settings = chaos_settings(tmp_path, fake, gateway_policy={"circuit_breaker": breaker})
    async with start_gateway(settings) as gw:
        guard = gw.gateway.providers["openai"].guard
        fake.set_outage(503)
        assert await _burst(gw.url, 2) == [503, 503]
        assert guard.state is BreakerState.OPEN
        fake.clear_outage()
        calls = sum(fake.calls_by_key().values())
        async with httpx.AsyncClient() as http:
            auth = {"authorization": f"Bearer {OPENAI_TOKEN}"}
            url = f"{gw.url}/v1/chat/completions"
            for _ in range(3):  # well past the backoff: manual mode stays open
                reply = await http.post(url, json=BODY, headers=auth)
                assert reply.status_code == 503
                assert reply.json()["error"]["code"] == "circuit_open"
                assert int(reply.headers["retry-after"]) >= 1
            assert sum(fake.calls_by_key().values()) == calls  # failed fast
            async with await Store.open(settings.database.async_url) as store:

                async def reported_open() -> bool:
                    rows = await store.breakers()
                    reported = [(r.provider, r.state) for r in rows if r.provider == "openai"]
                    return reported == [("openai", int(BreakerState.OPEN))]

                # gateways report at each refresh (every 0.2 s here)
                await eventually(reported_open, within=5, step=0.05)
                await store.request_breaker_reset("openai")
            await eventually(lambda: guard.state is BreakerState.CLOSED, within=2)
            reply = await http.post(url, json=BODY, headers=auth)
            assert reply.status_code == 200
