"""The `redis` limits backend on the real Redis (127.0.0.1:6379, `$LLMGATEWAY_TEST_REDIS_URL`):
limits shared by several gateways, leases that outlive a killed gateway only by their TTL,
and failing open when Redis cannot be reached.

Each test uses its own key prefix and deletes its keys afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from tests.helpers import REDIS_URL, ManualClock, eventually, free_port

from llmgateway.config.settings import KeyLimits, LimitsSettings
from llmgateway.core.pool_keys import Lease
from llmgateway.limits import KeyLimiter, Refusal
from llmgateway.limits.outage import Outage
from llmgateway.limits.redis_backend import RedisBackend
from llmgateway.observe.metrics import Metrics

SLOT = ("openai", 7, "gpt-4o-mini")
T0 = 1_800_000_000.0
WAIT_LIMIT_SEC = 10.0  # the longest any bounded wait below may take


@pytest.fixture
async def backends(redis_prefix: str) -> AsyncIterator[Callable[..., RedisBackend]]:
    """`backends(**limits_settings)`: one more gateway's view of Redis; all closed at the end."""
    made: list[RedisBackend] = []

    def make(**settings: Any) -> RedisBackend:
        # the default 0.25 s per call is about serving; a first connect on a busy CI machine
        # may take longer, which these tests (about counting, not latency) must not mind
        settings.setdefault("timeout_sec", 5.0)
        conf = LimitsSettings(redis_url=REDIS_URL, key_prefix=redis_prefix, **settings)
        backend = RedisBackend(conf, Outage(conf.retry_unreachable_sec, time.time))
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()


async def test_max_concurrent_holds_across_gateways_and_release_frees_a_slot(
    backends: Callable[..., RedisBackend],
) -> None:
    one, two = backends(), backends()
    limits = KeyLimits(max_concurrent=2)
    assert await one.take(SLOT, 1, limits, T0) is None
    assert await two.take(SLOT, 1, limits, T0) is None  # the same lease id in another process
    assert await one.take(SLOT, 2, limits, T0) == Refusal("busy", 1.0)
    assert await two.take(SLOT, 2, limits, T0) == Refusal("busy", 1.0)
    assert await one.take(("openai", 8, "gpt-4o-mini"), 3, limits, T0) is None  # another key
    one.give_back("openai", 1)
    one.give_back("openai", 2)  # refused, never held: nothing sent
    await one.settle()
    assert await two.take(SLOT, 4, limits, T0) is None
    assert await one.take(SLOT, 5, limits, T0) == Refusal("busy", 1.0)
    inflight, _ = one.keys(SLOT)
    assert await one.client.zcard(inflight) == 2


async def test_rpm_holds_across_gateways_with_the_wait_until_a_slot_frees(
    backends: Callable[..., RedisBackend],
) -> None:
    one, two = backends(), backends()
    limits = KeyLimits(rpm=3)
    granted = [await b.take(SLOT, i, limits, T0) for i, b in enumerate((one, two, one))]
    assert granted == [None, None, None]
    for backend in (one, two):
        refused = await backend.take(SLOT, 9, limits, T0)
        assert refused is not None
        assert refused.reason == "rate"
        assert 50 < refused.retry_after <= 60  # the oldest start leaves the window then
    _, recent = one.keys(SLOT)
    assert await one.client.zcard(recent) == 3
    assert 0 < await one.client.pttl(recent) <= 60_000  # nothing outlives its window


async def test_a_killed_gateways_leases_expire_while_a_live_one_renews_them(
    backends: Callable[..., RedisBackend],
) -> None:
    ttl = 0.3
    alive, killed, other = backends(lease_ttl_sec=ttl), backends(lease_ttl_sec=ttl), backends()
    limits = KeyLimits(max_concurrent=1)
    assert await alive.take(SLOT, 1, limits, T0) is None
    renewing = asyncio.create_task(alive.run())
    started = time.monotonic()
    while time.monotonic() - started < 4 * ttl:  # well past the TTL: still held
        assert await other.take(SLOT, 2, limits, T0) == Refusal("busy", 1.0)
        await asyncio.sleep(ttl / 6)  # paces the tries; the window is the point
    renewing.cancel()
    alive.give_back("openai", 1)
    await alive.settle()
    # a gateway that dies holding a slot (no release, no renewal) frees it after the TTL
    assert await killed.take(SLOT, 1, limits, T0) is None

    async def freed() -> bool:
        return await other.take(SLOT, 3, limits, T0) is None

    took = await eventually(freed, WAIT_LIMIT_SEC, step=ttl / 6, what="the dead lease expiring")
    assert took >= ttl * 0.9  # not before its TTL ran out


async def test_unreachable_redis_fails_open_counted_and_warned_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    password = "sekret-redis-password-0001"
    url = f"redis://gw:{password}@127.0.0.1:{free_port()}/0"
    conf = LimitsSettings(redis_url=url, retry_unreachable_sec=5)
    clock = ManualClock(T0)
    backend = RedisBackend(conf, Outage(conf.retry_unreachable_sec, clock))
    metrics = Metrics.create()
    count = metrics.for_provider("openai").limiter_unavailable
    limiter = KeyLimiter("openai", KeyLimits(max_concurrent=1, rpm=1), backend, clock, count)
    caplog.set_level(logging.WARNING, logger="llmgateway.limits")
    leases = [Lease(i, 7, "sk-secret-limits-000000001", "direct", "m") for i in range(1, 6)]
    for lease in leases:  # over both limits, yet every request proceeds
        assert await limiter.acquire(lease) is None
    assert backend.outage.failures == 1  # Redis was asked once, then left alone
    clock.advance(5)
    assert await limiter.acquire(leases[0]) is None
    assert backend.outage.failures == 2
    clock.advance(60)
    assert await limiter.acquire(leases[1]) is None
    warnings = [r.getMessage() for r in caplog.records if r.name == "llmgateway.limits"]
    assert len(warnings) == 2  # one per minute at most
    assert "redis backend is unreachable" in warnings[0]
    assert "fail open" in warnings[0]
    assert all(password not in w for w in warnings)
    text = metrics.exposition().decode()
    assert 'llmgateway_limiter_unavailable_total{provider="openai"} 7.0' in text
    for lease in leases:
        limiter.release(lease)  # nothing was held: nothing to send
    await backend.close()


async def test_tpm_holds_across_gateways_and_a_settled_spend_frees_the_difference(
    backends: Callable[..., RedisBackend],
) -> None:
    one, two = backends(), backends()
    limits = KeyLimits(tpm=1000)
    assert await one.take(SLOT, 1, limits, T0, 600) is None
    assert await two.take(SLOT, 1, limits, T0, 300) is None  # the same token elsewhere
    refused = await one.take(SLOT, 2, limits, T0, 200)
    assert refused is not None
    assert refused.reason == "tokens"
    assert 50 < refused.retry_after <= 60  # the first spend leaves the window then
    one.spent(SLOT, 1, 50)  # the answer used 50 of its 600
    two.spent(SLOT, 1, None)  # no usage read: its 300 stand
    await one.settle()
    _, _, total = one.token_keys(SLOT)
    assert int(await one.client.get(total) or 0) == 350
    assert await two.take(SLOT, 2, limits, T0, 650) is None  # exactly full
    assert (await one.take(SLOT, 3, limits, T0, 1)) is not None
    one.spent(SLOT, 2, 0)  # refused, never reserved: nothing sent
