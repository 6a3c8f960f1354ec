"""`llmgateway keys disable|enable|reset|recheck` against real stores (SQLite, PostgreSQL,
PostgreSQL through PgBouncer in transaction mode), keys synced from real files, statuses from
a real Keeper round on the fake upstream, and a real gateway that stops and starts using a key.
No output ever holds a key in full."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from tests.helpers import (
    OPENAI_TOKEN,
    eventually,
    gateway_settings,
    run_cli,
    start_gateway,
)
from tests.integration.test_keys_cli import (
    GEMINI,
    GOOD,
    INVALID,
    NOQUOTA,
    ainvoke,
    assert_no_secret,
    invoke,
    probed,
    rows_of,
    write_config,
    write_files,
)
from tests.pgbouncer import Route, routes

from llmgateway.cli.main import main
from llmgateway.config.load import load_settings
from llmgateway.config.settings import DatabaseSettings
from llmgateway.core.outcomes import KeyStatus
from llmgateway.keyfiles import run_sync
from llmgateway.observe.masking import fingerprint, mask
from llmgateway.observe.metrics import store_key_counts
from llmgateway.records import KeyFilter, StatusEvent
from llmgateway.store import Store
from llmgateway.store.job_runs import run_action
from llmgateway.store.key_actions import Action, Chosen, Progress
from llmgateway.store.key_list import KeyListing, listing_pages
from llmgateway.store.probes import claim_due, count_due
from llmgateway.store.tables import key_status
from llmgateway.testing import FakeUpstream
from llmgateway.testing.configs import write_keys
from llmgateway.testing.faults import Behavior

MODELS = ("gpt-4o", "gpt-4o-mini")


def fp(key: str) -> str:
    return fingerprint(key)


async def synced(config: str) -> Store:
    settings = load_settings(Path(config))
    store = await Store.configured(settings.database)
    await store.upgrade()
    await run_sync(settings, store)
    return store


async def test_disable_and_enable_through_the_cli(db_url: str, tmp_path: Path) -> None:
    write_files(tmp_path)
    config = str(write_config(tmp_path, db_url))
    store = await synced(config)
    try:
        before = await store.revision()
        out = await ainvoke("keys", "disable", "--config", config, fp(GOOD[0])[:6], fp(GEMINI[0]))
        assert "disabled: 2 of 2 matching keys" in out
        assert await store.revision() > before
        listed = rows_of(await ainvoke("keys", "list", "--config", config, "--limit", "0"))
        states = {key: row["STATE"] for key, row in listed.items()}
        assert states[(fp(GOOD[0]), "gpt-4o")] == "disabled"
        assert states[(fp(GOOD[0]), "gpt-4o-mini")] == "disabled"
        assert states[(fp(GEMINI[0]), "shared")] == "disabled"
        assert states[(fp(GOOD[1]), "gpt-4o")] == "untested"
        only = rows_of(await ainvoke("keys", "list", "--config", config, "--status", "disabled"))
        assert set(only) == {(fp(GOOD[0]), m) for m in MODELS} | {(fp(GEMINI[0]), "shared")}
        # the states partition the rows: a disabled key is no longer listed by its last status
        untested = rows_of(
            await ainvoke("keys", "list", "--config", config, "--status", "untested")
        )
        assert not set(untested) & set(only)
        assert (fp(GOOD[1]), "gpt-4o") in untested
        both = ("--status", "untested", "--status", "disabled", "--limit", "0")
        assert set(rows_of(await ainvoke("keys", "list", "--config", config, *both))) == set(
            untested
        ) | set(only)

        shown = await ainvoke("keys", "show", "--config", config, fp(GOOD[0])[:6])
        assert "disabled " in shown
        assert "by `llmgateway keys disable`" in shown
        assert_no_secret(out + shown)

        # the pool a gateway loads leaves them out; a delta takes them out of a loaded pool
        snapshot = await store.snapshot()
        assert fp(GOOD[0]) not in {fp(row.secret) for row in snapshot.keys}
        delta = await store.snapshot(before)
        assert {(fp(r.secret), r.active) for r in delta.keys} == {
            (fp(GOOD[0]), False),
            (fp(GEMINI[0]), False),
        }

        # a sync of the files (the key still in them) keeps the flag
        await run_sync(load_settings(Path(config)), store)
        (tmp_path / "keys" / "openai" / "a.txt").write_text(f"{GOOD[0]}\n{GOOD[1]}\n")
        await run_sync(load_settings(Path(config)), store)
        again = rows_of(await ainvoke("keys", "list", "--config", config, "--status", "disabled"))
        assert set(again) == set(only)

        status = json.loads(await ainvoke("status", "--config", config, "--json"))
        disabled = [row for row in status["keys"] if row["status"] == "disabled"]
        assert sum(row["count"] for row in disabled) == 3
        assert {row["state"] for row in disabled} == {"disabled"}
        assert "disabled" in await ainvoke("status", "--config", config)
        gauged = {(c.provider, c.state) for c in store_key_counts(await store.status_counts())}
        assert ("gemini", "disabled") in gauged

        # again: nothing more to do
        report = json.loads(
            await ainvoke("keys", "disable", "--config", config, fp(GOOD[0]), "--json")
        )
        assert report | {"filter": ""} == {
            "action": "disable",
            "filter": "",
            "fingerprints": [fp(GOOD[0])],
            "matched": 1,
            "changed": 0,
            "rows": 0,
        }

        mark = await store.revision()
        out = await ainvoke("keys", "enable", "--config", config, "--status", "disabled")
        assert "enabled: 2 of 2 matching keys" in out
        delta = await store.snapshot(mark)
        assert {(fp(r.secret), r.active) for r in delta.keys} == {
            (fp(GOOD[0]), True),
            (fp(GEMINI[0]), True),
        }
        assert len(delta.keys) == 3  # every row of the keys, so each gateway adds them back
        assert "no keys match" in await ainvoke(
            "keys", "list", "--config", config, "--status", "disabled"
        )
    finally:
        await store.close()


def test_no_filter_is_refused_unless_all(tmp_path: Path) -> None:
    write_files(tmp_path)
    config = str(write_config(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}"))
    invoke("db", "upgrade", "--sync", "--config", config)
    for action in ("disable", "enable", "reset", "recheck"):
        refused = CliRunner().invoke(main, ["keys", action, "--config", config])
        assert refused.exit_code == 2, refused.output
        assert "--all" in refused.output
    bad = CliRunner().invoke(main, ["keys", "disable", "--config", config, "xyz"])
    assert bad.exit_code == 2
    assert "4 to 64 hex digits" in bad.output
    for flag, value, problem in (
        ("--status-code", "42", "a status code is a number from 100 to 599"),
        ("--search", "sk-live-abcdef", "search for a fingerprint (4 to 64 hex digits)"),
        ("--status", "asleep", "'asleep' is not one of"),
    ):
        refused = CliRunner().invoke(main, ["keys", "disable", "--config", config, flag, value])
        assert refused.exit_code == 2, refused.output
        assert problem in refused.output
        assert flag in refused.output
    suffix = mask(GOOD[2])  # every openai key here ends in mnop
    searched = json.loads(
        invoke("keys", "disable", "--config", config, "--search", suffix, "--json")
    )
    assert (searched["matched"], searched["changed"], searched["filter"]) == (
        5,
        5,
        f"--search {suffix}",
    )
    one = json.loads(
        invoke("keys", "enable", "--config", config, "--search", fp(GOOD[2])[:10], "--json")
    )
    assert (one["matched"], one["changed"]) == (1, 1)
    never_answered = invoke("keys", "enable", "--config", config, "--status-code", "200", "--json")
    assert json.loads(never_answered)["matched"] == 0  # nothing was probed: no status code yet
    rest = invoke("keys", "enable", "--config", config, "--search", suffix, "--json")
    assert (json.loads(rest)["matched"], json.loads(rest)["changed"]) == (5, 4)
    report = json.loads(invoke("keys", "disable", "--config", config, "--all", "--json"))
    assert (report["matched"], report["changed"]) == (7, 7)
    assert (report["rows"]) == 12  # 5 openai keys x 2 models, 2 gemini keys shared
    out = invoke("keys", "enable", "--config", config, "--provider", "gemini")
    assert "enabled: 2 of 2 matching keys" in out


async def test_the_keeper_does_not_probe_disabled_keys(
    db_url: str, tmp_path: Path, fake: FakeUpstream
) -> None:
    write_files(tmp_path)
    config = str(write_config(tmp_path, db_url, fake))
    store = await synced(config)
    try:
        await ainvoke("keys", "disable", "--config", config, "--provider", "openai")
        now = store.clock()
        assert await count_due(store, now) == 2  # the gemini keys only
        await probed(Path(config), fake)
        assert fake.calls(GEMINI[0]) >= 1
        assert all(fake.calls(key) == 0 for key in [*GOOD, INVALID, NOQUOTA])
    finally:
        await store.close()


async def test_reset_clears_a_cooldown_and_a_failure_streak(db_url: str, tmp_path: Path) -> None:
    write_files(tmp_path)
    config = str(write_config(tmp_path, db_url))
    store = await synced(config)
    try:
        listed = [row async for page in _pages(store) for row in page]
        key_id = next(row.key_id for row in listed if row.fingerprint == fp(GOOD[1]))
        now = store.clock()
        await store.apply_events(
            [
                StatusEvent(key_id, m, KeyStatus.RATE_LIMITED, now, cooldown_until=now + 3600)
                for m in MODELS
            ]
        )
        cooled = [r for r in (await store.snapshot()).keys if r.key_id == key_id]
        assert {r.cooldown_until for r in cooled} == {now + 3600}
        mark = await store.revision()
        out = await ainvoke(
            "keys", "reset", "--config", config, "--model", "gpt-4o", fp(GOOD[1])[:8]
        )
        assert "reset: 1 of 1 matching keys" in out
        rows = {r.model: r for r in (await store.snapshot(mark)).keys}
        assert set(rows) == {"gpt-4o"}  # the other model's row was not chosen
        assert rows["gpt-4o"].status is KeyStatus.UNTESTED
        assert rows["gpt-4o"].cooldown_until is None
        shown = json.loads(await ainvoke("keys", "show", "--config", config, fp(GOOD[1]), "--json"))
        by_model = {m["model"]: m for m in shown["keys"][0]["models"]}
        assert by_model["gpt-4o"]["failing_since"] is None
        assert by_model["gpt-4o"]["status"] == "untested"
        assert by_model["gpt-4o-mini"]["status"] == "rate_limited"
        assert_no_secret(out + json.dumps(shown))
    finally:
        await store.close()


async def test_recheck_makes_a_key_due_first(
    db_url: str, tmp_path: Path, fake: FakeUpstream
) -> None:
    write_files(tmp_path)
    config = str(write_config(tmp_path, db_url, fake))
    await probed(Path(config), fake)
    store = await synced(config)
    try:
        now = store.clock()
        assert await count_due(store, now) == 0  # every row probed, next checks ahead
        out = await ainvoke("keys", "recheck", "--config", config, fp(NOQUOTA)[:10])
        assert "due now: 1 of 1 matching keys" in out
        assert await count_due(store, store.clock()) == 2
        # a backlog: every row overdue by an hour; a recheck still goes before all of them
        async with store.engine.begin() as conn:
            await conn.execute(sa.update(key_status).values(next_check_at=now - 3600))
        await ainvoke("keys", "recheck", "--config", config, fp(NOQUOTA)[:10])
        later = store.clock()
        claimed = await claim_due(store, "test-keeper", later, later + 60, 2)
        assert [(fp(c.secret), c.model) for c in claimed] == [
            (fp(NOQUOTA), "gpt-4o"),
            (fp(NOQUOTA), "gpt-4o-mini"),
        ]
        assert_no_secret(out)
    finally:
        await store.close()


def _pages(store: Store) -> AsyncIterator[list[KeyListing]]:
    return listing_pages(store, KeyFilter())


async def test_bulk_in_chunks(store: Store, tmp_path: Path) -> None:
    from llmgateway.config.settings import Settings

    providers = {
        "openai": {
            "provider_type": "openai_like",
            "keys_path": "/nonexistent",
            "api_base_url": "https://api.example.com/v1",
            "default_model": "m",
            "models": {"m": {"endpoint_suffix": "/chat/completions"}},
            "access_control": {"gateway_access_token": "gw-token-openai-0001"},
        }
    }
    settings = Settings.model_validate({"providers": providers})
    await store.sync_providers(settings.providers)
    secrets = [f"sk-bulk-{i:05d}-abcdefghijklmnop" for i in range(2500)]
    await store.sync_keys("openai", secrets, ["m"], False)
    seen: list[Progress] = []
    chosen = Chosen(KeyFilter(provider="openai"))
    done = await run_action(store, Action.DISABLE, chosen, chunk=1000, on_chunk=seen.append)
    assert done == Progress(2500, 2500, 2500)
    assert [p.matched for p in seen] == [1000, 2000, 2500]
    assert (await store.snapshot()).keys == []
    done = await run_action(store, Action.ENABLE, chosen, chunk=1000)
    assert done == Progress(2500, 2500, 2500)
    assert len((await store.snapshot()).keys) == 2500


@pytest.mark.parametrize("route", routes("pgbouncer"), indirect=True)
def test_through_pgbouncer_in_transaction_mode(
    route: Route, pg_database: str, tmp_path: Path
) -> None:
    write_files(tmp_path)
    config = str(write_config(tmp_path, route.url(pg_database)))
    invoke("db", "upgrade", "--sync", "--config", config)
    assert "disabled: 7 of 7" in invoke("keys", "disable", "--config", config, "--all")
    assert "reset: 7 of 7" in invoke("keys", "reset", "--config", config, "--all")
    assert "due now: 7 of 7" in invoke("keys", "recheck", "--config", config, "--all")
    assert "enabled: 7 of 7" in invoke("keys", "enable", "--config", config, "--all")

    async def in_chunks_of_two() -> Progress:  # 4 transactions, each on its own server link
        async with await Store.configured(load_settings(Path(config)).database) as store:
            return await run_action(store, Action.DISABLE, Chosen(KeyFilter(), ()), chunk=2)

    assert asyncio.run(in_chunks_of_two()) == Progress(7, 7, 12)


def test_a_large_set_prints_its_progress(tmp_path: Path) -> None:
    write_files(tmp_path)
    many = [f"sk-many-{i:05d}-abcdefghijklmnop" for i in range(2500)]
    write_keys(tmp_path / "keys" / "openai", many)  # keys.txt, beside a.txt and b.txt
    config = str(write_config(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}"))
    invoke("db", "upgrade", "--sync", "--config", config)
    result = CliRunner().invoke(main, ["keys", "disable", "--config", config, "--all"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "… 2000 keys so far, 2000 changed",
        "… 2507 keys so far, 2507 changed",
    ]
    assert "disabled: 2507 of 2507 matching keys" in result.stdout
    assert_no_secret(result.output)
    assert all(key not in result.output for key in many)


async def test_the_real_command_in_a_subprocess(tmp_path: Path) -> None:
    write_files(tmp_path)
    config = str(write_config(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}"))
    code, out, err = await run_cli("db", "upgrade", "--sync", "--config", config)
    assert code == 0, err
    code, out, err = await run_cli("keys", "disable", "--config", config, fp(INVALID)[:6])
    assert code == 0, err
    assert "disabled: 1 of 1 matching keys" in out
    code, listed, err2 = await run_cli("keys", "list", "--config", config, "--status", "disabled")
    assert code == 0, err2
    assert set(rows_of(listed)) == {(fp(INVALID), m) for m in MODELS}
    assert_no_secret(out + err + listed + err2)


async def _chat(session: aiohttp.ClientSession, url: str) -> int:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {OPENAI_TOKEN}"}
    async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as answer:
        await answer.read()
        return answer.status


async def test_a_gateway_stops_using_a_disabled_key_and_uses_it_again_once_enabled(
    db_url: str, tmp_path: Path, fake: FakeUpstream
) -> None:
    first, second = "sk-good-openai-000000000001", "sk-good-openai-000000000002"
    write_keys(tmp_path / "keys" / "openai", [first, second])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    database = DatabaseSettings.model_validate({"url": db_url})
    # a long poll: on PostgreSQL the store notice of the change wakes the refresh at once
    slow = {"refresh_interval_sec": 30.0} if db_url.startswith("postgresql") else None
    settings = gateway_settings(tmp_path, fake, slow).model_copy(update={"database": database})
    async with (
        start_gateway(settings) as gateway,
        aiohttp.ClientSession() as session,
        await Store.configured(settings.database) as store,
    ):
        answers = await asyncio.gather(*(_chat(session, gateway.url) for _ in range(40)))
        assert set(answers) == {200}
        assert fake.calls(first) > 0
        assert fake.calls(second) > 0

        if slow is not None:
            listening = gateway.gateway.readiness.listening
            assert listening is not None
            await eventually(listening.is_set, what="the store listener listening")
        chosen = Chosen(KeyFilter(), (fp(first),))
        assert (await run_action(store, Action.DISABLE, chosen)).changed == 1
        revision = await store.revision()
        await eventually(lambda: gateway.gateway.readiness.revision >= revision)
        fake.reset()
        answers = await asyncio.gather(*(_chat(session, gateway.url) for _ in range(40)))
        assert set(answers) == {200}
        assert fake.calls(first) == 0
        assert fake.calls(second) == 40

        assert (await run_action(store, Action.ENABLE, chosen)).changed == 1
        revision = await store.revision()
        await eventually(lambda: gateway.gateway.readiness.revision >= revision)
        fake.reset()
        answers = await asyncio.gather(*(_chat(session, gateway.url) for _ in range(40)))
        assert set(answers) == {200}
        assert fake.calls(first) > 0


async def test_a_gateway_uses_a_cooled_key_again_once_reset(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    cooled, other = "sk-good-openai-000000000001", "sk-good-openai-000000000002"
    write_keys(tmp_path / "keys" / "openai", [cooled, other])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    # its first call is answered 429 "retry in an hour", every later one is fine
    fake.set_behavior(cooled, Behavior(rate_limited=True, retry_after=3600, rate_limit_calls=1))
    settings = gateway_settings(tmp_path, fake)
    async with (
        start_gateway(settings) as gateway,
        aiohttp.ClientSession() as session,
        await Store.configured(settings.database) as store,
    ):
        answers = [await _chat(session, gateway.url) for _ in range(20)]  # one at a time
        assert set(answers) == {200}
        assert fake.calls(cooled) == 1

        async def stored_status() -> set[str]:
            found = [row async for page in _pages(store) for row in page]
            return {r.status for r in found if r.fingerprint == fp(cooled)}

        async def written() -> bool:
            return "rate_limited" in await stored_status()

        await eventually(written, what="the gateway's 429 written to the store")
        fake.reset()
        answers = await asyncio.gather(*(_chat(session, gateway.url) for _ in range(20)))
        assert fake.calls(cooled) == 0  # cooling for an hour

        done = await run_action(store, Action.RESET, Chosen(KeyFilter(), (fp(cooled)[:6],)))
        assert done.changed == 1
        assert await stored_status() == {"untested"}
        revision = await store.revision()
        await eventually(lambda: gateway.gateway.readiness.revision >= revision)
        answers = await asyncio.gather(*(_chat(session, gateway.url) for _ in range(40)))
        assert set(answers) == {200}
        assert fake.calls(cooled) > 0
