"""Fixtures and hooks shared by every test: the real SQLite file, PostgreSQL and Redis, the fake
upstream and the real gateway on it, and the markers given by folder. Helpers that are not
fixtures (waiting, the CLI, settings builders) are in tests/helpers.py.

`store` and `db_url` run each test twice, on `sqlite` (a file in the test's temp folder) and on
`postgresql` (marked `postgres`; `$LLMGATEWAY_TEST_PG_URL`, default the local server's `test`
database). Each PostgreSQL test gets a fresh schema (`store`) or a fresh database (`db_url`,
`pg_database`), dropped afterwards, so runs never see each other's data and the server is left
clean. `redis_prefix` gives a test its own key prefix on `$LLMGATEWAY_TEST_REDIS_URL`.

Whether the servers are there is decided in one place, `require_server()`, for every test marked
`postgres` or `redis` (tests using `redis_prefix` get `redis` by themselves): a server that
cannot be reached skips the test with the reason, unless `LLMGATEWAY_REQUIRE_PG=1` or
`LLMGATEWAY_REQUIRE_REDIS=1` (CI), which makes it fail instead. Tests under tests/e2e,
tests/chaos, tests/soak, tests/security and tests/browser get the marker of their folder, so
`-m "not soak"` and the like select by kind.

`socks_proxy` starts real SOCKS5 servers (microsocks, tests/microsocks.py); a test using it is
marked `microsocks`, skipped without the program unless `LLMGATEWAY_REQUIRE_MICROSOCKS=1` (CI).

`fake` is the fake upstream (`FakeUpstream(**fake_options)`; a module overrides `fake_options`
to change it); `gateway` starts the real gateway on it (`async with gateway(...) as url:`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from llmgateway.limits import masked_redis_url
from llmgateway.store import Store
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import (
    PG_URL,
    REDIS_URL,
    GatewayFactory,
    ManualClock,
    gateway_settings,
    libpq_dsn,
    start_gateway,
)
from tests.microsocks import MicroSocks, require_microsocks, start_microsocks
from tests.pgbouncer import PgBouncer, Route, require_pgbouncer, start_pgbouncer

# The suite reads no environment file of its working directory (a developer's own .env would
# change what it tests): set at import, so every CLI run in a test, in this process or a child
# process, reads none unless the test names one with --env-file.
os.environ["LLMGATEWAY_DOTENV"] = "0"


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """Put the root logger back as it was after each test: a command run in-process
    (`CliRunner`) configures logging for real, and its level (ERROR for `status`) would
    otherwise hide the warnings that later tests read through `caplog`."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)


DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture
def clock() -> ManualClock:
    """The store's clock in `store` tests (epoch seconds, moved by hand)."""
    return ManualClock()


async def _pg_problem() -> str | None:
    try:
        connection = await asyncpg.connect(libpq_dsn(PG_URL), timeout=3)
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
    """None when the test server answers, else why not (checked once per session, from a
    hook or from a fixture, whose event loop may be running: the check has a thread and a
    loop of its own)."""
    if server == "postgres":
        with concurrent.futures.ThreadPoolExecutor(1) as thread:
            return thread.submit(asyncio.run, _pg_problem()).result()
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


FOLDER_MARKERS = {
    "e2e": "e2e",
    "chaos": "chaos",
    "soak": "soak",
    "security": "security",
    "browser": "browser",
}
TESTS = Path(__file__).parent


