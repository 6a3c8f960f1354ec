"""`llmgateway serve` as a real process with the web console on, for the browser tests and the
screenshots: a few hundred keys on the fake upstream, synced and probed once before it starts
(so the pages have keys in every state at once), SQLite in the test's folder, `admin.token`
set and the console on its own loopback listener."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from llmgateway.config.load import load_settings
from llmgateway.config.settings import Settings
from llmgateway.keeper.run import Keeper
from llmgateway.keyfiles import run_sync
from llmgateway.store import Store
from llmgateway.testing.configs import two_providers, write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.faults import Behavior
from llmgateway.transport.upstream import HttpUpstream
from tests.helpers import eventually, free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
OPENAI_TOKEN = "gw-console-openai-token-0001"
GEMINI_TOKEN = "gw-console-gemini-token-0002"


@dataclass(frozen=True, slots=True)
class KeySet:
    """The keys of the data set by kind: the fake upstream judges a key by its name."""

    openai_good: tuple[str, ...]
    openai_invalid: tuple[str, ...]
    openai_noquota: tuple[str, ...]
    gemini_good: tuple[str, ...]
    gemini_invalid: tuple[str, ...]

    @classmethod
    def sized(cls, good: int = 200, invalid: int = 60, noquota: int = 20) -> KeySet:
        """`good`, `invalid` and `noquota` openai keys, and a fifth as many gemini keys."""

        def made(kind: str, prefix: str, count: int) -> tuple[str, ...]:
            return tuple(f"{prefix}-{kind}-{i:05d}-{secrets.token_hex(8)}" for i in range(count))

        return cls(
            made("good", "sk-console", good),
            made("invalid", "sk-console", invalid),
            made("noquota", "sk-console", noquota),
            made("good", "AIza-console", good // 5),
            made("invalid", "AIza-console", invalid // 5),
        )

    def every(self) -> tuple[str, ...]:
        """Every key of the set."""
        return (
            *self.openai_good,
            *self.openai_invalid,
            *self.openai_noquota,
            *self.gemini_good,
            *self.gemini_invalid,
        )


@dataclass(frozen=True, slots=True)
class ConsoleServer:
    """A running `serve` with the console: where it listens and how to get in."""

    url: str
    """The console's base URL (`…/admin`)."""
    gateway_url: str
    token: str
    settings: Settings
    keys: KeySet
    log: Path

    def store(self) -> contextlib.AbstractAsyncContextManager[Store]:
        """The store the server uses, opened by the test (for asserting what it holds)."""
        return _opened(self.settings)


@contextlib.asynccontextmanager
async def _opened(settings: Settings) -> AsyncIterator[Store]:
    async with await Store.configured(settings.database) as store:
        yield store


GEMINI_BREAKER = {"enabled": True, "mode": "manual_reset", "failure_threshold": 3}
"""gemini's breaker: open after 3 provider failures in a row, closed only by a reset."""
GEMINI_BODY = {"contents": [{"parts": [{"text": "hi"}]}]}


def console_document(folder: Path, fake: FakeUpstream, token: str, admin_port: int) -> Any:
    """The config: two providers on the fake, SQLite in `folder`, the console on
        `admin_port`, the Keeper looking for due rows every 2 s (none is due after the seed's probe
    round, so the pages stay as seeded, until a re-check makes one due), gemini's
        breaker reset by hand only."""
    return two_providers(
        folder,
        fake,
        openai_token=OPENAI_TOKEN,
        gemini_token=GEMINI_TOKEN,
        openai_models=("gpt-4o-mini", "gpt-4o"),
        openai={"shared_key_status": True},
        gemini={"gateway_policy": {"circuit_breaker": GEMINI_BREAKER}},
        both={"worker_health_policy": {"batch_delay_sec": 0, "verification_attempts": 0}},
        gateway={"refresh_interval_sec": 0.5},
        worker={"probe_interval_sec": 2, "metrics_port": free_port()},
        admin={"token": token, "host": "127.0.0.1", "port": admin_port},
        logging={"level": "INFO"},
    )


