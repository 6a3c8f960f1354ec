"""Upgrading the original llmGateway's PostgreSQL database in place (issue 15).

A database built from the original's table description (tests/upgrade/original_db.py), filled
with a few thousand keys in every status, shared and per model, some no longer in the key files
and a provider no longer in the config; then the real CLI (`db upgrade`, `status --json`,
`worker --once`, `gateway`), a real gateway on the upgraded database and the Keeper's round,
both against the fake upstream.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml
from sqlalchemy.engine import make_url

from llmgateway.config.settings import Settings
from llmgateway.keeper.run import Keeper
from llmgateway.store import Adoption, OriginalDatabaseError, Store
from llmgateway.store.connect import head_revision
from llmgateway.store.original import PREFIX, STILL_WRITING_SEC, State, StillWritingError
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import (
    GEMINI_TOKEN,
    OPENAI_TOKEN,
    ManualClock,
    gateway_settings,
    libpq_dsn,
    run_cli,
    start_gateway,
)
from tests.pgbouncer import Route, routes
from tests.upgrade.original_db import (
    INVALID,
    SHARED,
    Filled,
    Provider,
    catalog,
    create,
    fill,
    original_counts,
)

pytestmark = pytest.mark.postgres

PASSWORD = "hunter2-db-password"
PROVIDERS = (
    Provider("openai", "sk-orig-openai-", 1200, ("gpt-4o-mini", "gpt-4o"), skip=20),
    Provider("gemini", "AIza-orig-gemini-", 1000, (SHARED,), skip=25),
    Provider("retired", "sk-orig-retired-", 150, ("gpt-4o-mini",)),
)
"""2350 keys: `openai` per model, `gemini` shared, `retired` no longer in the config."""
CONFIGURED = ("openai", "gemini")
HEAD = head_revision()


@pytest.fixture
def original_url(pg_database: str) -> str:
    """The fresh database's URL with a password (the test server trusts; it is never asked)."""
    return make_url(pg_database).set(password=PASSWORD).render_as_string(hide_password=False)


@pytest.fixture
def dsn(pg_database: str) -> str:
    return libpq_dsn(pg_database)


def write_config(folder: Path, fake: FakeUpstream, filled: Filled, database: dict[str, Any]) -> str:
    """A config with `openai` and `gemini` on the fake upstream, their key files holding the
    keys `filled` kept in the files, and `database`."""
    for name in CONFIGURED:
        write_keys(folder / "keys" / name, filled.in_files[name])
    settings = gateway_settings(folder, fake).model_dump(mode="json", exclude_defaults=True)
    settings["database"] = database
    settings["worker"] = {"metrics_port": 0, "watch_files": False}
    path = folder / "providers.yaml"
    path.write_text(yaml.safe_dump(settings))
    return str(path)


async def cli(*args: str) -> tuple[int, str, str]:
    """The CLI; its output must never show a key or the database password."""
    code, out, err = await run_cli(*args)
    for text in (out, err):
        assert "sk-orig-" not in text, text
        assert "AIza-orig-" not in text, text
        assert PASSWORD not in text, text
        assert "Traceback" not in text, text
    return code, out, err


async def status_counts(config: str) -> dict[tuple[str, str, str], int]:
    code, out, err = await cli("status", "--json", "--config", config)
    assert code == 0, err
    return {(r["provider"], r["model"], r["status"]): r["count"] for r in json.loads(out)["keys"]}


async def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


