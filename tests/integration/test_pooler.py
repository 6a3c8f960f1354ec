"""llmgateway behind a real PgBouncer in transaction mode (tests/pgbouncer.py): what serves the
store is found from the server's answers, statements are unnamed where named ones would collide,
and every command works through the pooler, with and without `database.direct_url`; a session
pooler, once declared, keeps named statements and notices."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from tests.helpers import (
    OPENAI_TOKEN,
    eventually,
    free_port,
    gateway_settings,
    libpq_dsn,
    run_cli,
    start_gateway,
    wait_ready,
)
from tests.pgbouncer import (
    PREPARED_STATEMENTS,
    SERVER_POOL_SIZE,
    Route,
    require_pgbouncer,
    routes,
    start_pgbouncer,
)

from llmgateway.config.settings import DatabaseSettings, Pooler
from llmgateway.store import Store, connect, pooler
from llmgateway.store.notify import Kind, Listener, Notice, notify
from llmgateway.store.pooler import Mode, find_mode
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream

pytestmark = pytest.mark.postgres
CLIENTS = 3 * SERVER_POOL_SIZE  # client connections sharing the pooler's server connections
COLLISION = r"prepared statement \S+ (already exists|does not exist)"


@pytest.mark.parametrize("route", routes(), indirect=True)
async def test_what_serves_the_store_is_found_from_the_servers_answers(
    route: Route, pg_database: str
) -> None:
    url = connect.async_url(route.url(pg_database))
    found = await find_mode(url, Pooler.AUTO)
    assert found is (Mode.TRANSACTION if route.pooled else Mode.DIRECT)
    # what the operator declares wins (pgbouncer_session: named statements through it)
    assert await find_mode(url, Pooler.PGBOUNCER_SESSION) is Mode.SESSION
    async with await Store.open(route.url(pg_database)) as store:
        assert store.plan is not None
        assert store.plan.mode is found
        assert store.plan.found


async def test_an_unreachable_server_is_taken_for_a_transaction_pooler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = connect.async_url(f"postgresql://postgres:pw-never-logged@127.0.0.1:{free_port()}/x")
    with caplog.at_level(logging.WARNING):
        assert await find_mode(url, Pooler.AUTO) is None
        store = await Store.open(url)
    async with store:
        assert store.plan is not None
        assert (store.plan.mode, store.plan.found) == (Mode.TRANSACTION, False)
        assert store.plan.describe() == "a transaction pooler (assumed)"
    assert "assuming a transaction pooler" in caplog.text
    assert "pw-never-logged" not in caplog.text


async def _load(engine: AsyncEngine) -> None:
    """`CLIENTS` connections at once, each reading in transactions and outside them."""

    async def one(n: int) -> None:
        for i in range(10):
            async with engine.connect() as conn:
                assert await conn.scalar(sa.select(sa.literal(n) + i)) == n + i
                streamed = await conn.stream(sa.select(sa.func.generate_series(1, 30)))
                assert len([row async for row in streamed]) == 30
            async with engine.connect() as conn:
                auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                assert await auto.scalar(sa.select(sa.literal(i) * 2)) == 2 * i

    await asyncio.gather(*(one(n) for n in range(CLIENTS)))


@pytest.mark.parametrize("route", routes("pgbouncer"), indirect=True)
async def test_statements_through_a_transaction_pooler_are_unnamed(
    route: Route, pg_database: str
) -> None:
    url = route.url(pg_database)
    async with await Store.open(url, pool_size=CLIENTS) as store:
        assert store.plan is not None
        assert store.plan.mode is Mode.TRANSACTION
        await _load(store.engine)
        await store.upgrade()  # migrations too: one transaction, a transaction-scoped lock
        assert await store.revision() == 0
    # the control: named statements (asyncpg's and SQLAlchemy's caches) collide there, unless
    # the pooler tracks protocol-level prepared statements itself (PgBouncer >= 1.21 with
    # max_prepared_statements), where they work too
    named = connect.create_engine(connect.async_url(url), CLIENTS, None, named_statements=True)
    try:
        if PREPARED_STATEMENTS:
            await _load(named)
        else:
            with pytest.raises(DBAPIError, match=COLLISION):
                await _load(named)
    finally:
        await named.dispose()


def _config(folder: Path, fake: FakeUpstream, database: dict[str, Any]) -> Path:
    write_keys(folder / "keys" / "openai", ["sk-good-openai-000000000001"])
    write_keys(folder / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    settings = gateway_settings(folder, fake).model_dump(mode="json", exclude_defaults=True)
    settings["database"] = database
    settings["worker"] = {"metrics_port": 0, "watch_files": False}
    path = folder / "providers.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.mark.parametrize("route", routes("pgbouncer", "pgbouncer+direct"), indirect=True)
async def test_every_command_works_through_the_pooler(
    route: Route, pg_database: str, tmp_path: Path, fake: FakeUpstream
) -> None:
    config = str(_config(tmp_path, fake, route.database(pg_database)))
    for command in (
        ["db", "upgrade", "--sync"],
        ["worker", "--once"],
        ["status", "--json"],
        ["breaker", "reset", "openai"],
    ):
        code, out, err = await run_cli(*command, "--config", config)
        assert code == 0, f"{command}: {out}\n{err}"
        assert "Traceback" not in err
    code, out, _ = await run_cli("status", "--config", config)
    assert "valid" in out
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmgateway", "serve", "--port", str(port), "--config", config,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_ready(url, process, within=30)
        assert await _chat(url) == 200
        await eventually(lambda: fake.calls("AIza-good-gemini-00000000001") >= 1, within=15)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    text = output.decode()
    assert process.returncode == 0, text
    assert "Traceback" not in text
    assert ("no store notices" in text) is (route.name == "pgbouncer")


async def _chat(url: str) -> int:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {OPENAI_TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as response,
    ):
        await response.read()
        return response.status


@pytest.mark.pgbouncer
async def test_a_declared_session_pooler_keeps_named_statements_and_notices(
    pg_database: str,
) -> None:
    bouncer = await asyncio.to_thread(start_pgbouncer, "session")
    try:
        url = bouncer.url(pg_database)
        # not declared: a pooler is taken for transaction pooling, which is safe here too
        async with await Store.open(url) as store:
            assert store.plan is not None
            assert store.plan.mode is Mode.TRANSACTION
            assert store.plan.session_target() is None  # no notices: the gateway would poll
        async with await Store.open(url, pooler=Pooler.PGBOUNCER_SESSION) as store:
            await store.upgrade()
            assert store.plan is not None
            assert store.plan.mode is Mode.SESSION
            await _load(store.engine)  # named statements: each client keeps its server
            target = store.plan.session_target()
            assert target is not None
            heard: list[Notice] = []
            listener = Listener(target[0], heard.append, target[1])
            task = asyncio.create_task(listener.run())
            try:
                await eventually(listener.listening.is_set, what="listening through the pooler")
                await notify(store.engine, Kind.KEYS, "through")
                await eventually(lambda: Notice("keys", 0, "through") in heard)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await asyncio.to_thread(bouncer.stop)


@pytest.mark.parametrize("route", routes("pgbouncer"), indirect=True)
async def test_an_unreachable_direct_url_is_named_masked(
    route: Route, pg_database: str, tmp_path: Path, fake: FakeUpstream
) -> None:
    direct = f"postgresql://gw:pw-never-shown@127.0.0.1:{free_port()}/llm"
    database = {"url": route.url(pg_database), "direct_url": direct}
    code, out, err = await run_cli(
        "db", "upgrade", "--config", str(_config(tmp_path, fake, database))
    )
    assert code == 1, out + err
    assert "pw-never-shown" not in out + err
    assert "(direct_url postgresql+asyncpg://gw:***@127.0.0.1:" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("route", routes("direct", "pgbouncer+direct"), indirect=True)
async def test_a_gateway_holds_its_pool_one_listener_and_one_limits_connection(
    route: Route, pg_database: str, tmp_path: Path, fake: FakeUpstream
) -> None:
    write_keys(tmp_path / "keys" / "openai", [f"sk-good-openai-{i:012d}" for i in range(4)])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    policy = {"key_limits": {"max_concurrent": 50}}  # the postgres limits backend
    settings = gateway_settings(tmp_path, fake, gateway_policy=policy)
    database = DatabaseSettings.model_validate(route.database(pg_database, pool_size=2))
    settings = settings.model_copy(update={"database": database})
    observer = await asyncpg.connect(libpq_dsn(pg_database))
    query = """
        SELECT coalesce(application_name, ''), count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY 1
    """
    seen: list[dict[str, int]] = []
    try:
        async with start_gateway(settings) as gateway:
            listening = gateway.gateway.readiness.listening
            assert listening is not None
            await eventually(listening.is_set, what="the store listener listening")
            for _ in range(5):  # load, findings to write, refreshes woken by their notices
                answers = await asyncio.gather(*(_chat(gateway.url) for _ in range(20)))
                assert set(answers) == {200}
                seen.append(dict(await observer.fetch(query)))
    finally:
        await observer.close()
    direct = {"llmgateway-listener": 1, "llmgateway-limits": 1}
    for counts in seen:
        assert {name: counts.get(name) for name in direct} == direct
        others = sum(n for name, n in counts.items() if name not in direct)
        # PostgreSQL itself: the pool; through PgBouncer: its server connections for the pool
        assert others <= (2 if not route.pooled else SERVER_POOL_SIZE), counts


async def test_migrations_on_direct_url_go_to_the_stores_schema(pg_database: str) -> None:
    schema = "gateway_state"
    admin = await asyncpg.connect(libpq_dsn(pg_database))
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        async with await Store.open(pg_database, schema=schema, direct_url=pg_database) as store:
            await store.upgrade()  # on its own connection to direct_url
            assert await store.revision() == 0  # read through the pooled connections
        found = await admin.fetchval("SELECT to_regclass($1)", f'"{schema}".alembic_version')
        assert found is not None
        assert await admin.fetchval("SELECT to_regclass('public.alembic_version')") is None
    finally:
        await admin.close()


async def test_a_server_that_logs_in_but_never_answers_is_waited_for_a_bounded_time(
    pg_database: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    require_pgbouncer()
    bouncer = await asyncio.to_thread(start_pgbouncer)
    name = make_url(pg_database).database
    admin = ["psql", "-h", "127.0.0.1", "-p", str(bouncer.port), "-U", "postgres", "pgbouncer"]
    try:
        warm = await asyncpg.connect(libpq_dsn(bouncer.url(pg_database)), statement_cache_size=0)
        await warm.close()  # PgBouncer now knows the server's parameters: logins need no server
        # paused, PgBouncer still takes logins but holds every query: a server gone silent
        subprocess.run([*admin, "-c", f"PAUSE {name}"], check=True, capture_output=True)
        monkeypatch.setattr(pooler, "DETECT_TIMEOUT_SEC", 0.5)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING):
            assert await find_mode(make_url(bouncer.url(pg_database)), Pooler.AUTO) is None
        assert time.monotonic() - started < 5
        assert "assuming a transaction pooler (unnamed statements)" in caplog.text
    finally:
        subprocess.run([*admin, "-c", f"RESUME {name}"], check=False, capture_output=True)
        await asyncio.to_thread(bouncer.stop)
