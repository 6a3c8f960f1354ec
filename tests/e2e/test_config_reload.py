"""Configuration changes without a restart, on real `llmgateway gateway` and `llmgateway worker`
processes over loopback HTTP against the fake upstream: SIGHUP, `gateway.watch_config` and
`llmgateway reload` (PostgreSQL) put a new config in force within a second, a stream running
across the reload completes (one process, and `--workers 2` with the same process ids), an
invalid config leaves the old one in force, and the Keeper takes a new provider and key folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from llmgateway.reloading import config_hash
from llmgateway.store import Store
from llmgateway.testing.configs import two_providers, write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import METRICS_AUTH, METRICS_TOKEN, eventually, free_port, run_cli, wait_ready

GOOD = "sk-good-openai-000000000001"
GEMINI_KEY = "AIza-good-gemini-00000000001"
OLD_TOKEN = "gw-reload-old-token-0001"
NEW_TOKEN = "gw-reload-new-token-0002"
GEMINI_TOKEN = "gw-reload-gemini-token-03"
CHUNKS = 12
CHUNK_DELAY = 0.25  # a stream takes 3 s: long enough to reload in its middle


@pytest.fixture
def fake_options() -> dict[str, Any]:
    return {"chunks": CHUNKS, "chunk_delay": CHUNK_DELAY}


def write_config(
    path: Path, fake: FakeUpstream, tokens: list[str], *, database: str = "", **gateway: Any
) -> Path:
    """The config file: `openai` and `gemini` on the fake, `openai` taking `tokens`."""
    folder = path.parent
    document = two_providers(
        folder,
        fake,
        openai_token="",
        gemini_token=GEMINI_TOKEN,
        openai={"access_control": {"gateway_access_tokens": tokens}},
        gateway={"refresh_interval_sec": 0.2, **gateway},
        metrics={"access_token": METRICS_TOKEN},
    )
    if database:
        document["database"] = {"url": database}
    path.write_text(yaml.safe_dump(document))
    return path


@dataclass
class Gateway:
    process: asyncio.subprocess.Process
    url: str
    log: Path

    def hangup(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.asynccontextmanager
async def gateway_process(
    config: Path, *extra: str, command: str = "gateway"
) -> AsyncIterator[Gateway]:
    """`llmgateway gateway --config CONFIG` (or `command`) on a free port, ready; stopped at
    the end."""
    port = free_port()
    log = config.parent / f"gateway-{port}.log"
    env = {**os.environ, "TMPDIR": str(config.parent)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmgateway", command, "--config", str(config),
            "--port", str(port), *extra,
            env=env, stdout=sink, stderr=sink,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, process)
        yield Gateway(process, url, log)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()


async def status_of(url: str, token: str) -> int:
    """The status of one chat request made with `token` on a fresh connection."""
    async with httpx.AsyncClient() as fresh:
        answer = await fresh.post(
            f"{url}/v1/chat/completions",
            headers={"authorization": f"Bearer {token}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        )
    return answer.status_code


async def tokens_swapped(url: str, tries: int = 1) -> bool:
    """Whether the new token is served and the old one refused (on `tries` fresh connections
    each, so that every process of several answers some)."""
    for _ in range(tries):
        if await status_of(url, NEW_TOKEN) != 200 or await status_of(url, OLD_TOKEN) != 401:
            return False
    return True


async def stream_text(url: str, started: asyncio.Event) -> tuple[str, str | None]:
    """A streamed chat completion through the official SDK with the old token: its text and
    last finish reason; `started` is set at its first chunk."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=OLD_TOKEN, max_retries=0)
    text, reason = "", None
    async with client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        async for chunk in stream:
            started.set()
            for choice in chunk.choices:
                text += choice.delta.content or ""
                reason = choice.finish_reason or reason
    return text, reason