async def execute(dsn: str, script: str) -> None:
    """Run `script` (statements separated by semicolons), as psql would."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(script)
    finally:
        await connection.close()


def restore_sql(output: str) -> str:
    """The statements `db upgrade` printed to go back to the original."""
    lines = output.split("To go back to the original llmGateway")[1].splitlines()[1:]
    return "\n".join(line.strip() for line in lines if line.startswith("  "))


def drop_sql(output: str) -> str:
    part = output.split("drop the original's tables (in psql):")[1].splitlines()[1]
    return part.strip()


async def test_upgrade_imports_every_key_and_status_and_can_be_undone(
    tmp_path: Path, fake: FakeUpstream, original_url: str, dsn: str
) -> None:
    filled = await fill(dsn, PROVIDERS, dt.datetime.now(dt.UTC))
    config = write_config(tmp_path, fake, filled, {"url": original_url})
    before = await catalog(dsn)
    every_key = await original_counts(dsn, CONFIGURED)
    in_files = [key for name in CONFIGURED for key in filled.in_files[name]]
    still_in_files = await original_counts(dsn, CONFIGURED, in_files)

    code, out, err = await cli("db", "upgrade", "--config", config)
    assert code == 0, err
    assert "postgresql+asyncpg://postgres:***@" in out
    assert "openai: 1200 keys, 2400 status rows" in out
    assert "gemini: 1000 keys, 1000 status rows" in out
    assert "retired: 150 keys, 150 status rows" in out
    assert "imported inactive" in out
    assert "proxies not imported (1 in its tables)" in out
    assert f"schema up to date ({HEAD})" in out.splitlines()[-1]

    # every table of the original, its indexes, constraints and sequences, renamed
    after = await catalog(dsn)
    names = {name for name, _ in after["relations"]}
    assert {PREFIX + name for name, _ in before["relations"]} <= names
    constraints = set(after["constraints"])
    assert {(PREFIX + t, PREFIX + c) for t, c in before["constraints"]} <= constraints
    assert after["counts"]["keys"] == 2350
    assert after["counts"]["key_status"] == 3550

    # each row as the original had it; times from timestamptz to epoch seconds
    differing = await fetch(
        dsn,
        "SELECT o.key_id FROM llmgw_original_key_model_status o "
        "LEFT JOIN key_status s ON s.key_id = o.key_id AND s.model = o.model_name "
        "WHERE s.key_id IS NULL OR s.status <> o.status "
        "OR s.next_check_at IS DISTINCT FROM extract(epoch FROM o.next_check_time)::float8 "
        "OR s.failing_since IS DISTINCT FROM extract(epoch FROM o.failing_since)::float8 "
        "OR s.last_checked_at IS DISTINCT FROM extract(epoch FROM o.last_checked)::float8 "
        "OR s.status_code IS DISTINCT FROM o.status_code "
        "OR s.latency_ms IS DISTINCT FROM o.response_time::float8 * 1000 "
        "OR s.error_message IS DISTINCT FROM o.error_message "
        "OR s.reason IS DISTINCT FROM nullif(nullif(o.status, 'valid'), 'untested') "
        "OR (s.cooldown_until IS NOT NULL) <> (o.status = 'rate_limited')",
    )
    assert differing == []
    same_keys = await fetch(
        dsn,
        "SELECT count(*) FROM keys k JOIN providers p ON p.id = k.provider_id "
        "JOIN llmgw_original_api_keys o ON o.id = k.id AND o.key_value = k.value "
        "JOIN llmgw_original_providers op ON op.id = o.provider_id AND op.name = p.name",
    )
    assert same_keys[0][0] == 2350
    # one revision for the import: a gateway's delta read sees every row
    revisions = await fetch(
        dsn,
        "SELECT (SELECT revision FROM meta), array_agg(DISTINCT s.revision), "
        "array_agg(DISTINCT k.revision) FROM key_status s JOIN keys k ON k.id = s.key_id",
    )
    assert revisions[0][0] == 1
    assert revisions[0][1] == [1]
    assert revisions[0][2] == [1]
    providers = await fetch(dsn, "SELECT name, provider_type, active FROM providers ORDER BY 1")
    assert [tuple(p) for p in providers] == [
        ("gemini", "gemini", True),
        ("openai", "openai_like", True),
        ("retired", "unknown", False),
    ]

    # the counts the original's metrics showed: every key now, the keys in the files after a sync
    assert await status_counts(config) == every_key
    code, out, err = await cli("db", "upgrade", "--sync", "--config", config)
    assert code == 0, err
    assert "imported earlier, are kept as llmgw_original_*" in out
    assert "openai: keys +0 added, -60 removed" in out
    assert "gemini: keys +0 added, -40 removed" in out
    assert await status_counts(config) == still_in_files

    # a second run is a no-op
    settled = await catalog(dsn)
    code, out, err = await cli("db", "upgrade", "--config", config)
    assert code == 0, err
    assert await catalog(dsn) == settled

    # going back: the printed SQL restores the original's tables exactly as they were
    code, dry, _ = await cli("db", "upgrade", "--dry-run", "--config", config)
    assert code == 0
    await execute(dsn, restore_sql(dry))
    assert await catalog(dsn) == before
    # ... and upgrading again imports again; dropping the renamed tables leaves ours alone
    code, out, err = await cli("db", "upgrade", "--config", config)
    assert code == 0, err
    assert "imported" in out
    await execute(dsn, drop_sql(out))
    code, out, err = await cli("db", "upgrade", "--config", config)
    assert code == 0, err
    assert "original" not in out
    assert await status_counts(config) == every_key


async def test_dry_run_prints_what_it_would_do_and_changes_nothing(
    tmp_path: Path, fake: FakeUpstream, original_url: str, dsn: str
) -> None:
    filled = await fill(dsn, PROVIDERS, dt.datetime.now(dt.UTC))
    config = write_config(tmp_path, fake, filled, {"url": original_url})
    before = await catalog(dsn)
    code, out, err = await cli("db", "upgrade", "--dry-run", "--config", config)
    assert code == 0, err
    assert "tables in schema public (its last key check: 60 min ago): would be imported" in out
    assert "openai: 1200 keys, 2400 status rows" in out
    assert "its tables would be renamed to llmgw_original_<name>" in out
    assert "ALTER TABLE public.llmgw_original_providers RENAME TO providers;" in out
    assert f"dry run: would migrate empty → {HEAD}; nothing changed" in out
    assert await catalog(dsn) == before
    code, out, err = await cli("db", "upgrade", "--dry-run", "--sync", "--config", config)
    assert code == 2
    assert "cannot --sync" in err


async def test_refuses_while_the_original_still_writes_unless_forced(
    tmp_path: Path, fake: FakeUpstream, original_url: str, dsn: str
) -> None:
    filled = await fill(dsn, PROVIDERS[:2], dt.datetime.now(dt.UTC))
    await fetch(dsn, "UPDATE key_model_status SET last_checked = now() - interval '2 minutes' "
                     "WHERE key_id = 7")  # fmt: skip
    config = write_config(tmp_path, fake, filled, {"url": original_url})
    before = await catalog(dsn)
    for command in (["db", "upgrade"], ["worker", "--once"], ["gateway", "--port", "0"]):
        code, out, err = await cli(*command, "--config", config)
        assert code == 1, (command, out, err)
        assert re.search(r"the original llmGateway recorded a key check 1[23]\d s ago", err)
        assert "seems to be still running. Stop its gateway and worker first" in err
        assert "`llmgateway db upgrade --force` imports anyway" in err
        assert "postgresql+asyncpg://postgres:***@" in err
    code, out, err = await cli("db", "upgrade", "--dry-run", "--config", config)
    assert code == 0, err
    assert "would not be imported:" in out
    assert "seems to be still running" in out
    assert await catalog(dsn) == before
    code, out, err = await cli("db", "upgrade", "--force", "--config", config)
    assert code == 0, err
    assert re.search(r"\(its last key check: 1[23]\d s ago\): imported", out)
    assert "openai: 1200 keys" in out


async def test_still_writing_means_a_check_within_ten_minutes(dsn: str, pg_database: str) -> None:
    assert STILL_WRITING_SEC == 600
    await fill(dsn, [Provider("openai", "sk-orig-openai-", 3, ("gpt-4o-mini",))], _now())
    newest = (await fetch(dsn, "SELECT extract(epoch FROM max(last_checked))::float8 "
                               "FROM key_model_status"))[0][0]  # fmt: skip
    adoption = Adoption({"openai": ("openai_like", True)})
    clock = ManualClock(newest + STILL_WRITING_SEC - 1)
    async with await Store.open(pg_database, clock=clock) as store:
        with pytest.raises(StillWritingError, match="599 s ago"):
            await store.migrate(adoption)
        with pytest.raises(OriginalDatabaseError, match="import them with `llmgateway db upgrade`"):
            await store.upgrade()  # without the config's providers: not imported
        clock.advance(2)
        migration = await store.migrate(adoption)
    assert migration.original is not None
    assert migration.original.state is State.IMPORTED
    assert [p.keys for p in migration.original.providers] == [3]


async def test_a_forced_import_waits_only_so_long_for_tables_the_original_uses(
    dsn: str, pg_database: str
) -> None:
    await fill(dsn, [Provider("openai", "sk-orig-openai-", 3, ("gpt-4o-mini",))], _now())
    adoption = Adoption({"openai": ("openai_like", True)}, force=True, lock_wait_sec=0.3)
    before = await catalog(dsn)
    original = await asyncpg.connect(dsn)  # the original, in the middle of a query
    try:
        await original.execute("BEGIN; LOCK TABLE key_model_status IN ACCESS SHARE MODE")
        async with await Store.open(pg_database) as store:
            with pytest.raises(OriginalDatabaseError, match=r"in use .*waited 0.3 s.*stop the"):
                await asyncio.wait_for(store.migrate(adoption), timeout=30)
        await original.execute("ROLLBACK")
    finally:
        await original.close()
    assert await catalog(dsn) == before
    async with await Store.open(pg_database) as store:  # once the original let go
        migration = await store.migrate(adoption)
    assert migration.original is not None
    assert migration.original.state is State.IMPORTED


@pytest.mark.parametrize("fault", ["duplicate key", "migration fails"])
async def test_a_failure_anywhere_leaves_the_original_untouched(
    fault: str, tmp_path: Path, fake: FakeUpstream, original_url: str, dsn: str
) -> None:
    filled = await fill(dsn, PROVIDERS[:2], _now())
    config = write_config(tmp_path, fake, filled, {"url": original_url})
    if fault == "duplicate key":  # a row our schema refuses, found after the renames
        await fetch(dsn, "ALTER TABLE api_keys DROP CONSTRAINT api_keys_provider_id_key_value_key")
        await fetch(dsn, "INSERT INTO api_keys (provider_id, key_value) "
                         "SELECT provider_id, key_value FROM api_keys WHERE id = 5")  # fmt: skip
    else:  # a migration's table (0006's) cannot be created
        await fetch(dsn, _REFUSE_LIMIT_MEMBERS)
        await fetch(dsn, "CREATE EVENT TRIGGER refuse ON ddl_command_end "
                         "WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION refuse()")  # fmt: skip
    before = await catalog(dsn)
    code, out, err = await cli("db", "upgrade", "--config", config)
    assert code == 1, out
    assert len(err.strip().splitlines()) == 1, err
    if fault == "duplicate key":
        assert "importing the original llmGateway's rows failed (UniqueViolationError" in err
        assert "nothing was changed: its tables keep their names and rows" in err
    else:
        assert "injected failure" in err
    assert await catalog(dsn) == before
    assert (await fetch(dsn, "SELECT to_regclass('alembic_version')"))[0][0] is None
    # once the cause is gone, the upgrade goes through
    if fault == "duplicate key":
        await fetch(dsn, "DELETE FROM api_keys WHERE id > 2200")
    else:
        await fetch(dsn, "DROP EVENT TRIGGER refuse")
    code, out, err = await cli("db", "upgrade", "--config", config)
    assert code == 0, err
    assert "openai: 1200 keys" in out


_REFUSE_LIMIT_MEMBERS = """
CREATE FUNCTION refuse() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands()
               WHERE object_identity = 'public.limit_members') THEN
        RAISE EXCEPTION 'injected failure';
    END IF;
