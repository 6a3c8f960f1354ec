"""Maintenance on schedules kept in the store, on SQLite and PostgreSQL with the clock moved by
hand: a restarted keeper runs what came due while it was down and nothing else, a task another
keeper holds is left to it (until its lease ends), several keepers on one PostgreSQL run a due
task once, `worker --once` runs the maintenance that is due (and the bulk jobs submitted); and
the proxy loop's due times."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from tests.helpers import ManualClock, eventually, run_cli
from tests.pgbouncer import Route, routes

from llmgateway.config.settings import Settings
from llmgateway.keeper import upkeep
from llmgateway.keeper.probes import DAY, HOUR
from llmgateway.keeper.run import Keeper
from llmgateway.keeper.summary import MaintenanceSummary
from llmgateway.keyfiles import run_sync
from llmgateway.records import Actor, KeyFilter
from llmgateway.store import Store, keeper_tasks
from llmgateway.store.jobs import submit
from llmgateway.store.key_actions import Action, Chosen
from llmgateway.store.tables import keeper_tasks as tasks_table
from llmgateway.testing import FakeUpstream
from llmgateway.testing.configs import write_keys
from llmgateway.testing.connect_proxy import ConnectProxy
from llmgateway.transport.upstream import HttpUpstream

KEYS = [f"sk-good-upkeep-{i:02d}-abcdefgh" for i in range(3)]
WEEK = 168 * HOUR


def settings_for(tmp_path: Path, fake: FakeUpstream, **worker: Any) -> Settings:
    provider = {
        "provider_type": "openai_like",
        "keys_path": str(tmp_path / "keys"),
        "api_base_url": fake.openai_base,
        "default_model": "gpt-4o-mini",
        "shared_key_status": True,
        "models": {"gpt-4o-mini": {"endpoint_suffix": "/chat/completions"}},
        "proxy_config": worker.pop("proxy_config", {}),
    }
    return Settings.model_validate({"worker": worker, "providers": {"p1": provider}})


async def last_runs(store: Store) -> dict[str, float | None]:
    return {name: row.last_run_at for name, row in (await keeper_tasks.read(store)).items()}


async def test_a_restarted_keeper_runs_what_came_due_while_it_was_down(
    store: Store,
    fake: FakeUpstream,
    clock: ManualClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_keys(tmp_path / "keys", KEYS)
    settings = settings_for(tmp_path, fake)
    await run_sync(settings, store)
    started = clock.now

    def keeper() -> Keeper:  # a new process: nothing remembered but the store
        return Keeper(settings, store, clock=clock)

    assert await keeper().maintain() == MaintenanceSummary(purged=True, vacuumed=True)
    assert await last_runs(store) == {"purge": started, "vacuum": started}

    clock.advance(2 * HOUR)  # restarted soon after: nothing is due, nothing runs
    assert await keeper().maintain() == MaintenanceSummary()
    assert await last_runs(store) == {"purge": started, "vacuum": started}

    clock.advance(DAY)  # restarted daily: the purge is due, VACUUM not yet
    assert await keeper().maintain() == MaintenanceSummary(purged=True)
    assert await last_runs(store) == {"purge": clock.now, "vacuum": started}

    clock.now = started + WEEK  # a week after the last VACUUM, whatever happened in between
    with caplog.at_level(logging.INFO, logger="llmgateway.keeper"):
        assert (await keeper().maintain()).vacuumed
    assert (await last_runs(store))["vacuum"] == clock.now
    assert "maintenance: vacuum done" in caplog.text
    assert await upkeep.next_due(settings, store) == clock.now + DAY  # the purge, next


async def test_a_task_another_keeper_holds_is_left_to_it_until_its_lease_ends(
    store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, fake)
    keeper = Keeper(settings, store, clock=clock)
    # another keeper took VACUUM and died (or still runs it)
    assert await keeper_tasks.claim(store, "vacuum", "other", clock.now, WEEK, upkeep.TASK_HOLD_SEC)
    assert await keeper.maintain() == MaintenanceSummary(purged=True)
    assert (await last_runs(store))["vacuum"] is None
    clock.advance(upkeep.TASK_HOLD_SEC)
    assert (await keeper.maintain()).vacuumed  # its lease ended: the task is taken over
    row = (await keeper_tasks.read(store))["vacuum"]
    assert (row.last_run_at, row.lease_owner, row.lease_until) == (clock.now, None, None)


async def test_a_released_task_stays_due_and_a_finished_one_is_not(
    store: Store, clock: ManualClock
) -> None:
    hold = upkeep.TASK_HOLD_SEC
    assert await keeper_tasks.claim(store, "purge", "one", clock.now, DAY, hold)
    assert not await keeper_tasks.claim(store, "purge", "two", clock.now, DAY, hold)
    await keeper_tasks.release(store, "purge", "one")  # it failed: not recorded as run
    assert await keeper_tasks.claim(store, "purge", "two", clock.now, DAY, hold)
    await keeper_tasks.finish(store, "purge", "one", clock.now)  # not its lease any more
    assert (await last_runs(store))["purge"] is None
    await keeper_tasks.finish(store, "purge", "two", clock.now)
    assert (await last_runs(store))["purge"] == clock.now
    clock.advance(DAY - 1)
    assert not await keeper_tasks.claim(store, "purge", "one", clock.now, DAY, hold)
    clock.advance(1)
    assert await keeper_tasks.claim(store, "purge", "one", clock.now, DAY, hold)


@pytest.mark.postgres
@pytest.mark.parametrize("route", routes("direct", "pgbouncer"), indirect=True)
async def test_keepers_sharing_a_postgresql_run_a_due_task_once(
    route: Route, pg_database: str, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, fake)
    stores = [await Store.open(route.url(pg_database), clock=clock) for _ in range(6)]
    try:
        await stores[0].upgrade()
        keepers = [Keeper(settings, store, clock=clock) for store in stores]
        for _ in range(2):  # never run, then due again a week later
            done = await asyncio.gather(*(k.maintain() for k in keepers))
            assert sum(d.vacuumed for d in done) == 1
            assert sum(d.purged for d in done) == 1
            assert await last_runs(stores[0]) == {"purge": clock.now, "vacuum": clock.now}
            clock.advance(WEEK)
    finally:
        for store in stores:
            await store.close()


async def test_the_long_run_keeps_maintenance_times_in_the_store(
    store: Store, fake: FakeUpstream, clock: ManualClock, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys", KEYS)
    settings = settings_for(tmp_path, fake, watch_files=False)
    keeper = Keeper(settings, store, HttpUpstream(), clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(keeper.run(stop))
    # the sync's finish is recorded too (the console's overview shows it), never claimed
    expected = {"purge": clock.now, "vacuum": clock.now, keeper_tasks.SYNC: clock.now}

    async def maintained() -> bool:
        return await last_runs(store) == expected

    await eventually(maintained)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert await last_runs(store) == expected


async def test_worker_once_runs_the_maintenance_that_is_due(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys", KEYS[:1])
    database = tmp_path / "gw.db"
    document = {
        "database": {"url": f"sqlite:///{database}"},
        "providers": {
            "p1": {
                "provider_type": "openai_like",
                "keys_path": str(tmp_path / "keys"),
                "api_base_url": fake.openai_base,
                "default_model": "gpt-4o-mini",
                "models": {"gpt-4o-mini": {"endpoint_suffix": "/chat/completions"}},
                "access_control": {"gateway_access_token": "gw-token-0001-abcdefgh"},
            }
        },
    }
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(document))

    async def once() -> str:
        code, out, err = await run_cli("worker", "--once", "--config", str(path))
        assert code == 0, err
        return out

    first_out = await once()
    assert "maintenance: purge (0 keys, 0 proxies deleted), vacuum" in first_out
    assert "bulk jobs" not in first_out
    assert "maintenance: nothing due" in await once()
    async with await Store.open(f"sqlite:///{database}") as store:
        first = await last_runs(store)
        async with store.engine.begin() as conn:  # as if the last VACUUM was a week ago
            await conn.execute(
                sa.update(tasks_table)
                .where(tasks_table.c.name == "vacuum")
                .values(last_run_at=tasks_table.c.last_run_at - WEEK)
            )
        await submit(store, Action.RECHECK, Chosen(KeyFilter(provider="p1")), Actor.cli())
    third_out = await once()
    assert "maintenance: vacuum" in third_out
    assert "bulk jobs: 1 run to their end" in third_out
    async with await Store.open(f"sqlite:///{database}") as store:
        again = await last_runs(store)
    assert again["purge"] == first["purge"]
    assert again["vacuum"] is not None
    assert first["vacuum"] is not None
    assert again["vacuum"] > first["vacuum"]


async def test_proxy_checks_come_due_by_their_own_intervals(
    store: Store,
    fake: FakeUpstream,
    clock: ManualClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_keys(tmp_path / "keys", KEYS)
    async with ConnectProxy() as alive, ConnectProxy() as dying:
        pool = tmp_path / "proxies"
        pool.mkdir()
        with_password = dying.url.replace("http://", "http://user:pw-s3cret-0001@")
        (pool / "list.txt").write_text(f"{alive.url}\n{with_password}\n")
        settings = settings_for(
            tmp_path,
            fake,
            proxy_check_interval_sec=10,
            proxy_retry_sec=5,
            proxy_config={"mode": "stealth", "pool_list_path": str(pool)},
        )
        await run_sync(settings, store)
        keeper = Keeper(settings, store, HttpUpstream(), clock=clock)
        caplog.set_level(logging.INFO, logger="llmgateway.keeper")
        try:
            assert await keeper.until_proxy_check() == 0  # new proxies: due at once
            assert (await keeper.probe_proxies()).alive == 2
            assert await keeper.until_proxy_check() == 10  # a live one: the check interval
            clock.advance(4)
            assert await keeper.until_proxy_check() == 6
            assert (await keeper.probe_proxies()).alive == 0  # none due yet
            await dying.stop()
            clock.advance(6)
            found = await keeper.probe_proxies()
            assert (found.alive, found.dead) == (1, 1)
            assert f"proxy {dying.url} of provider p1 found dead" in caplog.text
            assert await keeper.until_proxy_check() == 5  # a dead one: the retry interval
            clock.advance(5)
            assert (await keeper.probe_proxies()).dead == 1  # only the dead one was due
            assert await keeper.until_proxy_check() == 5
            await dying.start()
            clock.advance(5)  # the dead one's retry, and the live one's next check
            assert (await keeper.probe_proxies()).alive == 2
            assert f"proxy {dying.url} of provider p1 is alive again" in caplog.text
            assert caplog.text.count("found dead") == 1  # a change is logged, not each check
            assert "pw-s3cret-0001" not in caplog.text
        finally:
            await keeper.upstream.close()