def write_key_files(folder: Path, keys: KeySet) -> None:
    """The key folders: openai's keys in two files (so `file:line` varies), gemini's in one."""
    openai = folder / "keys" / "openai"
    good = len(keys.openai_good) // 2
    write_keys(openai, keys.openai_good[:good])
    rest = (*keys.openai_good[good:], *keys.openai_invalid, *keys.openai_noquota)
    (openai / "team-b.txt").write_text("".join(f"{key}\n" for key in rest), encoding="utf-8")
    write_keys(folder / "keys" / "gemini", (*keys.gemini_good, *keys.gemini_invalid))


async def seed(settings: Settings) -> None:
    """Migrate, sync the key files and run one real probe round on the fake upstream."""
    async with await Store.configured(settings.database) as store:
        await store.upgrade()
        await run_sync(settings, store)
        upstream = HttpUpstream()
        try:
            await Keeper(settings, store, upstream).probe_round()
        finally:
            await upstream.close()


@contextlib.asynccontextmanager
async def console_server(
    folder: Path, fake: FakeUpstream, keys: KeySet, extra: Sequence[str] = ()
) -> AsyncIterator[ConsoleServer]:
    """`llmgateway serve` with the console, seeded with `keys`; stopped with Ctrl-C after the
    block (its output is printed when the block fails)."""
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    admin_port, gateway_port = free_port(), free_port()
    config = folder / "providers.yaml"
    config.write_text(yaml.safe_dump(console_document(folder, fake, token, admin_port)))
    write_key_files(folder, keys)
    settings = load_settings(config)
    await seed(settings)
    log = folder / "serve.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmgateway", "serve", "--config", str(config),
            "--port", str(gateway_port), *extra, stdout=output, stderr=output, cwd=ROOT,
        )  # fmt: skip
    server = ConsoleServer(
        url=f"http://127.0.0.1:{admin_port}/admin",
        gateway_url=f"http://127.0.0.1:{gateway_port}",
        token=token,
        settings=settings,
        keys=keys,
        log=log,
    )
    try:
        await wait_ready(server.gateway_url, process, within=60)
        await _console_answers(server.url, process)
        yield server
    except BaseException:
        print(log.read_text(errors="replace"))
        raise
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _console_answers(url: str, process: asyncio.subprocess.Process) -> None:
    """Wait until the console's login page answers 200."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

        async def answers() -> bool:
            if process.returncode is not None:
                raise AssertionError(f"serve exited ({process.returncode}) during start-up")
            try:
                async with session.get(f"{url}/login") as response:
                    return response.status == 200
            except (aiohttp.ClientConnectionError, TimeoutError):
                return False

        await eventually(answers, 60, step=0.05, what=f"{url}/login answering 200")


async def open_gemini_breaker(server: ConsoleServer, fake: FakeUpstream) -> None:
    """Make every gemini key answer 500 and send requests through the gateway until the store
    holds gemini's breaker as open (as the gateway reports it at its next refresh)."""
    for key in server.keys.gemini_good:
        fake.set_behavior(key, Behavior(error_rate=1.0, error_status=500))
    url = f"{server.gateway_url}/v1beta/models/gemini-2.5-flash:generateContent"
    headers = {"x-goog-api-key": GEMINI_TOKEN}
    async with aiohttp.ClientSession() as http, server.store() as store:

        async def reported_open() -> bool:
            async with http.post(url, json=GEMINI_BODY, headers=headers) as answer:
                await answer.read()
            return any(
                row.provider == "gemini" and row.state == 2 for row in await store.breakers()
            )

        await eventually(reported_open, 30, step=0.1, what="gemini's breaker stored as open")
    for key in server.keys.gemini_good:
        fake.set_behavior(key, None)