def reloads(metrics_text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "llmgateway_config_reloads_total":
                found[sample.labels["outcome"]] = sample.value
    return found


async def metrics_of(url: str) -> dict[str, float]:
    async with httpx.AsyncClient() as http:
        return reloads((await http.get(f"{url}/metrics", headers=METRICS_AUTH)).text)


def keys_written(tmp_path: Path) -> None:
    write_keys(tmp_path / "keys" / "openai", [GOOD])
    write_keys(tmp_path / "keys" / "gemini", [GEMINI_KEY])


async def test_sighup_swaps_the_tokens_within_a_second_and_a_stream_across_it_completes(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    keys_written(tmp_path)
    config = write_config(tmp_path / "providers.yaml", fake, [OLD_TOKEN])
    async with gateway_process(config) as gateway:
        whole, _ = await stream_text(gateway.url, asyncio.Event())  # for comparison
        started = asyncio.Event()
        stream = asyncio.create_task(stream_text(gateway.url, started))
        await asyncio.wait_for(started.wait(), 10)
        write_config(config, fake, [NEW_TOKEN])
        gateway.hangup()
        took = await eventually(lambda: tokens_swapped(gateway.url), within=5, step=0.05)
        assert took < 1.0
        assert not stream.done(), "the reload came in the stream's middle"
        text, reason = await stream
        assert (text, reason) == (whole, "stop")
        assert (await metrics_of(gateway.url)).get("applied") == 1.0
        log = gateway.log_text()
        assert "config reload applied" in log
        assert OLD_TOKEN not in log
        assert NEW_TOKEN not in log


async def test_watch_config_applies_a_changed_file(tmp_path: Path, fake: FakeUpstream) -> None:
    keys_written(tmp_path)
    config = write_config(tmp_path / "providers.yaml", fake, [OLD_TOKEN], watch_config=True)
    async with gateway_process(config) as gateway:
        assert await status_of(gateway.url, OLD_TOKEN) == 200
        write_config(config, fake, [NEW_TOKEN], watch_config=True)
        # looked at every second: applied within one look and a reload
        await eventually(lambda: tokens_swapped(gateway.url), within=3, step=0.05)
        assert (await metrics_of(gateway.url)).get("applied") == 1.0


async def test_an_invalid_config_is_refused_and_the_old_one_stays(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    keys_written(tmp_path)
    config = write_config(tmp_path / "providers.yaml", fake, [OLD_TOKEN])
    async with gateway_process(config) as gateway:
        write_config(config, fake, [NEW_TOKEN], refresh_interval_sec=-1)
        gateway.hangup()
        await eventually(
            lambda: _refused_count(gateway.url), within=5, step=0.05, what="a refused reload"
        )
        assert await status_of(gateway.url, OLD_TOKEN) == 200
        assert await status_of(gateway.url, NEW_TOKEN) == 401
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"{gateway.url}/readyz")
            detailed = await http.get(f"{gateway.url}/readyz", headers=METRICS_AUTH)
        assert ready.status_code == 200
        assert "config reload refused" in ready.json()["warning"]
        assert "config reload refused" in detailed.json()["warning"]
        _, _, checked = await run_cli("check-config", str(config))
        problem = checked.strip().splitlines()[0]
        assert "gateway.refresh_interval_sec" in problem
        await eventually(lambda: problem in gateway.log_text(), within=5, what="the problem logged")
        # a valid config afterwards is applied and clears the warning
        write_config(config, fake, [NEW_TOKEN])
        gateway.hangup()
        await eventually(lambda: tokens_swapped(gateway.url), within=5, step=0.05)
        async with httpx.AsyncClient() as http:
            assert "warning" not in (await http.get(f"{gateway.url}/readyz")).json()


async def _refused_count(url: str) -> bool:
    return (await metrics_of(url)).get("refused") == 1.0


def worker_pids(parent: int) -> set[int]:
    """The gateway processes of a `--workers` parent (its spawned children, not the
    multiprocessing resource tracker)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    found = set()
    for pid in map(int, children):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.add(pid)
    return found


async def test_workers_take_a_relayed_sighup_without_a_restart(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    keys_written(tmp_path)
    config = write_config(tmp_path / "providers.yaml", fake, [OLD_TOKEN])
    async with gateway_process(config, "--workers", "2") as gateway:
        before = worker_pids(gateway.process.pid)
        assert len(before) == 2
        started = asyncio.Event()
        stream = asyncio.create_task(stream_text(gateway.url, started))
        await asyncio.wait_for(started.wait(), 10)
        write_config(config, fake, [NEW_TOKEN])
        gateway.hangup()
        await eventually(lambda: tokens_swapped(gateway.url, tries=10), within=10, step=0.1)
        text, reason = await stream
        assert reason == "stop"
        assert text
        assert worker_pids(gateway.process.pid) == before
        assert "SIGHUP relayed to 2 gateway processes" in gateway.log_text()


async def test_llmgateway_reload_through_postgresql(
    tmp_path: Path, fake: FakeUpstream, pg_database: str
) -> None:
    keys_written(tmp_path)
    config = write_config(tmp_path / "providers.yaml", fake, [OLD_TOKEN], database=pg_database)
    async with gateway_process(config) as gateway:
        write_config(config, fake, [NEW_TOKEN], database=pg_database)
        wanted = config_hash(config)
        code, out, err = await run_cli("reload", "--config", str(config))
        assert code == 0, err
        assert wanted in out
        took = await eventually(lambda: tokens_swapped(gateway.url), within=5, step=0.05)
        assert took < 1.0

        async def reported() -> bool:
            code, out, _ = await run_cli("status", "--json", "--config", str(config))
            runs = json.loads(out)["processes"] if code == 0 else []
            return any(
                r["config_hash"] == wanted and r["outcome"] == "applied" and r["role"] == "gateway"
                for r in runs
            )

        await eventually(reported, within=10, step=0.2, what="status showing the new hash")
        code, out, _ = await run_cli("status", "--config", str(config))
        assert code == 0
        assert wanted in out
        assert "applied" in out


async def test_the_keeper_takes_a_new_provider_and_key_folder_on_sighup(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    write_keys(tmp_path / "keys" / "openai", [GOOD])
    config = tmp_path / "providers.yaml"
    document = two_providers(
        tmp_path,
        fake,
        openai_token=OLD_TOKEN,
        gemini_token=GEMINI_TOKEN,
        gateway={"refresh_interval_sec": 0.2},
        worker={"metrics_port": 0},
    )
    gemini = document["providers"].pop("gemini")
    config.write_text(yaml.safe_dump(document))
    log = tmp_path / "worker.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmgateway", "worker", "--config", str(config),
            stdout=sink, stderr=sink,
        )  # fmt: skip
    database = f"sqlite:///{tmp_path / 'gw.db'}"
    try:

        async def providers_keys() -> dict[str, set[str]]:
            if not (tmp_path / "gw.db").exists():
                return {}
            async with await Store.open(database) as store:
                with contextlib.suppress(Exception):
                    rows = (await store.snapshot(0)).keys
                    return _by_provider([(r.provider, r.secret) for r in rows])
            return {}

        await eventually(
            lambda: _has(providers_keys, "openai", {GOOD}), within=20, step=0.2, what="first sync"
        )
        moved = tmp_path / "keys" / "openai-2"
        write_keys(moved, ["sk-good-openai-000000000002"])
        write_keys(tmp_path / "keys" / "gemini", [GEMINI_KEY])
        document["providers"]["openai"]["keys_path"] = str(moved)
        document["providers"]["gemini"] = gemini
        config.write_text(yaml.safe_dump(document))
        process.send_signal(signal.SIGHUP)
        await eventually(lambda: _has(providers_keys, "gemini", {GEMINI_KEY}), within=20, step=0.2)
        await eventually(
            lambda: _has(providers_keys, "openai", {"sk-good-openai-000000000002"}),
            within=20,
            step=0.2,
        )
        assert process.returncode is None
        text = log.read_text()
        assert "config reload applied" in text
        assert "keeper restarted" in text
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)


async def test_serve_takes_a_new_provider_and_tokens_on_sighup(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    """`serve` (gateway and Keeper in one process): a provider added by a reload is synced by
    its Keeper and served by its gateway."""
    keys_written(tmp_path)
    config = tmp_path / "providers.yaml"
    document = two_providers(
        tmp_path,
        fake,
        openai_token="",
        gemini_token=GEMINI_TOKEN,
        openai={"access_control": {"gateway_access_tokens": [OLD_TOKEN]}},
        gateway={"refresh_interval_sec": 0.2},
        worker={"metrics_port": 0},
    )
    gemini = document["providers"].pop("gemini")
    config.write_text(yaml.safe_dump(document))
    async with gateway_process(config, command="serve") as gateway:
        assert await status_of(gateway.url, OLD_TOKEN) == 200
        assert await gemini_status(gateway.url) == 401
        document["providers"]["gemini"] = gemini
        document["providers"]["openai"]["access_control"]["gateway_access_tokens"] = [NEW_TOKEN]
        config.write_text(yaml.safe_dump(document))
        gateway.hangup()
        await eventually(lambda: tokens_swapped(gateway.url), within=5, step=0.05)
        await eventually(
            lambda: _is_ok(gemini_status(gateway.url)), within=20, step=0.1, what="gemini served"
        )
        assert "keeper restarted" in gateway.log_text()


async def gemini_status(url: str) -> int:
    async with httpx.AsyncClient() as fresh:
        answer = await fresh.post(
            f"{url}/v1beta/models/gemini-2.5-flash:generateContent",
            headers={"x-goog-api-key": GEMINI_TOKEN},
            json={"contents": [{"parts": [{"text": "hi"}]}]},
        )
    return answer.status_code


async def _is_ok(status: Awaitable[int]) -> bool:
    return await status == 200


def _by_provider(pairs: list[tuple[str, str]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for provider, secret in pairs:
        found.setdefault(provider, set()).add(secret)
    return found


async def _has(
    read: Callable[[], Awaitable[dict[str, set[str]]]], provider: str, secrets: set[str]
) -> bool:
    return (await read()).get(provider) == secrets
