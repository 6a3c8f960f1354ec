"""Reload requests and each process's config in the store (`store.config_runs`, migration 0015),
and the `ConfigFollower` on a real file and store: SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from tests.helpers import eventually

from llmgateway.cli.tokens import TokenCheck
from llmgateway.config.reload_diff import ConfigDiff
from llmgateway.config.settings import Settings
from llmgateway.observe.metrics import Metrics
from llmgateway.reloading import ConfigFollower, Outcome, config_hash
from llmgateway.store import Store
from llmgateway.store.config_runs import (
    ConfigRun,
    latest_request,
    recent_runs,
    report_run,
    request_reload,
)
from llmgateway.store.connect import _alembic_config
from llmgateway.store.schema import SCHEMA_HEAD
from llmgateway.testing.configs import two_providers

STRONG = "gw-strong-token-000000000001"


async def tables(store: Store) -> set[str]:
    async with store.engine.connect() as conn:
        return set(await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names()))


async def test_0015_adds_both_tables_and_its_downgrade_drops_them(db_url: str) -> None:
    from alembic import command

    if db_url.startswith("sqlite"):
        Path(db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    async with await Store.open(db_url) as store:
        assert await store.upgrade() == SCHEMA_HEAD
        assert {"config_reloads", "config_runs"} <= await tables(store)

        def to_0014(sync: sa.Connection) -> None:
            config = _alembic_config()
            config.attributes["connection"] = sync
            command.downgrade(config, "0014")

        async with store.engine.begin() as conn:
            await conn.run_sync(to_0014)
        assert not {"config_reloads", "config_runs"} & await tables(store)
        assert await store.upgrade() == SCHEMA_HEAD


async def test_requests_and_runs_round_trip(store: Store) -> None:
    assert await latest_request(store.engine) is None
    first = await request_reload(store.engine, "aaaaaaaaaaaa", 100.0)
    second = await request_reload(store.engine, "bbbbbbbbbbbb", 101.0)
    assert second > first
    assert await latest_request(store.engine) == (second, "bbbbbbbbbbbb")
    await report_run(store.engine, ConfigRun("h:1", "gateway", "aaaaaaaaaaaa", "started", 50.0))
    await report_run(store.engine, ConfigRun("h:1", "gateway", "bbbbbbbbbbbb", "applied", 200.0))
    await report_run(store.engine, ConfigRun("h:2", "keeper", "cccccccccccc", "refused", 10.0))
    runs = await recent_runs(store.engine, since=100.0)
    assert runs == [ConfigRun("h:1", "gateway", "bbbbbbbbbbbb", "applied", 200.0)]


def write(path: Path, token: str, **gateway: object) -> None:
    document = two_providers(
        path.parent,
        "http://127.0.0.1:9",
        openai_token=token,
        gemini_token=STRONG + "g",
        gateway={"refresh_interval_sec": 0.05, **gateway},
    )
    path.write_text(yaml.safe_dump(document))


def follower(path: Path, store: Store, applied: list[ConfigDiff], host: str) -> ConfigFollower:
    from llmgateway.config.load import load_settings

    async def apply(_new: Settings, diff: ConfigDiff) -> None:
        applied.append(diff)

    return ConfigFollower(
        path,
        load_settings(path),
        apply,
        "gateway",
        Metrics.create(),
        TokenCheck(host, (host,)),
        store.engine,
    )


async def test_a_weak_token_off_loopback_is_refused_as_at_start(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "providers.yaml"
    write(config, STRONG)
    applied: list[ConfigDiff] = []
    follow = follower(config, store, applied, "0.0.0.0")
    started = follow.config_hash
    write(config, "short-token")
    with caplog.at_level(logging.ERROR, "llmgateway.config"):
        assert await follow.reload() is Outcome.REFUSED
    assert applied == []
    assert follow.config_hash == started
    assert "providers.openai.access_control.gateway_access_token: a token of 11 characters" in (
        caplog.text
    )
    assert "short-token" not in caplog.text
    runs = await recent_runs(store.engine, 0.0)
    assert [(r.config_hash, r.outcome) for r in runs] == [(started, "refused")]
    # the same token is fine on loopback (warned of, as at start)
    loopback = follower(config, store, applied, "127.0.0.1")
    write(config, STRONG)
    loopback.settings = follow.settings
    write(config, "short-token")
    assert await loopback.reload() is Outcome.APPLIED
    assert [d.changed for d in applied] == [("providers.openai.access_control",)]


async def test_a_request_in_the_store_wakes_the_follower_and_the_same_file_is_unchanged(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "providers.yaml"
    write(config, STRONG)
    applied: list[ConfigDiff] = []
    follow = follower(config, store, applied, "127.0.0.1")
    task = asyncio.create_task(follow.run())
    try:
        await asyncio.sleep(0.2)  # its first look at the store: requests before it are done
        await request_reload(store.engine, config_hash(config), 1.0)
        await eventually(lambda: follow.outcome is Outcome.UNCHANGED, within=5)
        assert applied == []
        write(config, STRONG + "x")
        await request_reload(store.engine, config_hash(config), 2.0)
        wanted = [(config_hash(config), "applied")]

        async def reported() -> bool:
            runs = await recent_runs(store.engine, 0.0)
            return [(r.config_hash, r.outcome) for r in runs] == wanted

        await eventually(reported, within=5, what="the applied reload reported")
        assert [d.changed for d in applied] == [("providers.openai.access_control",)]
        with caplog.at_level(logging.WARNING, "llmgateway.config"):
            await request_reload(store.engine, "0123456789ab", 3.0)
            await eventually(lambda: "read config 0123456789ab" in caplog.text, within=5)
        assert "(not the same)" in caplog.text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
