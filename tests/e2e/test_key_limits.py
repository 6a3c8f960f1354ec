"""Per-key limits across gateway instances, end to end: two gateway apps on one store, each
served over real HTTP, in front of the fake upstream, counting in the real Redis (or in the
real PostgreSQL, directly or through PgBouncer in transaction mode), prove that
`max_concurrent` and `rpm` hold across both, and that an unreachable Redis fails open, counted
in /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from llmgateway.conductor.app import create_app
from llmgateway.conductor.serving import running
from llmgateway.config.settings import DatabaseSettings, LimitsSettings, Settings
from llmgateway.limits.fleet import PostgresBackend
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.faults import Behavior
from tests.helpers import (
    METRICS_AUTH,
    OPENAI_TOKEN,
    REDIS_URL,
    eventually,
    free_port,
    gateway_settings,
)
from tests.pgbouncer import Route, routes

KEYS = ["sk-limited-openai-00000000001", "sk-limited-openai-00000000002"]
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"Authorization": f"Bearer {OPENAI_TOKEN}"}
RETRY = {
    "enabled": True,
    "on_key_error": {"attempts": 5, "backoff_sec": 0.0},
    "on_server_error": {"attempts": 3, "backoff_sec": 0.0},
}


def limited(
    tmp_path: Path, fake: FakeUpstream, key_limits: dict[str, int], **limits: Any
) -> Settings:
    """Limits counted in the backend `limits` name, with a Redis call allowed 2 s: these tests
    are about the limits held, not about failing open (a loaded CI machine has taken more than
    the default 0.25 s to open the first connection)."""
    limits.setdefault("timeout_sec", 2.0)
    policy = {"retry": RETRY, "key_limits": key_limits}
    settings = gateway_settings(tmp_path, fake, gateway_policy=policy)
    return settings.model_copy(update={"limits": LimitsSettings(**limits)})


@contextlib.asynccontextmanager
async def two_gateways(settings: Settings) -> AsyncIterator[tuple[list[str], list[Any]]]:
    """Two gateway apps on the same store and limits backend, each on its own port."""
    write_keys(settings.providers["openai"].keys_path, KEYS)
    write_keys(settings.providers["gemini"].keys_path, ["AIza-good-gemini-00000000001"])
    apps = [create_app(settings, rng=random.Random(seed)) for seed in (1, 2)]
    async with running(apps[0]) as first, running(apps[1]) as second:
        yield [first, second], apps


async def chat(session: aiohttp.ClientSession, url: str) -> tuple[int, str | None]:
    async with session.post(f"{url}/v1/chat/completions", json=CHAT, headers=AUTH) as response:
        body = await response.json()
        if response.status == 429:
            assert body["error"]["code"] == "rate_limit_exceeded"
        return response.status, response.headers.get("retry-after")


async def test_max_concurrent_holds_across_two_gateways_on_redis(
    tmp_path: Path, fake: FakeUpstream, redis_prefix: str
) -> None:
    for key in KEYS:
        fake.set_behavior(key, Behavior(delay=1.0))
    settings = limited(
        tmp_path, fake, {"max_concurrent": 1}, redis_url=REDIS_URL, key_prefix=redis_prefix
    )
    async with two_gateways(settings) as (urls, _), aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(chat(session, urls[i % 2]) for i in range(8)))
    # each gateway alone would allow one per key: two per key at once; the fleet allows one
    assert [fake.peak_open(key) for key in KEYS] == [1, 1]
    statuses = [status for status, _ in answers]
    assert statuses.count(200) >= 2
    assert statuses.count(429) >= 1
    assert set(statuses) == {200, 429}
    assert {after for status, after in answers if status == 429} == {"1"}


async def test_rpm_holds_across_two_gateways_on_redis(
    tmp_path: Path, fake: FakeUpstream, redis_prefix: str
) -> None:
    settings = limited(tmp_path, fake, {"rpm": 3}, redis_url=REDIS_URL, key_prefix=redis_prefix)
    async with two_gateways(settings) as (urls, _), aiohttp.ClientSession() as session:
        answers = [await chat(session, urls[i % 2]) for i in range(10)]
    assert [fake.calls(key) for key in KEYS] == [3, 3]  # the 4th call onward: another key
    assert [status for status, _ in answers] == [200] * 6 + [429] * 4
    for _, after in answers[6:]:
        assert after is not None
        assert 50 <= int(after) <= 60  # when the oldest call leaves the minute


async def test_an_unreachable_redis_fails_open_and_is_counted(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    settings = limited(tmp_path, fake, {"rpm": 1, "max_concurrent": 1}, redis_url=url)
    async with two_gateways(settings) as (urls, _), aiohttp.ClientSession() as session:
        answers = [await chat(session, urls[0]) for _ in range(5)]
        async with session.get(f"{urls[0]}/metrics", headers=METRICS_AUTH) as response:
            text = await response.text()
    assert [status for status, _ in answers] == [200] * 5  # well over rpm: served anyway
    assert sum(fake.calls(key) for key in KEYS) == 5
    assert 'llmgateway_limiter_unavailable_total{provider="openai"} 5.0' in text


@pytest.mark.postgres
@pytest.mark.parametrize("db_kind", ["postgresql"], indirect=True)
@pytest.mark.parametrize("route", routes(), indirect=True)
async def test_max_concurrent_holds_across_two_gateways_on_postgres(
    tmp_path: Path, fake: FakeUpstream, db_url: str, route: Route
) -> None:
    fake.set_behavior(KEYS[0], Behavior(delay=1.0))
    fake.set_behavior(KEYS[1], Behavior(invalid=True))  # invalid: a 503 unless limits say 429
    settings = limited(tmp_path, fake, {"max_concurrent": 2})
    database = DatabaseSettings.model_validate(route.database(db_url))
    settings = settings.model_copy(update={"database": database})
    async with two_gateways(settings) as (urls, apps), aiohttp.ClientSession() as session:
        fleets: list[PostgresBackend] = [app.state.conductor.limits.backend for app in apps]
        assert all(isinstance(fleet, PostgresBackend) for fleet in fleets)
        # lease rows through the pooler alone, advisory locks where a session lasts
        assert {fleet.leases for fleet in fleets} == {route.name == "pgbouncer"}
        # both saw each other (refresh: 0.2 s)
        await eventually(lambda: {fleet.size for fleet in fleets} == {2}, within=10)
        answers = await asyncio.gather(*(chat(session, urls[i % 2]) for i in range(6)))
    assert fake.peak_open(KEYS[0]) == 2  # one per gateway: their shares of 2
    statuses = [status for status, _ in answers]
    assert statuses.count(200) == 2
    assert set(statuses) == {200, 429}
