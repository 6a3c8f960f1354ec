"""The `postgres` limits backend on the real PostgreSQL, directly and through a real PgBouncer
in transaction mode: gateways count each other (advisory locks, or lease rows through the
pooler), split every limit into shares that add up to it, take over the share of one that
leaves, and fail open when the fleet cannot be counted."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from tests.helpers import ManualClock, eventually
from tests.pgbouncer import Route, routes

from llmgateway.config.settings import KeyLimits
from llmgateway.core.pool_keys import Lease
from llmgateway.limits import KeyLimiter, Refusal, Unreachable
from llmgateway.limits.fleet import PostgresBackend, namespace_of
from llmgateway.limits.outage import Outage
from llmgateway.observe.metrics import Metrics
from llmgateway.store import Store

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("route", routes(), indirect=True)]
SLOT = ("openai", 7, "gpt-4o-mini")
T0 = 1_800_000_000.0
Fleet = Callable[..., PostgresBackend]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def fleet(clock: ManualClock, route: Route, pg_database: str) -> AsyncIterator[Fleet]:
    """`fleet(stale_after=10.0)`: one more gateway in a namespace of this test's own, on a
    migrated database reached by `route`; all leave at the end."""
    async with await Store.open(pg_database) as store:
        await store.upgrade()  # the lease rows' table
    namespace = namespace_of(f"llmgw-test-{uuid.uuid4().hex}")
    made: list[PostgresBackend] = []

    def join(stale_after: float = 10.0) -> PostgresBackend:
        backend = PostgresBackend(
            route.url(pg_database),
            namespace,
            1.0,
            stale_after,
            Outage(5.0, clock),
            clock,
            route.direct_url(pg_database),
        )
        made.append(backend)
        return backend

    yield join
    for backend in made:
        await backend.close()


async def grants(backend: PostgresBackend, limits: KeyLimits, first_token: int) -> int:
    """How many requests `backend` lets start on SLOT before refusing one."""
    token = first_token
    while await backend.take(SLOT, token, limits, T0) is None:
        token += 1
    return token - first_token


async def test_the_fleet_splits_each_limit_into_shares_that_add_up_to_it(
    fleet: Fleet, route: Route
) -> None:
    gateways = [fleet() for _ in range(3)]
    for gateway in gateways:
        await gateway.start()
    for gateway in gateways:
        await gateway.refresh()
    # a session lock would not last through the pooler: lease rows there, unless direct_url
    assert {g.leases for g in gateways} == {route.name == "pgbouncer"}
    assert sorted(g.rank for g in gateways) == [0, 1, 2]
    assert {g.size for g in gateways} == {3}
    limits = KeyLimits(max_concurrent=4)
    granted = [await grants(g, limits, 1) for g in gateways]
    assert sum(granted) == 4
    assert sorted(granted) == [1, 1, 2]
    assert await gateways[0].take(SLOT, 99, limits, T0) == Refusal("busy", 1.0)
    # one leaves (a killed gateway's connection drops the same way): the rest take its share
    await gateways[2].close()
    for gateway in gateways[:2]:
        await gateway.refresh()
    assert {g.size for g in gateways[:2]} == {2}
    more = [await grants(g, limits, 100) for g in gateways[:2]]
    assert [a + b for a, b in zip(granted[:2], more, strict=True)] == [2, 2]


async def test_rpm_shares_hold_across_the_fleet(fleet: Fleet) -> None:
    one, two = fleet(), fleet()
    await one.start()
    await two.start()
    await one.refresh()
    limits = KeyLimits(rpm=3)
    assert await grants(one, limits, 1) + await grants(two, limits, 1) == 3


async def test_a_fleet_not_counted_lately_fails_open(fleet: Fleet, clock: ManualClock) -> None:
    backend = fleet()
    await backend.start()
    metrics = Metrics.create()
    count = metrics.for_provider("openai").limiter_unavailable
    limiter = KeyLimiter("openai", KeyLimits(max_concurrent=1), backend, clock, count)
    lease = Lease(1, 7, "sk-secret-limits-000000001", "direct", "gpt-4o-mini")
    assert await limiter.acquire(lease) is None
    assert await limiter.acquire(Lease(2, 7, "sk-x-0000000000001", "direct", "gpt-4o-mini"))
    clock.advance(10.5)  # past stale_after without a refresh (the database went away)
    with pytest.raises(Unreachable):
        await backend.take(SLOT, 3, KeyLimits(max_concurrent=1), clock())
    assert await limiter.acquire(Lease(3, 7, "sk-y-0000000000001", "direct", "gpt-4o-mini")) is None
    assert backend.outage.failures == 1
    await backend.refresh()  # counted again: limits again
    clock.advance(5)
    assert await limiter.acquire(Lease(4, 7, "sk-z-0000000000001", "direct", "gpt-4o-mini"))
    assert 'limiter_unavailable_total{provider="openai"} 1.0' in metrics.exposition().decode()


async def test_a_dead_gateway_is_counted_until_its_lease_or_lock_ends(
    fleet: Fleet, route: Route
) -> None:
    one, two = fleet(stale_after=1.0), fleet(stale_after=1.0)
    await one.start()
    await two.start()
    await one.refresh()
    assert one.size == two.size == 2
    dead = two._connection  # killed: no goodbye, its connection just drops
    assert dead is not None
    dead.terminate()
    two._connection = None
    two.leases = None
    died = time.monotonic()

    async def alone() -> bool:
        await one.refresh()
        return one.size == 1

    await eventually(alone, within=5, step=0.1, what="the survivor to count itself alone")
    if route.name == "pgbouncer":  # a lease row ends on the database's clock, not at once
        assert time.monotonic() - died >= 0.9
    assert await grants(one, KeyLimits(max_concurrent=3), 1) == 3
