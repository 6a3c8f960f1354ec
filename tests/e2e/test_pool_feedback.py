"""What the gateway learns reaches the store, and what the store learns reaches the pool."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import yaml
from openai.types.chat import ChatCompletion

from llmgateway.core.outcomes import KeyStatus
from llmgateway.keyfiles import run_sync
from llmgateway.store import KeyRow, Store
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.faults import Behavior
from tests.helpers import OPENAI_TOKEN, GatewayFactory, eventually, gateway_settings, wait_ready

GOOD = "sk-good-openai-000000000001"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=OPENAI_TOKEN, max_retries=0)


async def chat(url: str) -> ChatCompletion:
    """`CHAT` through the openai client."""
    return await client(url).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )


async def rows_by_secret(tmp_path: Path) -> dict[tuple[str, str], KeyRow]:
    """The stored rows by (secret, model)."""
    async with await Store.open(f"sqlite:///{tmp_path / 'gw.db'}") as store:
        snapshot = await store.snapshot(0)
    return {(row.secret, row.model): row for row in snapshot.keys}


async def test_a_key_the_gateway_marks_invalid_is_stored_for_a_prompt_reprobe(
    gateway: GatewayFactory, fake: FakeUpstream, started: list[Any], tmp_path: Path
) -> None:
    invalid = "sk-bad-invalid-0000000000009"
    fake.set_behavior(invalid, Behavior(invalid=True))
    async with gateway(openai=[GOOD, invalid]) as url:
        for _ in range(20):
            await chat(url)
        assert fake.calls(invalid) == 1
        writer = started[-1].state.conductor.writer
        await writer.flush()
        assert writer.pending == 0
        rows = await rows_by_secret(tmp_path)
    # a dead key is dead for every model; a good key is proven only for the model it served
    assert rows[invalid, "gpt-4o-mini"].status is KeyStatus.INVALID_KEY
    assert rows[invalid, "gpt-4o"].status is KeyStatus.INVALID_KEY
    assert rows[GOOD, "gpt-4o-mini"].status is KeyStatus.VALID
    assert rows[GOOD, "gpt-4o"].status is KeyStatus.UNTESTED
    async with await Store.open(f"sqlite:///{tmp_path / 'gw.db'}") as store:
        counts = {(c.provider, c.status): c for c in await store.status_counts()}
    recheck = counts[("openai", "invalid_key")].next_check_at
    assert recheck is not None
    assert recheck - time.time() <= 61


async def test_a_key_removed_from_its_file_leaves_the_pool(
    gateway: GatewayFactory, fake: FakeUpstream, started: list[Any], tmp_path: Path
) -> None:
    second = "sk-good-openai-000000000002"
    async with gateway(openai=[GOOD, second]) as url:
        pool = started[-1].state.conductor.providers["openai"].pool
        assert pool.size == 2
        write_keys(tmp_path / "keys" / "openai", [second])
        settings = gateway_settings(tmp_path, fake)
        async with await Store.open(settings.database.async_url) as store:
            await run_sync(settings, store)  # what the Keeper does on its interval
        # the gateway's delta refresh runs every 0.2 s here
        await eventually(lambda: pool.size == 1, within=4)
        before = fake.calls(GOOD)
        for _ in range(10):
            await chat(url)
    assert fake.calls(GOOD) == before
    assert fake.calls(second) >= 10


async def test_a_hanging_upstream_is_a_504_at_the_deadline(
    gateway: GatewayFactory, fake: FakeUpstream
) -> None:
    fake.set_behavior(GOOD, Behavior(hang=True))
    async with gateway(timeouts={"total": 1.0}) as url, httpx.AsyncClient(timeout=10) as http:
        started_at = time.monotonic()
        answer = await http.post(
            f"{url}/v1/chat/completions",
            headers={"authorization": f"Bearer {OPENAI_TOKEN}"},
            json=CHAT,
        )
        took = time.monotonic() - started_at
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "timeout"
    assert took < 5


async def test_request_id_and_hop_by_hop_headers(
    gateway: GatewayFactory, fake: FakeUpstream
) -> None:
    async with gateway() as url, httpx.AsyncClient() as http:
        answer = await http.post(
            f"{url}/v1/chat/completions",
            headers={
                "authorization": f"Bearer {OPENAI_TOKEN}",
                "x-request-id": "trace-42",
                "te": "trailers",
                "proxy-authorization": "Basic c2VjcmV0",
                "x-custom": "dropped",
            },
            json=CHAT,
        )
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == "trace-42"
    seen = fake.last_request(GOOD)
    assert seen is not None
    assert seen.headers["x-request-id"] == "trace-42"
    assert "x-custom" not in seen.headers  # only allow-listed headers travel
    assert "te" not in seen.headers
    assert "proxy-authorization" not in seen.headers
    assert seen.headers["authorization"] == f"Bearer {GOOD}"


async def test_serve_runs_gateway_and_keeper_in_one_process(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys" / "openai", [GOOD])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    settings = gateway_settings(tmp_path, fake)
    data = settings.model_dump(mode="json", exclude_defaults=True)
    data["gateway"]["port"] = 0
    config = tmp_path / "providers.yaml"
    config.write_text(yaml.safe_dump(data))
    port_file = tmp_path / "port"
    probe = (
        "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
        f"open({str(port_file)!r}, 'w').write(str(s.getsockname()[1])); s.close()"
    )
    subprocess.run([sys.executable, "-c", probe], check=True)
    port = int(port_file.read_text())
    env = {**os.environ, "LLMGATEWAY_CONFIG": str(config)}
    command = [sys.executable, "-m", "llmgateway", "serve", "--port", str(port)]
    process = await asyncio.create_subprocess_exec(
        *command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, process, within=15)
        reply = await chat(url)
        assert reply.choices[0].message.content
        # the Keeper in the same process probes the untested keys
        await eventually(lambda: fake.calls("AIza-good-gemini-00000000001") >= 1, within=15)
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    text = output.decode()
    assert process.returncode == 0, text
    assert "Traceback" not in text
    assert GOOD not in text
    assert OPENAI_TOKEN not in text
