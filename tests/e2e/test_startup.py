"""Start-up of `gateway` and `serve`: a store already up to date is served as it is, with no
migration process, while the key files are synced in the background; a pending migration is
said and applied before serving; a key removed from the files while the gateway was down is
served only until that sync ends. Behaviour only: the times are the bench's
(`bench/startup.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import sqlalchemy as sa
import yaml
from starlette.types import Message

from llmgateway.cli.prepare import sync_in_process
from llmgateway.conductor import router as router_module
from llmgateway.conductor.app import create_app
from llmgateway.conductor.router import Router
from llmgateway.conductor.serving import running
from llmgateway.config.settings import Settings
from llmgateway.keyfiles import run_sync
from llmgateway.observe.logs import Redactor
from llmgateway.store import Store
from llmgateway.store.connect import head_revision
from llmgateway.store.schema import SCHEMA_HEAD
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import OPENAI_TOKEN, eventually, free_port, gateway_settings, wait_ready

OLD = "sk-good-startup-removed-000001"
"""In the store from an earlier run; removed from the files while the gateway was down."""
NEW = "sk-good-startup-added-0000002"
"""Added to the files while the gateway was down."""
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"authorization": f"Bearer {OPENAI_TOKEN}"}


def settings_for(tmp_path: Path, fake: FakeUpstream, database: str | None = None) -> Settings:
    """The test gateway, with a refresh interval far beyond the test: only the end of the
    start-up sync (or a store notice) can explain the pool changing."""
    settings = gateway_settings(tmp_path, fake, {"refresh_interval_sec": 600})
    if database is not None:
        settings = settings.model_copy(
            update={"database": settings.database.model_copy(update={"url": database})}
        )
    return settings


async def stored_from_an_earlier_run(settings: Settings, tmp_path: Path) -> None:
    """The store as an earlier run left it (OLD synced), then the files as they are now: OLD
    removed, NEW added."""
    write_keys(tmp_path / "keys" / "openai", [OLD])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-startup-gemini-0001"])
    async with await Store.configured(settings.database) as store:
        await store.upgrade()
        await run_sync(settings, store)
    write_keys(tmp_path / "keys" / "openai", [NEW])


async def chat_calls(http: httpx.AsyncClient, url: str, fake: FakeUpstream, n: int) -> set[str]:
    """Send `n` chat completions (each must succeed); which of OLD and NEW were used upstream
    (`serve`'s Keeper probes keys too, but never a removed one)."""
    fake.reset()
    for _ in range(n):
        answer = await http.post(f"{url}/v1/chat/completions", json=CHAT, headers=AUTH)
        assert answer.status_code == 200, answer.text
    return {key for key in (OLD, NEW) if fake.calls(key)}


# --- the cheap check ------------------------------------------------------------------------


def test_the_head_known_at_build_time_is_alembics() -> None:
    assert head_revision() == SCHEMA_HEAD, "a new migration: update store.schema.SCHEMA_HEAD"


def upgrade_to(connection: sa.Connection, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "llmgateway.store:migrations")
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def migrate_to(store: Store, revision: str) -> None:
    async with store.engine.begin() as conn:
        await conn.run_sync(upgrade_to, revision)


async def test_the_check_says_what_is_to_be_done_before_serving(
    db_url: str, tmp_path: Path, fake: FakeUpstream
) -> None:
    settings = settings_for(tmp_path, fake, db_url)
    write_keys(tmp_path / "keys" / "openai", [OLD])
    async with await Store.configured(settings.database) as store:
        assert (await store.schema_state()).why_prepare() == "the database is new (no schema yet)"
        await migrate_to(store, "0006")
        state = await store.schema_state()
        assert state.why_prepare() == f"its schema is at 0006, this version needs {SCHEMA_HEAD}"
        await store.upgrade()
        assert (await store.schema_state()).why_prepare() == "it has no keys yet"
        await run_sync(settings, store)
        assert (await store.schema_state()).why_prepare() is None


# --- the pool serves the store's keys while the start-up sync runs ----------------------------


async def test_the_store_keys_serve_until_the_background_sync_ends(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    settings = settings_for(tmp_path, fake)
    await stored_from_an_earlier_run(settings, tmp_path)
    go = asyncio.Event()
    sync = sync_in_process(settings)

    async def slow_sync(store: Store) -> None:  # the start-up sync, held until the test says
        await go.wait()
        await sync(store)

    log_secrets = Redactor()  # the log lines' redactor, taught the pool's keys as they load
    app = create_app(
        settings,
        rng=random.Random(3),
        prepare=False,
        serve_early=True,
        after_load=slow_sync,
        log_secrets=log_secrets,
    )
    async with running(app) as url, httpx.AsyncClient() as http:
        await eventually(
            lambda: _ready(http, url), within=10, step=0.02, what="/readyz answering 200"
        )
        # the sync has not run: the pool is the store's, OLD included, NEW not yet
        assert await chat_calls(http, url, fake, 5) == {OLD}
        assert OLD in log_secrets.secrets
        assert NEW not in log_secrets.secrets
        go.set()
        # its end refreshes the pool at once (the refresh interval is 600 s)
        await eventually(
            lambda: _served_by(http, url, fake, NEW), within=10, step=0.02, what="NEW served"
        )
        assert await chat_calls(http, url, fake, 10) == {NEW}
        assert NEW in log_secrets.secrets


async def _ready(http: httpx.AsyncClient, url: str) -> bool:
    return (await http.get(f"{url}/readyz")).status_code == 200


async def _served_by(http: httpx.AsyncClient, url: str, fake: FakeUpstream, key: str) -> bool:
    return key in await chat_calls(http, url, fake, 1)


# --- a request that comes while the pool loads ------------------------------------------------


class _Edge:
    """Stands for the edge: answers 200 with a word."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})


async def call(router: Router, path: bytes) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "raw_path": path, "path": path.decode(), "method": "POST"}
    await router(scope, receive, send)
    return sent


async def test_a_proxied_request_during_the_load_waits_for_the_pool() -> None:
    from starlette.applications import Starlette

    router = Router(Starlette())
    waiting = asyncio.create_task(call(router, b"/v1/chat/completions"))
    await asyncio.sleep(0)  # it is in, and waits
    assert not waiting.done()
    router.open(_Edge())  # type: ignore[arg-type]
    sent = await asyncio.wait_for(waiting, 5)
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b"served"


async def test_a_pool_that_does_not_load_in_time_answers_starting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from starlette.applications import Starlette

    monkeypatch.setattr(router_module, "STARTING_WAIT_SEC", 0.0)
    sent = await call(Router(Starlette()), b"/v1beta/models/gemini-2.5-flash:generateContent")
    assert sent[0]["status"] == 503
    assert (b"retry-after", b"1") in sent[0]["headers"]
    assert b"starting" in sent[1]["body"]
    assert b'"status"' in sent[1]["body"]  # Gemini's shape


# --- the commands, as real processes ----------------------------------------------------------


@contextlib.asynccontextmanager
async def start(command: str, config: Path, log: Path) -> AsyncIterator[str]:
    """`llmgateway COMMAND` as a process, its output in `log`; yields its URL once ready."""
    port = free_port()
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmgateway", command, "--config", str(config),
            "--port", str(port), stdout=output, stderr=output,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, process, within=60)
        yield url
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.wait(), 30)


def write_config(settings: Settings, tmp_path: Path) -> Path:
    config = tmp_path / "providers.yaml"
    data = settings.model_dump(mode="json", exclude_defaults=True)
    config.write_text(yaml.safe_dump(data))
    return config


@pytest.mark.parametrize("command", ["gateway", "serve"])
async def test_an_up_to_date_store_serves_with_no_migration_process(
    command: str, tmp_path: Path, fake: FakeUpstream
) -> None:
    settings = settings_for(tmp_path, fake)
    await stored_from_an_earlier_run(settings, tmp_path)
    log = tmp_path / f"{command}.log"
    try:
        async with (
            start(command, write_config(settings, tmp_path), log) as url,
            httpx.AsyncClient() as http,
        ):
            done = "start-up sync of the key files: done"
            await eventually(lambda: done in log.read_text(), within=30, step=0.05, what=done)
            await eventually(
                lambda: _served_by(http, url, fake, NEW), within=10, step=0.05, what="NEW"
            )
            assert await chat_calls(http, url, fake, 10) == {NEW}  # OLD left with the sync
        text = log.read_text()
        assert f"schema at {SCHEMA_HEAD}, keys present: serving them at once" in text
        assert "running in the background" in text
        # `db upgrade` (the migration process, Alembic's) was not started: it says this
        assert "schema up to date" not in text
        assert "migrating" not in text
    except BaseException:
        print(log.read_text())
        raise


async def test_a_pending_migration_is_said_and_applied_before_serving(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    settings = settings_for(tmp_path, fake)
    write_keys(tmp_path / "keys" / "openai", [NEW])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-startup-gemini-0001"])
    async with await Store.configured(settings.database) as store:
        await migrate_to(store, "0006")
    log = tmp_path / "gateway.log"
    try:
        async with (
            start("gateway", write_config(settings, tmp_path), log) as url,
            httpx.AsyncClient() as http,
        ):
            assert await chat_calls(http, url, fake, 3) == {NEW}  # synced before serving
        text = log.read_text()
        said = f"store: its schema is at 0006, this version needs {SCHEMA_HEAD}: migrating"
        assert said in text
        assert f"schema up to date ({SCHEMA_HEAD})" in text  # the migration process's line
        assert "running in the background" not in text
    except BaseException:
        print(log.read_text())
        raise
    async with await Store.configured(settings.database) as store:
        assert (await store.schema_state()).why_prepare() is None