SERVER_FIXTURES: dict[str, tuple[str, ...]] = {
    "redis_prefix": ("redis",),
    "pg_database": ("postgres",),
    "pgbouncer": ("postgres", "pgbouncer"),
    "socks_proxy": ("microsocks",),
}
"""The fixtures that reach a server, and the markers a test using one gets by itself."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks each test by its folder (tests/soak -> `soak`, ...), and by the servers its
    fixtures reach (`redis_prefix` -> `redis`, `pg_database` -> `postgres`, `pgbouncer` ->
    both `postgres` and `pgbouncer`), so `-m` can select them and a missing server skips them
    before any fixture is set up."""
    for item in items:
        try:
            folder = item.path.relative_to(TESTS).parts[0]
        except ValueError:
            folder = ""
        marker = FOLDER_MARKERS.get(folder)
        if marker is not None and item.get_closest_marker(marker) is None:
            item.add_marker(marker)
        uses = getattr(item, "fixturenames", ())
        for fixture, markers in SERVER_FIXTURES.items():
            for server in markers if fixture in uses else ():
                if item.get_closest_marker(server) is None:
                    item.add_marker(server)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture is set up: a test marked `postgres` or `redis` needs that server, and
    one marked `pgbouncer` PostgreSQL and the pgbouncer program."""
    pooled = item.get_closest_marker("pgbouncer") is not None
    for server in ("postgres", "redis"):
        if item.get_closest_marker(server) is not None or (pooled and server == "postgres"):
            require_server(server)
    if pooled:
        require_pgbouncer()
    if item.get_closest_marker("microsocks") is not None:
        require_microsocks()


@pytest.fixture(scope="session")
def pgbouncer() -> Iterator[PgBouncer]:
    """A real PgBouncer in transaction mode in front of the test PostgreSQL, one per session
    (skipped without the pgbouncer program, or failed under LLMGATEWAY_REQUIRE_PGBOUNCER=1)."""
    require_server("postgres")
    require_pgbouncer()
    bouncer = start_pgbouncer()
    yield bouncer
    bouncer.stop()


@pytest.fixture
def socks_proxy() -> Iterator[Callable[..., MicroSocks]]:
    """Starts real SOCKS5 servers (microsocks, tests/microsocks.py) on free loopback ports:
    `socks_proxy(user=..., password=..., bind=...)`; all are killed after the test (skipped
    without the program, or failed under LLMGATEWAY_REQUIRE_MICROSOCKS=1)."""
    require_microsocks()
    started: list[MicroSocks] = []

    def start(**options: str | None) -> MicroSocks:
        server = start_microsocks(**options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def route(request: pytest.FixtureRequest) -> Route:
    """How the test reaches PostgreSQL, from `@pytest.mark.parametrize("route", routes(),
    indirect=True)` (tests/pgbouncer.py): directly, or through the session's PgBouncer."""
    name: str = getattr(request, "param", "direct")
    if name == "direct":
        return Route(name, None)
    return Route(name, request.getfixturevalue("pgbouncer"))


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
    admin = await asyncpg.connect(libpq_dsn(PG_URL))
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


@contextlib.asynccontextmanager
async def _fresh_pg_database() -> AsyncIterator[str]:
    """A new PostgreSQL database on the test server, dropped afterwards; yields its URL."""
    name = f"llmgateway_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(libpq_dsn(PG_URL))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def db_url(db_kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of an empty database: a SQLite file path (not created yet), or a fresh PostgreSQL
    database dropped after the test."""
    if db_kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'llmgateway.db'}"
        return
    async with _fresh_pg_database() as url:
        yield url


@pytest.fixture
async def pg_database() -> AsyncIterator[str]:
    """The URL of a fresh PostgreSQL database, dropped after the test (which needs the server:
    skipped without it, or failed under `LLMGATEWAY_REQUIRE_PG=1`)."""
    require_server("postgres")
    async with _fresh_pg_database() as url:
        yield url


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


@pytest.fixture
def fake_options() -> dict[str, Any]:
    """Keyword arguments of the `fake` fixture's `FakeUpstream`; a test module overrides this
    fixture to change them."""
    return {}


@pytest.fixture
async def fake(fake_options: dict[str, Any]) -> AsyncIterator[FakeUpstream]:
    """The fake upstream provider, serving on a loopback port for the test."""
    async with FakeUpstream(**fake_options) as upstream:
        yield upstream


@pytest.fixture
def started() -> list[Any]:
    """The apps the `gateway` fixture started, newest last (for looking inside them)."""
    return []


@pytest.fixture
def gateway(tmp_path: Path, fake: FakeUpstream, started: list[Any]) -> GatewayFactory:
    """`async with gateway(openai=[keys], gemini=[keys], gateway_section, **provider) as url:`
    runs the real gateway on `fake` with `gateway_settings` (one good key each by default)."""

    @contextlib.asynccontextmanager
    async def start(
        openai: list[str] | None = None,
        gemini: list[str] | None = None,
        gateway_section: dict[str, Any] | None = None,
        **extra: Any,
    ) -> AsyncIterator[str]:
        write_keys(tmp_path / "keys" / "openai", openai or ["sk-good-openai-000000000001"])
        write_keys(tmp_path / "keys" / "gemini", gemini or ["AIza-good-gemini-00000000001"])
        settings = gateway_settings(tmp_path, fake, gateway_section, **extra)
        async with start_gateway(settings, seed=7) as running:
            started.append(running.app)
            yield running.url

    return start
