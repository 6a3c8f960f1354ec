"""Start-up of many processes at once, and store notices on the real PostgreSQL."""

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
from tests.helpers import OPENAI_TOKEN, PG_URL, gateway_settings

from llmgateway.conductor.app import create_app
from llmgateway.conductor.serving import running
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
