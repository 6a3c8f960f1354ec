"""The Keeper against the fake upstream over real HTTP, on SQLite and PostgreSQL, with the store
clock moved by hand: scheduling, verification, quarantine, amnesty, shared-key probing, the
auth probe, egress faults, static and stealth proxies, leases, two keepers, maintenance."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url
from tests.helpers import ManualClock, eventually, free_port, run_cli
from tests.pgbouncer import Route, routes

from llmgateway.config.settings import Settings
from llmgateway.core.egress import egress_for
from llmgateway.core.outcomes import ALL_MODELS, ErrorReason, KeyStatus
from llmgateway.keeper.probes import DAY, HOUR, MINUTE
from llmgateway.keeper.run import Keeper
from llmgateway.keeper.summary import MaintenanceSummary, RoundSummary
from llmgateway.keyfiles import run_sync
from llmgateway.records import Actor
from llmgateway.store import StatusEvent, Store, audit, proxy_checks
from llmgateway.store import probes as queries
from llmgateway.store.locks import KeeperRunningError, single_keeper
from llmgateway.store.tables import key_status, keys, proxy_status
from llmgateway.testing import Behavior, FakeUpstream
from llmgateway.testing.configs import write_keys
from llmgateway.testing.connect_proxy import ConnectProxy
from llmgateway.transport.upstream import HttpUpstream, Upstream

GOOD = [f"sk-good-{i:04d}-abcdefghijkl" for i in range(3)]
INVALID = "sk-invalid-0001-abcdefghijkl"
NOQUOTA = "sk-noquota-0001-abcdefghijkl"
LIMITED = "sk-ratelimited-0001-abcdefgh"
MODELS = ("gpt-4o-mini", "gpt-4o", "o3-mini")


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """The keepers' client sessions, closed after the test."""
    sessions = HttpUpstream()
    yield sessions
    await sessions.close()


def config(
    tmp_path: Path,
    fake: FakeUpstream,
    *,
    shared: bool = True,
    models: tuple[str, ...] = MODELS[:1],
    policy: dict[str, Any] | None = None,
    proxy: dict[str, Any] | None = None,
    worker: dict[str, Any] | None = None,
) -> Settings:
    provider = {
        "provider_type": "openai_like",
        "keys_path": str(tmp_path / "keys"),
        "api_base_url": fake.openai_base,
        "default_model": models[0],
        "shared_key_status": shared,
        "models": {m: {"endpoint_suffix": "/chat/completions"} for m in models},
        "timeouts": {"connect": 2, "read": 5, "pool": 2},
        "worker_health_policy": {"batch_delay_sec": 0, **(policy or {})},
        "proxy_config": proxy or {},
    }
    return Settings.model_validate({"worker": worker or {}, "providers": {"p1": provider}})


async def keeper_for(
    settings: Settings, store: Store, clock: ManualClock, upstream: Upstream, **extra: Any
) -> Keeper:
    await run_sync(settings, store)
    return Keeper(settings, store, upstream, clock=clock, **extra)


async def rows(store: Store) -> dict[tuple[str, str], dict[str, Any]]:
    """Every status row by (secret, model)."""
    query = sa.select(keys.c.value, key_status).select_from(
        key_status.join(keys, keys.c.id == key_status.c.key_id)
    )
    async with store.engine.connect() as conn:
        found = (await conn.execute(query)).mappings().all()
    return {(r["value"], r["model"]): dict(r) for r in found}


async def row(store: Store, secret: str, model: str = ALL_MODELS) -> dict[str, Any]:
    return (await rows(store))[(secret, model)]


# --- probing and scheduling ------------------------------------------------------------------


