"""Hourly usage counts per key: written by a real gateway serving real requests over loopback
against the fake upstream, purged by the Keeper's upkeep after `worker.usage_retention_days`
(injected clock), read back by the console's overview (attention order, rates, backlog, last
sync), on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import aiohttp
import sqlalchemy as sa
from tests.helpers import OPENAI_TOKEN, ManualClock, eventually, gateway_settings, start_gateway

from llmgateway.config.settings import DatabaseSettings, Settings
from llmgateway.console import templating
from llmgateway.console.overview_view import context
from llmgateway.keeper import upkeep
from llmgateway.observe.masking import fingerprint, mask
from llmgateway.records import USAGE_HOUR, UsageCount
from llmgateway.store import Store, keeper_tasks, overview, usage
from llmgateway.store.tables import key_status, key_usage, keys, usage_hours
from llmgateway.testing import FakeUpstream
from llmgateway.testing.configs import write_keys
from llmgateway.testing.faults import Behavior

DAY = 24 * USAGE_HOUR
SECRETS = [f"sk-usage-{i:04d}-abcdefghijklmnopqrst" for i in range(6)]


async def _chat(session: aiohttp.ClientSession, url: str) -> int:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {OPENAI_TOKEN}"}
    async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as answer:
        await answer.read()
        return answer.status


async def test_a_gateway_counts_each_attempt_per_key_and_hour(
    db_url: str, tmp_path: Path, fake: FakeUpstream
) -> None:
    limited, good = "sk-good-openai-000000000001", "sk-good-openai-000000000002"
    refused = "sk-good-openai-000000000003"
    write_keys(tmp_path / "keys" / "openai", [limited, good, refused])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    # its first call is answered 429 (the key's failure: retried on the other key)
    fake.set_behavior(limited, Behavior(rate_limited=True, retry_after=3600, rate_limit_calls=1))
    # every call is answered 400 (the client's fault, relayed: a request, not a failure)
    fake.set_behavior(refused, Behavior(error_rate=1.0, error_status=400))
    database = DatabaseSettings.model_validate({"url": db_url})
    settings = gateway_settings(tmp_path, fake).model_copy(update={"database": database})
    async with (
        start_gateway(settings) as gateway,
        aiohttp.ClientSession() as session,
        await Store.configured(settings.database) as store,
    ):
        answers = [await _chat(session, gateway.url) for _ in range(30)]
        assert answers.count(400) == fake.calls(refused) > 0
        writer = gateway.app.state.edge.attempt_loop.usage
        assert writer.pending >= 1  # counted on the request path, not written yet
        assert await writer.flush()
        assert writer.pending == 0
        now = gateway.gateway.clock()

        async with store.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        keys.c.value,
                        key_usage.c.model,
                        key_usage.c.hour,
                        key_usage.c.requests,
                        key_usage.c.failures,
                    ).join(keys, keys.c.id == key_usage.c.key_id)
                )
            ).all()
            used = dict((await conn.execute(sa.select(keys.c.value, keys.c.last_used_at))).all())
            totals = (await conn.execute(sa.select(usage_hours))).all()
    counted = {value: (requests, failures) for value, _, _, requests, failures in rows}
    assert counted[limited] == (fake.calls(limited), 1)
    assert counted[good] == (fake.calls(good), 0)
    assert counted[refused] == (fake.calls(refused), 0)
    assert sum(r for r, _ in counted.values()) == 31  # 30 answers and the one retried
    assert {hour for _, _, hour, _, _ in rows} == {usage.hour_of(now)}
    assert {model for _, model, _, _, _ in rows} == {"gpt-4o-mini"}
    for value in (limited, good, refused):
        assert used[value] is not None
        assert now - 60 < used[value] <= now + 1
    assert used["AIza-good-gemini-00000000001"] is None
    assert [(t.provider, t.requests, t.failures) for t in totals] == [("openai", 31, 1)]


async def _provider_keys(store: Store, count: int = len(SECRETS)) -> list[int]:
    """`count` keys of provider `p` (one model `m`), synced; their ids in `SECRETS` order."""
    settings = Settings.model_validate(
        {
            "providers": {
                "p": {
                    "provider_type": "openai_like",
                    "keys_path": "/nonexistent",
                    "api_base_url": "http://127.0.0.1:9/v1",
                    "default_model": "m",
                    "models": {"m": {"endpoint_suffix": "/chat/completions"}},
                    "access_control": {"gateway_access_token": "gw-token-0001-abcdefgh"},
                }
            }
        }
    )
    await store.sync_providers(settings.providers)
    await store.sync_keys("p", SECRETS[:count], ["m"], False)
    async with store.engine.connect() as conn:
        found = dict((await conn.execute(sa.select(keys.c.value, keys.c.id))).all())
    return [found[s] for s in SECRETS[:count]]


def _count(key_id: int, hour: float, requests: int, failures: int) -> UsageCount:
    return UsageCount("p", key_id, "m", usage.hour_of(hour), requests, failures)


async def test_usage_counts_add_up_and_are_purged_after_the_retention(
    store: Store, clock: ManualClock
) -> None:
    ids = await _provider_keys(store, 2)
    now = clock()
    batch = [_count(ids[0], now - 8 * DAY, 5, 1), _count(ids[0], now - 2 * DAY, 3, 0)]
    await usage.record(store, batch, now)
    await usage.record(store, [_count(ids[0], now - 2 * DAY, 4, 2), _count(ids[1], now, 1, 0)], now)
    await usage.record(store, [_count(999_999, now, 1, 1)], now)  # a key purged meanwhile

    async def stored() -> dict[tuple[int, int], tuple[int, int]]:
        async with store.engine.connect() as conn:
            result = await conn.execute(sa.select(key_usage))
            return {(r.key_id, r.hour): (r.requests, r.failures) for r in result}

    found = await stored()
    assert found == {
        (ids[0], usage.hour_of(now - 8 * DAY)): (5, 1),
        (ids[0], usage.hour_of(now - 2 * DAY)): (7, 2),
        (ids[1], usage.hour_of(now)): (1, 0),
    }
    settings = Settings.model_validate({"worker": {"usage_retention_days": 7}})
    summary = await upkeep.maintain(settings, store, "keeper-a", clock)
    assert summary.purged
    assert set(await stored()) == {
        (ids[0], usage.hour_of(now - 2 * DAY)),
        (ids[1], usage.hour_of(now)),
    }
    clock.advance(5 * DAY + USAGE_HOUR)  # the 2-day-old hour is now 7 days and an hour old
    assert (await upkeep.maintain(settings, store, "keeper-a", clock)).purged
    assert set(await stored()) == {(ids[1], usage.hour_of(now))}
    async with store.engine.connect() as conn:
        hours = set((await conn.scalars(sa.select(usage_hours.c.hour))).all())
    assert hours == {usage.hour_of(now)}


async def test_last_used_moves_forward_only_and_never_past_its_hour(
    store: Store, clock: ManualClock
) -> None:
    ids = await _provider_keys(store, 1)
    now = clock()
    await usage.record(store, [_count(ids[0], now, 1, 0)], now)
    await usage.record(store, [_count(ids[0], now - DAY, 1, 0)], now + 10)  # written late

    async with store.engine.connect() as conn:
        used = await conn.scalar(sa.select(keys.c.last_used_at).where(keys.c.id == ids[0]))
    assert used == now


async def test_the_attention_list_ranks_keys_by_failures_in_the_last_day(
    store: Store, clock: ManualClock
) -> None:
    ids = await _provider_keys(store)
    now = clock()
    counts = [
        _count(ids[0], now, 10, 2),
        _count(ids[0], now - 23 * USAGE_HOUR, 10, 2),  # 4 in all, in the window's first hour
        _count(ids[1], now, 50, 9),
        _count(ids[2], now - 30 * USAGE_HOUR, 90, 90),  # older than a day: not counted
        _count(ids[2], now, 5, 1),
        _count(ids[3], now, 7, 4),  # ties with ids[0]
        _count(ids[4], now, 100, 0),  # never failed: not listed
        _count(ids[5], now - USAGE_HOUR, 3, 0),  # its failures in another hour
        _count(ids[5], now, 2, 2),
    ]
    await usage.record(store, counts, now)
    async with store.engine.connect() as conn:
        listed = await overview.attention(conn, now)
        tied = sorted([(ids[0], 4, 20), (ids[3], 4, 7)])  # the lower key id first
        assert [(a.key_id, a.failures, a.requests) for a in listed] == [
            (ids[1], 9, 50),
            *tied,
            (ids[5], 2, 5),
            (ids[2], 1, 5),
        ]
        assert [await overview.attention(conn, now, limit=2)] == [listed[:2]]
    first = listed[0]
    assert (first.masked, first.fingerprint) == (mask(SECRETS[1]), fingerprint(SECRETS[1]))
    assert all(s not in repr(listed) for s in SECRETS)


async def test_the_overview_reads_states_backlog_rates_and_the_last_sync(
    store: Store, clock: ManualClock
) -> None:
    ids = await _provider_keys(store)
    now = clock()
    async with store.engine.begin() as conn:  # two probed valid, the rest due now
        await conn.execute(
            sa.update(key_status)
            .where(key_status.c.key_id.in_(ids[:2]))
            .values(status="valid", next_check_at=now + 600)
        )
    empty = await overview.read(store, now)
    assert not empty.counted
    assert empty.last_sync_at is None
    assert empty.backlog == len(SECRETS) - 2
    assert {(s.status, s.count) for s in empty.states} == {("valid", 2), ("untested", 4)}
    assert len(empty.hours) == 24
    assert empty.hours[-1].hour == usage.hour_of(now)

    await keeper_tasks.mark(store, keeper_tasks.SYNC, now - 30)
    hour = usage.hour_of(now)
    await usage.record(
        store,
        [_count(ids[0], now, 60, 6), _count(ids[1], now - 2 * USAGE_HOUR, 120, 0)],
        now,
    )
    found = await overview.read(store, hour + 30 * 60)  # half past
    assert found.last_sync_at == now - 30
    assert found.counted
    assert [h.requests for h in found.hours][-3:] == [120, 0, 60]
    per_minute, failing, since = found.rate(1)
    assert (per_minute, failing, since) == (2.0, 0.2, float(hour))
    per_minute, _, since = found.rate(24)
    assert since == hour - 23 * USAGE_HOUR
    assert per_minute == 180 / ((30 * 60 + 23 * USAGE_HOUR) / 60)
    assert [a.key_id for a in found.attention] == [ids[0]]


async def test_the_pool_counts_are_read_again_in_the_background_once_stale(
    store: Store, clock: ManualClock
) -> None:
    ids = await _provider_keys(store, 2)
    pool = overview.PoolCounts(store, clock, max_age=5.0)
    first = await pool.get()
    assert {(s.status, s.count) for s in first.states} == {("untested", 2)}
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.update(key_status).where(key_status.c.key_id == ids[0]).values(status="valid")
        )
    clock.advance(4.0)
    assert await pool.get() is first  # fresh enough: not read again
    clock.advance(2.0)
    assert await pool.get() is first  # stale: served while it is read again

    async def refreshed() -> bool:
        return (await pool.get()) is not first

    await eventually(refreshed, what="the counts read again")
    again = await pool.get()
    assert {(s.status, s.count) for s in again.states} == {("untested", 1), ("valid", 1)}
    assert again.at == clock()


async def test_the_overview_fragment_shows_the_counts_masked_keys_and_the_chart(
    store: Store, clock: ManualClock
) -> None:
    ids = await _provider_keys(store)
    now = clock()
    await keeper_tasks.mark(store, keeper_tasks.SYNC, now - 120)
    counts = [_count(ids[2], now, 40, 7), _count(ids[4], now - 3 * USAGE_HOUR, 9, 3)]
    await usage.record(store, counts, now)
    view = await overview.read(store, now + 90)
    shown = fragment(context(view, [], None))
    assert shown.index(fingerprint(SECRETS[2])) < shown.index(fingerprint(SECRETS[4]))
    assert mask(SECRETS[2]) in shown
    assert all(secret not in shown for secret in SECRETS)
    assert 'hx-trigger="every 5s"' in shown
    assert "only as precise as the gateways' write-behind" in shown
    assert '<dd data-field="last-sync">3 min ago</dd>' in shown
    assert '<dd data-field="backlog">6 rows due now</dd>' in shown
    assert '<span class="state state-untested" data-state="untested">untested 6</span>' in shown
    assert "<svg" in shown
    assert "49 requests" not in shown
    assert "40 requests, 7 failed" in shown
    assert "<script" not in shown
    assert "style=" not in shown


async def test_the_overview_fragment_without_usage_data_says_so(store: Store) -> None:
    await _provider_keys(store, 1)
    view = await overview.read(store, 1_800_000_000.0)
    shown = fragment(context(view, [], None))
    assert "No usage data yet" in shown
    assert "<svg" not in shown
    assert "No key failed in the last 24 h." in shown
    assert '<dd data-field="last-sync">never</dd>' in shown


def fragment(values: dict[str, object]) -> str:
    """The overview's fragment template rendered in the console's environment."""
    return templating.environment().get_template("_overview.html").render(**values)


@dataclass(frozen=True)
class ShownJob:
    """The fields of a bulk job (`llmgateway.store.jobs.Job`, branch console-jobs) the
    overview shows."""

    id: int
    action: str
    state: str
    total: int
    done: int
    percent: int
    submitted_at: float


async def test_the_overview_fragment_lists_bulk_jobs_with_their_progress(store: Store) -> None:
    view = await overview.read(store, 1_800_000_000.0)
    none = fragment(context(view, [], None))
    assert "Bulk jobs are listed here once this version keeps them." in none
    assert "No bulk jobs yet." in fragment(context(view, [], []))
    job = ShownJob(7, "disable", "running", 100_000, 25_000, 25, 1_800_000_000.0)
    shown = fragment(context(view, [], [job]))
    assert '<a href="/admin/jobs/7">#7</a>' in shown
    assert '<progress max="100" value="25">25 %</progress> 25000 of 100000' in shown


async def test_a_gateway_writes_its_counts_when_it_stops(
    db_url: str, tmp_path: Path, fake: FakeUpstream
) -> None:
    write_keys(tmp_path / "keys" / "openai", ["sk-good-openai-000000000001"])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    database = DatabaseSettings.model_validate({"url": db_url})
    settings = gateway_settings(tmp_path, fake).model_copy(update={"database": database})
    async with start_gateway(settings) as gateway, aiohttp.ClientSession() as session:
        answers = [await _chat(session, gateway.url) for _ in range(5)]
        assert answers == [200] * 5
        assert gateway.app.state.edge.attempt_loop.usage.pending == 1  # not written yet
    async with await Store.configured(settings.database) as store, store.engine.connect() as conn:
        written = (await conn.execute(sa.select(key_usage.c.requests))).scalars().all()
    assert written == [5]


async def test_the_counts_of_a_purged_key_go_with_it(store: Store, clock: ManualClock) -> None:
    ids = await _provider_keys(store, 2)
    await usage.record(
        store, [_count(ids[0], clock(), 3, 1), _count(ids[1], clock(), 2, 0)], clock()
    )
    await store.sync_keys("p", SECRETS[1:2], ["m"], False)  # the first key left its files
    clock.advance(31 * DAY)
    settings = Settings.model_validate({"worker": {"usage_retention_days": 60}})
    summary = await upkeep.maintain(settings, store, "keeper-a", clock)
    assert summary.purged_keys == 1
    async with store.engine.connect() as conn:
        left = (await conn.execute(sa.select(key_usage.c.key_id))).scalars().all()
    assert left == [ids[1]]