END $$
"""


async def test_a_gateway_never_serves_a_key_the_original_found_bad_before_its_next_check(
    tmp_path: Path, fake: FakeUpstream, original_url: str, dsn: str
) -> None:
    now = _now()
    filled = await fill(dsn, PROVIDERS, now)
    config = write_config(tmp_path, fake, filled, {"url": original_url})
    code, _, err = await cli("db", "upgrade", "--sync", "--config", config)
    assert code == 0, err
    invalid = filled.keys_with("openai", INVALID) | filled.keys_with("gemini", INVALID)
    assert len(invalid) > 400
    held = _held(filled, "openai", "gpt-4o-mini", now) | _held(filled, "gemini", SHARED, now)
    settings = Settings.model_validate(yaml.safe_load(Path(config).read_text()))
    async with start_gateway(settings) as running, aiohttp.ClientSession() as session:
        answers = await asyncio.gather(
            *(_ask_openai(session, running.url) for _ in range(300)),
            *(_ask_gemini(session, running.url) for _ in range(200)),
        )
    assert answers.count(200) == 500
    served = set(fake.calls_by_key())
    assert len(served & set(filled.in_files["openai"])) > 100
    assert len(served & set(filled.in_files["gemini"])) > 80
    assert served.isdisjoint(invalid)
    assert served.isdisjoint(held)


def _held(filled: Filled, provider: str, model: str, now: dt.datetime) -> set[str]:
    """Keys of `provider` the original would not serve for `model` before their next check:
    rate limited, out of quota or without the model, with the check still ahead."""
    blocking = {"rate_limited", "no_quota", "no_model"}
    return {
        key
        for key in filled.in_files[provider]
        for row_model, status, next_check in filled.rows[(provider, key)]
        if row_model == model and status in blocking and next_check > now
    }


async def _ask_openai(session: aiohttp.ClientSession, url: str) -> int:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {OPENAI_TOKEN}"}
    async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as answer:
        await answer.read()
        return answer.status


async def _ask_gemini(session: aiohttp.ClientSession, url: str) -> int:
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    path = f"{url}/v1beta/models/gemini-2.5-flash:generateContent"
    async with session.post(path, json=body, headers={"x-goog-api-key": GEMINI_TOKEN}) as answer:
        await answer.read()
        return answer.status


async def test_the_keepers_next_round_probes_only_what_is_due(
    tmp_path: Path, fake: FakeUpstream, original_url: str, dsn: str
) -> None:
    now = _now()
    filled = await fill(dsn, PROVIDERS, now)
    config = write_config(tmp_path, fake, filled, {"url": original_url})
    code, _, err = await cli("db", "upgrade", "--sync", "--config", config)
    assert code == 0, err
    due_keys, due_rows = filled.due(now, CONFIGURED)
    assert 500 < len(due_keys) < 2000
    settings = Settings.model_validate(yaml.safe_load(Path(config).read_text()))
    async with await Store.configured(settings.database) as store:
        keeper = Keeper(settings, store, sleep=_no_pause)  # batch_delay_sec passes at once
        try:
            summary = await keeper.probe_round()
        finally:
            await keeper.upstream.close()
    assert summary.due == due_rows
    assert set(fake.calls_by_key()) == due_keys


async def _no_pause(_: float) -> None:
    pass


async def test_databases_without_the_original_are_unaffected(
    db_url: str, tmp_path: Path, fake: FakeUpstream
) -> None:
    config = write_config(tmp_path, fake, _no_keys(), {"url": db_url})
    code, out, err = await cli("db", "upgrade", "--dry-run", "--config", config)
    assert code == 0, err
    assert "original" not in out
    if db_url.startswith("sqlite"):
        assert "dry run: would create" in out
        assert not Path(make_url(db_url).database or "").exists()
    else:
        assert f"dry run: would migrate empty → {HEAD}; nothing changed" in out
        assert await fetch(libpq_dsn(db_url), _PUBLIC_TABLES) == []
    code, out, err = await cli("db", "upgrade", "--config", config)
    assert code == 0, err
    assert len(out.splitlines()) == 1
    assert out.rstrip().endswith(f"schema up to date ({HEAD})")
    code, out, err = await cli("db", "upgrade", "--dry-run", "--config", config)
    assert code == 0, err
    assert f"dry run: schema up to date ({HEAD}); nothing changed" in out


_PUBLIC_TABLES = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"


def _no_keys() -> Filled:
    return Filled(in_files={name: [] for name in CONFIGURED})


async def test_a_providers_table_of_something_else_is_refused_clearly(
    tmp_path: Path, fake: FakeUpstream, original_url: str, dsn: str
) -> None:
    await fetch(dsn, "CREATE TABLE providers (id serial PRIMARY KEY, label text)")
    config = write_config(tmp_path, fake, _no_keys(), {"url": original_url})
    code, _out, err = await cli("db", "upgrade", "--config", config)
    assert code == 1
    assert "has a table `providers` that is neither llmgateway's nor the original" in err
    assert "give llmgateway its own database or schema" in err


async def test_tables_left_half_restored_are_refused_clearly(
    tmp_path: Path, fake: FakeUpstream, original_url: str, dsn: str
) -> None:
    await create(dsn)
    config = write_config(tmp_path, fake, _no_keys(), {"url": original_url})
    code, out, err = await cli("db", "upgrade", "--config", config)
    assert code == 0, err
    # the restore, with alembic_version left behind
    await execute(dsn, restore_sql(out).replace(", public.alembic_version;", ";"))
    code, out, err = await cli("db", "upgrade", "--config", config)
    assert code == 1
    assert "drop alembic_version too (DROP TABLE alembic_version;)" in err


@pytest.mark.parametrize("route", routes("pgbouncer", "pgbouncer+direct"), indirect=True)
async def test_the_import_goes_with_the_migrations_through_a_pooler(
    route: Route, tmp_path: Path, fake: FakeUpstream, pg_database: str, dsn: str
) -> None:
    filled = await fill(dsn, PROVIDERS[:2], _now())
    config = write_config(tmp_path, fake, filled, route.database(pg_database))
    counts = await original_counts(dsn, CONFIGURED)
    code, out, err = await cli("db", "upgrade", "--config", config)
    assert code == 0, err
    assert "openai: 1200 keys, 2400 status rows" in out
    assert await status_counts(config) == counts


def _now() -> dt.datetime:
    return dt.datetime.fromtimestamp(time.time(), dt.UTC)
