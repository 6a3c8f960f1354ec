"""Database fixtures shared by every test: a real SQLite file and the real PostgreSQL.

`store` and `db_url` run each test twice, on `sqlite` (a file in the test's temp folder) and on
`postgresql` (marked `postgres`; `$LLMGATEWAY_TEST_PG_URL`, default the local server's `test`
database). Each PostgreSQL test gets a fresh schema (`store`) or a fresh database (`db_url`),
dropped afterwards, so runs never see each other's data and the server is left clean. When the
server cannot be reached those variants are skipped, unless `LLMGATEWAY_REQUIRE_PG=1` (CI),
which makes them fail instead.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from llmgateway.store import Store

PG_URL = os.environ.get(
    "LLMGATEWAY_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@dataclass(slots=True)
class ManualClock:
    """A clock for the store that only moves when a test moves it."""

    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    """The store's clock in `store` tests (epoch seconds, moved by hand)."""
    return ManualClock()


def _libpq_dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


async def _can_connect(url: str) -> str | None:
    try:
        connection = await asyncpg.connect(_libpq_dsn(url), timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await connection.close()
    return None


@pytest.fixture(scope="session")
def pg_unreachable() -> str | None:
    """None when the test PostgreSQL answers, else why not (checked once per session)."""
    return asyncio.run(_can_connect(PG_URL))


@pytest.fixture(params=DATABASES)
def db_kind(request: pytest.FixtureRequest, pg_unreachable: str | None) -> str:
    """`sqlite` or `postgresql`; the latter skipped (or failed, in CI) without a server."""
    kind: str = request.param
    if kind == "postgresql" and pg_unreachable is not None:
        message = f"PostgreSQL at {make_url(PG_URL)!r} unreachable ({pg_unreachable})"
        if os.environ.get("LLMGATEWAY_REQUIRE_PG") == "1":
            pytest.fail(message + "; LLMGATEWAY_REQUIRE_PG=1 requires it")
        pytest.skip(message)
    return kind


@pytest.fixture
async def store(db_kind: str, tmp_path: Path, clock: ManualClock) -> AsyncIterator[Store]:
    """A migrated, empty `Store` on a fresh SQLite file or a fresh PostgreSQL schema,
    stamping times from the `clock` fixture."""
    if db_kind == "sqlite":
        store = await Store.open(f"sqlite:///{tmp_path / 'store.db'}", clock=clock)
        await store.upgrade()
        yield store
        await store.close()
        return
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_libpq_dsn(PG_URL))
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        store = await Store.open(PG_URL, schema=schema, clock=clock)
        try:
            await store.upgrade()
            yield store
        finally:
            await store.close()
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


@pytest.fixture
async def db_url(db_kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of an empty database: a SQLite file path (not created yet), or a fresh PostgreSQL
    database dropped after the test."""
    if db_kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'llmgateway.db'}"
        return
    name = f"llmgateway_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_libpq_dsn(PG_URL))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


REDIS_URL = os.environ.get("LLMGATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A Redis key prefix of this test's own (`$LLMGATEWAY_TEST_REDIS_URL`, default the local
    server); every key under it is deleted afterwards. A missing server fails the test."""
    import redis.asyncio as aioredis

    name = f"llmgw-test-{uuid.uuid4().hex[:12]}"
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as error:
        await client.aclose()
        pytest.fail(f"Redis at {REDIS_URL} unreachable: {type(error).__name__}")
    yield name
    keys = [key async for key in client.scan_iter(match=f"{name}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
