"""Fixtures and hooks shared by every test: the real SQLite file, PostgreSQL and Redis, and the
markers given by folder.

`store` and `db_url` run each test twice, on `sqlite` (a file in the test's temp folder) and on
`postgresql` (marked `postgres`; `$LLMGATEWAY_TEST_PG_URL`, default the local server's `test`
database). Each PostgreSQL test gets a fresh schema (`store`) or a fresh database (`db_url`),
dropped afterwards, so runs never see each other's data and the server is left clean.
`redis_prefix` gives a test its own key prefix on `$LLMGATEWAY_TEST_REDIS_URL`.

Whether the servers are there is decided in one place, `require_server()`, for every test marked
`postgres` or `redis` (tests using `redis_prefix` get `redis` by themselves): a server that
cannot be reached skips the test with the reason, unless `LLMGATEWAY_REQUIRE_PG=1` or
`LLMGATEWAY_REQUIRE_REDIS=1` (CI), which makes it fail instead. Tests under tests/e2e,
tests/chaos, tests/soak and tests/security get the marker of their folder, so `-m "not soak"`
and the like select by kind.
"""

from __future__ import annotations

import asyncio
import functools
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from llmgateway.limits import masked_redis_url
from llmgateway.store import Store

PG_URL = os.environ.get(
    "LLMGATEWAY_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("LLMGATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
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


async def _pg_problem() -> str | None:
    try:
        connection = await asyncpg.connect(_libpq_dsn(PG_URL), timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await connection.close()
    return None


def _redis_problem() -> str | None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except (OSError, redis.RedisError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


Server = Literal["postgres", "redis"]


@functools.cache
def server_problem(server: Server) -> str | None:
    """None when the test server answers, else why not (checked once per session)."""
    if server == "postgres":
        return asyncio.run(_pg_problem())
    return _redis_problem()


def require_server(server: Server) -> None:
    """Skip the running test when `server` cannot be reached, or fail it when the environment
    requires that server (`LLMGATEWAY_REQUIRE_PG=1`, `LLMGATEWAY_REQUIRE_REDIS=1`)."""
    problem = server_problem(server)
    if problem is None:
        return
    if server == "postgres":
        name, url, variable = "PostgreSQL", repr(make_url(PG_URL)), "LLMGATEWAY_REQUIRE_PG"
    else:
        name, url, variable = "Redis", masked_redis_url(REDIS_URL), "LLMGATEWAY_REQUIRE_REDIS"
    message = f"{name} at {url} unreachable ({problem})"
    if os.environ.get(variable) == "1":
        pytest.fail(f"{message}; {variable}=1 requires it", pytrace=False)
    pytest.skip(message)


FOLDER_MARKERS = {"e2e": "e2e", "chaos": "chaos", "soak": "soak", "security": "security"}
TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks each test by its folder (tests/soak -> `soak`, ...) and marks `redis` the tests
    that use `redis_prefix`, so `-m` can select them."""
    for item in items:
        try:
            folder = item.path.relative_to(TESTS).parts[0]
        except ValueError:
            folder = ""
        marker = FOLDER_MARKERS.get(folder)
        if marker is not None and item.get_closest_marker(marker) is None:
            item.add_marker(marker)
        uses = getattr(item, "fixturenames", ())
        if "redis_prefix" in uses and item.get_closest_marker("redis") is None:
            item.add_marker("redis")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture is set up: a test marked `postgres` or `redis` needs that server."""
    for server in ("postgres", "redis"):
        if item.get_closest_marker(server) is not None:
            require_server(server)


@pytest.fixture(params=DATABASES)
def db_kind(request: pytest.FixtureRequest) -> str:
    """`sqlite` or `postgresql`; the latter skipped (or failed, in CI) without a server."""
    kind: str = request.param
    if kind == "postgresql":
        require_server("postgres")  # also when a test parametrizes this without the marker
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


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A Redis key prefix of this test's own (`$LLMGATEWAY_TEST_REDIS_URL`, default the local
    server); every key under it is deleted afterwards. Without a server the test is skipped
    (or failed, under `LLMGATEWAY_REQUIRE_REDIS=1`)."""
    import redis.asyncio as aioredis

    require_server("redis")
    name = f"llmgw-test-{uuid.uuid4().hex[:12]}"
    client = aioredis.Redis.from_url(REDIS_URL)
    yield name
    keys = [key async for key in client.scan_iter(match=f"{name}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