async def test_a_round_marks_keys_by_their_answers(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys", [*GOOD, INVALID, NOQUOTA, LIMITED])
    fake.set_behavior(LIMITED, Behavior(rate_limited=True, retry_after=5.0))
    keeper = await keeper_for(config(tmp_path, fake), store, clock, upstream)
    before = await store.revision()
    now = clock.now

    summary = await keeper.probe_round()

    assert (summary.due, summary.healthy, summary.failed, summary.verifying) == (6, 3, 2, 1)
    good = await row(store, GOOD[0])
    assert good["status"] == KeyStatus.VALID
    assert good["next_check_at"] == now + 1 * HOUR
    assert good["lease_owner"] is None
    assert good["failing_since"] is None
    invalid = await row(store, INVALID)
    assert invalid["status"] == KeyStatus.INVALID_KEY
    assert invalid["next_check_at"] == now + 10 * DAY
    assert INVALID not in (invalid["error_message"] or "")
    # the cheap auth probe (models list) proved it invalid: no generation probe spent
    assert fake.calls(INVALID) == 1
    last = fake.last_request(INVALID)
    assert last is not None
    assert last.path == "/v1/models"
    noquota = await row(store, NOQUOTA)
    assert noquota["status"] == KeyStatus.NO_QUOTA
    assert noquota["next_check_at"] == now + 4 * HOUR
    limited = await row(store, LIMITED)  # retryable: verified before it is marked
    assert limited["status"] == KeyStatus.UNTESTED
    assert limited["probe_attempts"] == 1
    assert limited["next_check_at"] == now + 65
    assert fake.calls(GOOD[0]) == 2  # auth probe, then one generation probe confirms

    delta = await store.snapshot(before)
    assert {r.secret: r.status for r in delta.keys if r.secret in GOOD} == dict.fromkeys(
        GOOD, KeyStatus.VALID
    )
    assert (await keeper.probe_round()).due == 0  # nothing due again at the same time

    clock.advance(1 * HOUR)
    await keeper.probe_round()
    assert fake.calls(GOOD[0]) == 3  # a valid key gets only the generation probe


@pytest.mark.parametrize(("shared", "first", "later"), [(True, 2, 1), (False, 4, 3)])
async def test_shared_key_status_probes_a_key_once_per_round(
    upstream: Upstream,
    store: Store,
    fake: FakeUpstream,
    clock: ManualClock,
    tmp_path: Path,
    shared: bool,
    first: int,
    later: int,
) -> None:
    write_keys(tmp_path / "keys", GOOD)
    keeper = await keeper_for(
        config(tmp_path, fake, shared=shared, models=MODELS), store, clock, upstream
    )
    await keeper.probe_round()
    assert {fake.calls(k) for k in GOOD} == {first}  # one auth probe per key either way
    clock.advance(1 * HOUR)
    await keeper.probe_round()
    assert {fake.calls(k) for k in GOOD} == {first + later}
    assert {r["status"] for r in (await rows(store)).values()} == {KeyStatus.VALID}


async def test_verification_loop_then_mark_then_recovery(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    key = GOOD[0]
    write_keys(tmp_path / "keys", [key])
    keeper = await keeper_for(config(tmp_path, fake), store, clock, upstream)
    await keeper.probe_round()
    fake.set_behavior(key, Behavior(error_rate=1.0, error_status=500))
    clock.advance(1 * HOUR)
    for attempt in (1, 2, 3):
        summary = await keeper.probe_round()
        assert summary.verifying == 1
        state = await row(store, key)
        assert state["status"] == KeyStatus.VALID
        assert state["probe_attempts"] == attempt
        assert state["next_check_at"] == clock.now + 65
        clock.advance(65)
    assert (await keeper.probe_round()).failed == 1
    state = await row(store, key)
    assert state["status"] == KeyStatus.SERVER_ERROR
    assert state["probe_attempts"] == 0
    assert state["failing_since"] == clock.now
    assert state["next_check_at"] == clock.now + 30 * MINUTE
    assert state["status_code"] == 500

    fake.set_behavior(key, None)
    clock.advance(30 * MINUTE)
    assert (await keeper.probe_round()).healthy == 1
    assert (await row(store, key))["failing_since"] is None


async def test_retry_after_is_honoured_and_cools_the_key(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    key = GOOD[0]
    write_keys(tmp_path / "keys", [key])
    settings = config(tmp_path, fake, policy={"verification_attempts": 0})
    keeper = await keeper_for(settings, store, clock, upstream)
    await keeper.probe_round()
    fake.set_behavior(key, Behavior(rate_limited=True, retry_after=5 * HOUR))
    clock.advance(1 * HOUR)
    await keeper.probe_round()
    state = await row(store, key)
    assert state["status"] == KeyStatus.RATE_LIMITED
    assert state["next_check_at"] == clock.now + 5 * HOUR  # later than on_rate_limit_hr=4
    assert state["cooldown_until"] == clock.now + 5 * HOUR


async def test_quarantine_stop_checking_and_amnesty(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys", [INVALID])
    policy = {
        "on_invalid_key_days": 1,
        "quarantine_after_days": 3,
        "quarantine_recheck_interval_days": 5,
        "stop_checking_after_days": 8,
        "amnesty_threshold_days": 2,
    }
    keeper = await keeper_for(config(tmp_path, fake, policy=policy), store, clock, upstream)
    start = clock.now
    expected = [(0, 1), (1, 1), (2, 1), (3, 5), (8, 365)]  # (day of the check, days to the next)
    for day, wait in expected:
        clock.now = start + day * DAY
        await keeper.probe_round()
        state = await row(store, INVALID)
        assert state["failing_since"] == start
        assert state["next_check_at"] == clock.now + wait * DAY, day

    # The Keeper was down: the check due at day 9 runs at day 12 (late by > 2 days).
    async with store.engine.begin() as conn:
        await conn.execute(sa.update(key_status).values(next_check_at=start + 9 * DAY))
    clock.now = start + 12 * DAY
    await keeper.probe_round()
    state = await row(store, INVALID)
    assert state["failing_since"] == clock.now  # amnesty: the streak starts over
    assert state["next_check_at"] == clock.now + 1 * DAY


async def test_a_key_the_gateway_marked_is_reprobed_soon(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    key = GOOD[0]
    write_keys(tmp_path / "keys", [key])
    keeper = await keeper_for(config(tmp_path, fake), store, clock, upstream)
    await keeper.probe_round()
    (key_row,) = (await store.snapshot()).keys
    clock.advance(5)
    event = StatusEvent(
        key_id=key_row.key_id,
        model=ALL_MODELS,
        status=KeyStatus.RATE_LIMITED,
        observed_at=clock.now,
        reason=ErrorReason.RATE_LIMITED,
        cooldown_until=clock.now + 60,
        next_check_at=clock.now + 60,
    )
    await store.apply_events([event])
    clock.advance(59)
    assert (await keeper.probe_round()).due == 0
    revision = await store.revision()
    clock.advance(1)
    assert (await keeper.probe_round()).healthy == 1
    (seen,) = (await store.snapshot(revision)).keys  # a gateway's next delta sees it
    assert seen.status is KeyStatus.VALID
    assert seen.cooldown_until is None


async def test_batches_are_spaced_by_batch_delay(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    secrets = [f"sk-good-batch-{i:02d}-abcdef" for i in range(7)]
    write_keys(tmp_path / "keys", secrets)
    fast = {"start_rate": 1000, "max_rate": 1000}  # no first-check slot waits for 7 keys
    policy = {"batch_size": 3, "batch_delay_sec": 15, "first_check": fast}
    settings = config(tmp_path, fake, policy=policy)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    keeper = await keeper_for(settings, store, clock, upstream, sleep=sleep)
    first = await keeper.probe_round()
    # untested keys are not paced by batch_delay_sec: their results go in one write
    assert (first.healthy, first.writes, slept) == (7, 1, [])

    clock.advance(1 * HOUR)
    summary = await keeper.probe_round()  # tested keys keep the original's pace
    assert slept == [15, 15]
    assert summary.writes == 3
    assert summary.healthy == 7


# --- egress: proxies -------------------------------------------------------------------------


async def test_an_egress_failure_never_marks_the_key(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys", GOOD)
    proxy = {"mode": "static", "static_url": f"http://127.0.0.1:{free_port()}"}
    keeper = await keeper_for(config(tmp_path, fake, proxy=proxy), store, clock, upstream)
    await keeper.probe_round()
    clock.advance(1 * HOUR)
    summary = await keeper.probe_round()
    assert summary.egress == 3
    assert summary.failed == 0
    assert sum(fake.calls_by_key().values()) == 0
    for state in (await rows(store)).values():
        assert state["status"] == KeyStatus.UNTESTED
        assert state["next_check_at"] == clock.now + 60
        assert state["failing_since"] is None
        assert state["lease_owner"] is None


async def test_static_proxy_carries_all_probe_traffic(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys", GOOD)
    async with ConnectProxy() as proxy:
        settings = config(tmp_path, fake, proxy={"mode": "static", "static_url": proxy.url})
        keeper = await keeper_for(settings, store, clock, upstream)
        summary = await keeper.probe_round()
        assert summary.healthy == 3
        assert proxy.requests == summary.requests == 6


async def test_stealth_binds_keys_to_proxies_and_a_dead_proxy_moves_only_its_keys(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    secrets = [f"sk-good-stealth-{i:03d}-abcdef" for i in range(30)]
    write_keys(tmp_path / "keys", secrets)
    proxies = [ConnectProxy() for _ in range(3)]
    for proxy in proxies:
        await proxy.start()
    try:
        pool = tmp_path / "proxies"
        pool.mkdir()
        (pool / "list.txt").write_text("\n".join(p.url for p in proxies) + "\n")
        mode = {"mode": "stealth", "pool_list_path": str(pool)}
        settings = config(tmp_path, fake, proxy=mode)
        provider = settings.providers["p1"]
        keeper = await keeper_for(settings, store, clock, upstream)
        urls = [p.url for p in proxies]
        bound = {s: egress_for(provider, s, urls) for s in secrets}

        await keeper.probe_proxies()
        assert (await keeper.probe_round()).healthy == 30
        for proxy in proxies:  # auth + generation probe per key, each through its own proxy
            keys_here = sum(1 for s in secrets if bound[s] == proxy.url)
            assert proxy.requests == 1 + 2 * keys_here  # its own health probe, then its keys

        dying = proxies[1]
        await dying.stop()
        clock.advance(1 * HOUR)
        summary = await keeper.probe_round()  # nobody noticed yet: its keys fail on egress
        orphans = [s for s in secrets if bound[s] == dying.url]
        assert summary.egress == len(orphans) > 0
        assert summary.failed == 0
        assert {(await row(store, s))["status"] for s in orphans} == {KeyStatus.VALID}

        clock.advance(60)
        found = await keeper.probe_proxies()
        assert (found.alive, found.dead) == (2, 1)
        healthy = (await proxy_checks.healthy_proxies(store))["p1"]
        assert dying.url not in healthy
        (dead_row,) = [r for r in await proxy_rows(store) if r["status"] != KeyStatus.VALID]
        assert dead_row["status"] == proxy_checks.DEAD_PROXY
        now_bound = {s: egress_for(provider, s, healthy) for s in secrets}
        assert {s for s in secrets if now_bound[s] != bound[s]} == set(orphans)

        clock.advance(60)
        before = [p.requests for p in proxies]
        summary = await keeper.probe_round()  # the orphans, through their new proxies
        assert summary.healthy == len(orphans)
        after = [p.requests for p in proxies]
        for proxy, was, now in zip(proxies, before, after, strict=True):
            moved_here = sum(1 for s in orphans if now_bound[s] == proxy.url)
            assert now - was == (0 if proxy is dying else moved_here)

        await dying.start()  # the proxy comes back and is found alive again
        clock.advance(settings.worker.proxy_retry_sec)
        assert (await keeper.probe_proxies()).alive == 1
        assert dying.url in (await proxy_checks.healthy_proxies(store))["p1"]
    finally:
        for proxy in proxies:
            await proxy.stop()


async def proxy_rows(store: Store) -> list[dict[str, Any]]:
    async with store.engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(sa.select(proxy_status))).mappings()]


# --- leases, stopping, several keepers -------------------------------------------------------


async def test_cancelling_a_round_releases_its_leases(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    hanging = "sk-hang-0001-abcdefghijkl"
    write_keys(tmp_path / "keys", [hanging, GOOD[0]])
    keeper = await keeper_for(config(tmp_path, fake), store, clock, upstream)
    task = asyncio.create_task(keeper.probe_round())
    await eventually(lambda: fake.open_requests == 1)
    assert {r["lease_owner"] for r in (await rows(store)).values()} == {keeper.owner}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for state in (await rows(store)).values():
        assert state["lease_owner"] is None
        assert state["lease_until"] is None
    assert await queries.count_due(store, clock.now) == 2  # still due: nothing lost
    await keeper.upstream.close()


async def test_stop_lets_the_running_batch_finish_and_leaves_the_rest_due(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    secrets = [f"sk-good-stop-{i:02d}-abcdefgh" for i in range(6)]
    write_keys(tmp_path / "keys", secrets)
    settings = config(tmp_path, fake, policy={"batch_size": 2, "batch_delay_sec": 15})
    stop = asyncio.Event()

    async def sleep(seconds: float) -> None:
        stop.set()  # SIGTERM arrives between two batches

    keeper = await keeper_for(settings, store, clock, upstream, sleep=sleep)
    summary = await keeper.probe_round(stop)
    assert summary.healthy == 2
    assert await queries.count_due(store, clock.now) == 4
    assert {r["lease_owner"] for r in (await rows(store)).values()} == {None}


@pytest.mark.parametrize(
    "db_kind", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
@pytest.mark.parametrize("route", routes("direct", "pgbouncer"), indirect=True)
async def test_two_keepers_on_postgresql_never_probe_a_key_twice(
    upstream: Upstream,
    db_url: str,
    route: Route,
    fake: FakeUpstream,
    clock: ManualClock,
    tmp_path: Path,
) -> None:
    secrets = [f"sk-good-pair-{i:04d}-abcdefgh" for i in range(300)]
    write_keys(tmp_path / "keys", secrets)
    settings = config(tmp_path, fake, policy={"batch_size": 10})
    first = await Store.open(route.url(db_url), clock=clock)
    second = await Store.open(route.url(db_url), clock=clock)
    try:
        assert first.plan is not None
        assert first.plan.mode.keeps_sessions is not route.pooled  # transaction pooling
        await first.upgrade()
        one = await keeper_for(settings, first, clock, upstream, claim_size=25)
        two = Keeper(settings, second, HttpUpstream(), clock=clock, claim_size=25)
        a, b = await asyncio.gather(one.probe_round(), two.probe_round())
        assert a.healthy > 0
        assert b.healthy > 0
        assert a.healthy + b.healthy == 300
        assert set(fake.calls_by_key().values()) == {2}  # auth + generation, exactly once
        assert len(fake.calls_by_key()) == 300
        await one.upstream.close()
        await two.upstream.close()
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize(
    "db_kind", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
@pytest.mark.parametrize("route", routes("direct", "pgbouncer"), indirect=True)
async def test_two_keepers_never_probe_two_models_of_a_key_at_once(
    upstream: Upstream,
    db_url: str,
    route: Route,
    fake: FakeUpstream,
    clock: ManualClock,
    tmp_path: Path,
) -> None:
    secrets = [f"sk-slow-pair-{i:04d}-abcdefgh" for i in range(40)]
    for secret in secrets:  # slow answers, so that overlapping probes would show
        fake.set_behavior(secret, Behavior(delay=0.05))
    write_keys(tmp_path / "keys", secrets)
    settings = config(tmp_path, fake, shared=False, models=MODELS, policy={"batch_size": 10})
    first = await Store.open(route.url(db_url), clock=clock)
    second = await Store.open(route.url(db_url), clock=clock)
    try:
        assert first.plan is not None
        assert first.plan.mode.keeps_sessions is not route.pooled  # transaction pooling
        await first.upgrade()
        one = await keeper_for(settings, first, clock, upstream, claim_size=7)
        two = Keeper(settings, second, HttpUpstream(), clock=clock, claim_size=7)
        a, b = await asyncio.gather(one.probe_round(), two.probe_round())
        # every row probed once, and never two models of one key at the same time
        assert a.healthy + b.healthy == 40 * len(MODELS)
        assert a.healthy > 0
        assert b.healthy > 0
        assert max(fake.peak_open(secret) for secret in secrets) == 1
        await two.upstream.close()
    finally:
        await first.close()
        await second.close()


async def test_task_timeout_cuts_a_hanging_round_and_leaves_the_key_due(
    store: Store, upstream: Upstream, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    hanging = "sk-hang-forever-0001-abcdefgh"
    fake.set_behavior(hanging, Behavior(hang=True))
    write_keys(tmp_path / "keys", [hanging])
    settings = config(tmp_path, fake, policy={"task_timeout_sec": 1})
    keeper = await keeper_for(settings, store, clock, upstream)
    summary = await keeper.probe_round()  # the upstream never answers; the guard cuts at 1 s
    assert summary.timed_out == 1
    assert summary.healthy == summary.failed == 0
    row = (await rows(store))[hanging, ALL_MODELS]
    assert row["status"] == KeyStatus.UNTESTED  # not blamed: the round was cut, not the key
    assert row["lease_owner"] is None  # released: the next round takes it again
    assert row["next_check_at"] <= clock()


async def test_a_second_keeper_on_sqlite_is_refused(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite:///{tmp_path / 'gw.db'}")
    try:
        with single_keeper(store.engine.url):
            refused = pytest.raises(KeeperRunningError, match=r"another keeper \(host .*pid")
            with refused, single_keeper(store.engine.url):
                pass
        with single_keeper(store.engine.url):  # released: the next keeper may start
            pass
    finally:
        await store.close()


async def test_run_syncs_on_file_change_probes_and_stops_cleanly(
    store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys", GOOD[:1])
    settings = config(tmp_path, fake, worker={"probe_interval_sec": 0.05})
    keeper = Keeper(settings, store, HttpUpstream(), clock=clock)
    stop = asyncio.Event()
    rounds: list[RoundSummary] = []
    task = asyncio.create_task(keeper.run(stop, on_round=rounds.append))
    await eventually(lambda: any(r.healthy for r in rounds))
    (tmp_path / "keys" / "more.txt").write_text(GOOD[1] + "\n")  # picked up by the watcher
    await eventually(lambda: fake.calls(GOOD[1]) == 2)
    stop.set()
    await asyncio.wait_for(task, 10)
    states = await rows(store)
    assert {s for s, _ in states} == set(GOOD[:2])
    assert {r["lease_owner"] for r in states.values()} == {None}


# --- maintenance -----------------------------------------------------------------------------


async def test_maintenance_purges_long_removed_keys_and_vacuums_on_schedule(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    await check_maintenance(upstream, store, fake, clock, tmp_path)


@pytest.mark.postgres
@pytest.mark.parametrize("route", routes("pgbouncer"), indirect=True)
async def test_maintenance_through_a_transaction_pooler(
    upstream: Upstream,
    route: Route,
    pg_database: str,
    fake: FakeUpstream,
    clock: ManualClock,
    tmp_path: Path,
) -> None:
    async with await Store.open(route.url(pg_database), clock=clock) as store:
        await store.upgrade()
        await check_maintenance(upstream, store, fake, clock, tmp_path)  # VACUUM: autocommit


async def check_maintenance(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    """Purges after `purge_removed_after_days` (checked daily), VACUUMs after
    `vacuum_interval_hours`; both run at once on a store where they never ran."""
    write_keys(tmp_path / "keys", GOOD)
    settings = config(tmp_path, fake)
    keeper = await keeper_for(settings, store, clock, upstream)
    write_keys(tmp_path / "keys", GOOD[:2])
    await run_sync(settings, store)  # GOOD[2] removed now
    await audit.record(store, Actor.cli(), "disable", "--provider p1", 2)
    assert await keeper.maintain() == MaintenanceSummary(purged=True, vacuumed=True)
    assert await keeper.maintain() == MaintenanceSummary()  # nothing due any more
    clock.advance(29 * DAY)
    assert await keeper.maintain() == MaintenanceSummary(purged=True, vacuumed=True)
    clock.advance(2 * DAY)
    summary = await keeper.maintain()
    assert summary == MaintenanceSummary(purged=True, purged_keys=1, vacuumed=False)
    assert {s for s, _ in await rows(store)} == set(GOOD[:2])
    clock.advance(settings.worker.vacuum_interval_hours * HOUR)
    assert (await keeper.maintain()).vacuumed
    assert {c.count for c in await store.status_counts()} == {2}
    assert len(await audit.recent(store)) == 1  # the audit log is kept 90 days
    clock.advance((settings.worker.audit_retention_days - 31) * DAY)
    assert (await keeper.maintain()).purged
    assert await audit.recent(store) == []


# --- the command line ------------------------------------------------------------------------


async def test_worker_once_probes_prints_a_summary_and_refuses_a_second_keeper(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys", [GOOD[0], INVALID])
    database = tmp_path / "data" / "gw.db"
    document = {
        "database": {"url": f"sqlite:///{database}"},
        "providers": {
            "p1": {
                "provider_type": "openai_like",
                "keys_path": str(tmp_path / "keys"),
                "api_base_url": fake.openai_base,
                "default_model": "gpt-4o-mini",
                "shared_key_status": True,
                "models": {"gpt-4o-mini": {"endpoint_suffix": "/chat/completions"}},
                "access_control": {"gateway_access_token": "gw-token-0001-abcdefgh"},
            }
        },
    }
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(document))

    code, out, err = await run_cli("worker", "--once", "--config", str(path))
    assert code == 0, err
    assert "p1: keys +2 added" in out
    assert "probe round: 2 due, 1 healthy, 1 failed, 0 verifying, 0 egress faults" in out
    assert "invalid_key" in out  # the status table
    assert INVALID not in out + err
    assert GOOD[0] not in out + err

    with single_keeper(make_url(f"sqlite+aiosqlite:///{database}")):
        code, out, err = await run_cli("worker", "--once", "--config", str(path))
    assert code == 1
    assert "another keeper" in err
    assert "Traceback" not in err


async def test_gemini_keys_are_probed_natively_with_the_key_in_a_header(
    upstream: Upstream, store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    good, invalid = "AIza-good-0001-abcdefghijkl", "AIza-invalid-0001-abcdefgh"
    write_keys(tmp_path / "keys", [good, invalid])
    provider = {
        "provider_type": "gemini",
        "keys_path": str(tmp_path / "keys"),
        "api_base_url": fake.gemini_base,
        "default_model": "gemini-2.5-flash",
        "models": {"gemini-2.5-flash": {"endpoint_suffix": ":generateContent"}},
        "worker_health_policy": {"batch_delay_sec": 0},
    }
    settings = Settings.model_validate({"providers": {"g": provider}})
    keeper = await keeper_for(settings, store, clock, upstream)
    summary = await keeper.probe_round()
    assert (summary.healthy, summary.failed) == (1, 1)
    assert (await row(store, good, "gemini-2.5-flash"))["status"] == KeyStatus.VALID
    assert (await row(store, invalid, "gemini-2.5-flash"))["status"] == KeyStatus.INVALID_KEY
    last = fake.last_request(good)
    assert last is not None
    assert last.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert fake.key_in_url == 0
