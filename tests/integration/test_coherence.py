"""Start-up of many processes at once, and store notices on the real PostgreSQL: where the
listener connects (never through a transaction pooler), how it finds a lost registration, and
what `/readyz` says of it."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy.engine import make_url
from tests.helpers import (
    METRICS_AUTH,
    OPENAI_TOKEN,
    PG_URL,
    eventually,
    gateway_settings,
    start_gateway,
)
from tests.pgbouncer import Route, routes

from llmgateway.conductor.app import create_app
from llmgateway.conductor.serving import running
from llmgateway.config.settings import DatabaseSettings
from llmgateway.store import Store
from llmgateway.store.locks import exclusive_start, start_lock_path
from llmgateway.store.notify import Kind, Listener, Notice, notify, publish
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream


async def test_the_start_lock_admits_one_process_at_a_time(tmp_path: Path) -> None:
    url = make_url(f"sqlite+aiosqlite:///{tmp_path / 'db' / 'gw.db'}")
    path = start_lock_path(url)
    assert path == tmp_path / "db" / "gw.db.start.lock"
    async with exclusive_start(url):
        assert not _can_lock(path)  # another process (another open file) must wait
    assert _can_lock(path)


def _can_lock(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_postgresql_needs_no_start_lock() -> None:
    assert start_lock_path(make_url(PG_URL)) is None


async def test_three_gateways_start_at_once_on_a_fresh_sqlite(tmp_path: Path) -> None:
    async with FakeUpstream() as fake:
        write_keys(tmp_path / "keys" / "openai", [f"sk-good-openai-{i:012d}" for i in range(5)])
        write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
        settings = gateway_settings(tmp_path, fake)
        apps = [create_app(settings, rng=random.Random(i)) for i in range(3)]
        async with contextlib.AsyncExitStack() as stack:
            urls = await asyncio.gather(*(stack.enter_async_context(running(a)) for a in apps))
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            headers = {"authorization": f"Bearer {OPENAI_TOKEN}"}
            async with aiohttp.ClientSession() as session:
                for url in urls:
                    async with session.post(
                        f"{url}/v1/chat/completions", json=body, headers=headers
                    ) as response:
                        assert response.status == 200
        for app in apps:
            # create_app is typed ASGIApp; the router it returns carries .state
            assert app.state.conductor.providers["openai"].pool.size == 5  # type: ignore[attr-defined]


def test_a_notice_survives_its_payload_round_trip() -> None:
    notice = Notice("breaker", 12, "openai/direct")
    assert Notice.parse(notice.payload()) == notice
    assert Notice.parse("something else") == Notice("something else")


@pytest.mark.postgres
async def test_notices_arrive_at_commit_and_never_on_rollback() -> None:
    heard: list[Notice] = []
    arrived = asyncio.Event()

    def on_notice(notice: Notice) -> None:
        heard.append(notice)
        arrived.set()

    store = await Store.open(PG_URL)
    listener = Listener(store.engine.url, on_notice)
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(arrived.wait(), 10)
        assert heard == [Notice(Kind.RECONNECTED.value)]  # listening: catch up once
        arrived.clear()
        with contextlib.suppress(RuntimeError):
            async with store.engine.begin() as conn:
                await publish(conn, Kind.STATUS, 41)
                raise RuntimeError("roll back")
        async with store.engine.begin() as conn:
            await publish(conn, Kind.STATUS, 42)
        await asyncio.wait_for(arrived.wait(), 10)
        arrived.clear()
        await notify(store.engine, Kind.BREAKER, "openai")
        await asyncio.wait_for(arrived.wait(), 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()
    assert heard[1:] == [Notice("status", 42), Notice("breaker", 0, "openai")]


async def test_sqlite_has_no_notices(tmp_path: Path) -> None:
    async with await Store.open(f"sqlite:///{tmp_path / 'n.db'}") as store:
        await store.upgrade()
        await notify(store.engine, Kind.BREAKER, "x")  # a no-op, not an error
        async with store.engine.begin() as conn:
            await publish(conn, Kind.KEYS, 1)


@pytest.mark.postgres
@pytest.mark.parametrize("route", routes("pgbouncer"), indirect=True)
async def test_a_listener_refuses_a_transaction_pooler(route: Route) -> None:
    heard: list[Notice] = []
    listener = Listener(route.url(PG_URL), heard.append)
    # it returns (the caller polls) instead of listening where the registration cannot last
    await asyncio.wait_for(listener.run(), 15)
    assert "goes through a transaction pooler, where LISTEN does not last" in listener.unavailable
    assert "set database.direct_url" in listener.unavailable
    assert heard == []
    assert not listener.listening.is_set()


@pytest.mark.postgres
async def test_a_lost_registration_is_found_by_its_echo_and_listened_again() -> None:
    heard: list[Notice] = []
    store = await Store.open(PG_URL)
    listener = Listener(store.engine.url, heard.append, keepalive_sec=1.0, echo_timeout_sec=1.0)
    task = asyncio.create_task(listener.run())
    try:
        await eventually(listener.listening.is_set, what="the listener listening")
        assert listener.connection is not None
        # the registration goes while the connection stays: no termination to notice
        await listener.connection.execute("UNLISTEN *")
        await eventually(lambda: listener.reconnects == 1, within=10, what="listening again")
        await eventually(listener.listening.is_set, what="the listener listening again")
        await notify(store.engine, Kind.BREAKER, "after")
        await eventually(lambda: Notice("breaker", 0, "after") in heard, what="the next notice")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()
    # each time it listens the receiver is told to catch up; pings never reach it
    assert heard == [Notice("reconnected"), Notice("reconnected"), Notice("breaker", 0, "after")]


FOLLOWING = {
    "direct": ("notices", "PostgreSQL directly (detected)"),
    "pgbouncer": ("polling", "a transaction pooler (detected)"),
    "pgbouncer+direct": (
        "notices",
        "a transaction pooler (detected, direct_url for session features)",
    ),
}


@pytest.mark.postgres
@pytest.mark.parametrize("route", routes(), indirect=True)
async def test_readyz_says_how_the_pool_follows_the_store(
    route: Route,
    pg_database: str,
    tmp_path: Path,
    fake: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_keys(tmp_path / "keys" / "openai", ["sk-good-openai-000000000001"])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    database = DatabaseSettings.model_validate(route.database(pg_database))
    settings = gateway_settings(tmp_path, fake).model_copy(update={"database": database})
    updates, described = FOLLOWING[route.name]
    async with start_gateway(settings) as gateway, aiohttp.ClientSession() as session:
        if updates == "notices":
            listening = gateway.gateway.readiness.listening
            assert listening is not None
            await eventually(listening.is_set, what="the store listener listening")
        async with session.get(f"{gateway.url}/readyz", headers=METRICS_AUTH) as response:
            assert response.status == 200
            body = await response.json()
    assert body["store_updates"] == updates
    assert body["database"] == described
    assert body["refresh_interval_sec"] == 0.2
    polling = [r.getMessage() for r in caplog.records if "no store notices" in r.getMessage()]
    if updates == "polling":  # said once, at start, with the interval
        assert polling == [
            "database.url reaches a transaction pooler (detected) and no database.direct_url "
            "is set: no store notices; the pool follows the store by polling every 0.2 s "
            "(gateway.refresh_interval_sec)"
        ]
    else:
        assert polling == []


@pytest.mark.postgres
async def test_a_listener_that_never_hears_its_echo_gives_up_for_polling(
    caplog: pytest.LogCaptureFixture,
) -> None:
    heard: list[Notice] = []
    # no time at all for the echo: each fresh registration counts as deaf
    listener = Listener(PG_URL, heard.append, retry_sec=0.05, echo_timeout_sec=0)
    await asyncio.wait_for(listener.run(), 15)
    assert "took LISTEN 3 times in a row, but the listener's own notices never came back" in (
        listener.unavailable
    )
    assert heard == []
    assert caplog.text.count("did not come back") == 3
