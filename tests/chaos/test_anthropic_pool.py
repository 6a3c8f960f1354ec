"""Chaos on an Anthropic pool: invalid keys, keys out of credit, rate-limited keys (429 with
`retry-after`) and keys whose every call is overloaded (529), under a load of concurrent
official `anthropic` SDK clients, whole and streamed.

What must hold: while healthy keys exist, clients see no error at all (every fault comes before
the first byte, so the gateway retries on other keys); invalid and out-of-credit keys are marked
so in the store, healthy keys are never marked bad, nothing leaks."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from anthropic.types import MessageParam

from llmgateway.core.outcomes import KeyStatus
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.faults import Behavior
from tests.anthropic_rig import MODEL, async_client, claude_settings
from tests.chaos.load import leaks
from tests.helpers import eventually, start_gateway

GOOD = [f"sk-ant-chaos-good-{i:08d}" for i in range(6)]
INVALID = [f"sk-ant-chaos-invalid-{i:08d}" for i in range(4)]
NOQUOTA = [f"sk-ant-chaos-noquota-{i:08d}" for i in range(2)]
LIMITED = [f"sk-ant-chaos-ratelimited-{i:08d}" for i in range(3)]
OVERLOADED = [f"sk-ant-chaos-overloaded-{i:08d}" for i in range(3)]
HI: list[MessageParam] = [{"role": "user", "content": "hi"}]


async def _client(url: str, index: int, stop: asyncio.Event, results: list[str | None]) -> None:
    client = async_client(url)
    streamed = index % 2 == 0
    try:
        while not stop.is_set():
            try:
                if streamed:
                    async with client.messages.stream(model=MODEL, max_tokens=8, messages=HI) as s:
                        assert "".join([t async for t in s.text_stream])
                else:
                    reply = await client.messages.create(model=MODEL, max_tokens=8, messages=HI)
                    assert reply.content
                results.append(None)
            except Exception as error:  # every failure a client sees is a result to judge
                results.append(f"{type(error).__name__}: {str(error)[:120]}")
            streamed = not streamed
    finally:
        await client.close()


async def test_bad_limited_and_overloaded_keys_cost_clients_nothing(tmp_path: Path) -> None:
    async with FakeUpstream(chunks=4, chunk_delay=0.01) as fake:
        for key in OVERLOADED:
            fake.set_behavior(key, Behavior(error_rate=1.0, error_status=529))
        for key in LIMITED:
            fake.set_behavior(key, Behavior(rate_limited=True, retry_after=30.0))
        keys = GOOD + INVALID + NOQUOTA + LIMITED + OVERLOADED
        settings = claude_settings(tmp_path, fake, keys, chaos=True)
        async with start_gateway(settings) as gw:
            stop, results = asyncio.Event(), list[str | None]()
            tasks = [asyncio.create_task(_client(gw.url, i, stop, results)) for i in range(10)]
            started = time.monotonic()
            await eventually(lambda: len(results) >= 300, within=60)
            stop.set()
            await asyncio.gather(*tasks)
            gateway = gw.gateway
            assert gateway.writer is not None
            await gateway.writer.flush()

            errors = [r for r in results if r is not None]
            assert errors == [], errors[:5]
            assert time.monotonic() - started < 60
            for key in INVALID + NOQUOTA + LIMITED + OVERLOADED:
                assert fake.calls(key) >= 1, key  # every bad key was met, and never shown
            assert gateway.store is not None
            by_secret = {row.secret: row.status for row in (await gateway.store.snapshot()).keys}
            for secret in GOOD:
                assert by_secret[secret] in (KeyStatus.VALID, KeyStatus.UNTESTED), secret
            for secret in INVALID:
                assert by_secret[secret] is KeyStatus.INVALID_KEY
            for secret in NOQUOTA:
                assert by_secret[secret] is KeyStatus.NO_QUOTA
            for secret in OVERLOADED:  # an overload is the provider's, never the key's
                assert by_secret[secret] not in (KeyStatus.INVALID_KEY, KeyStatus.NO_QUOTA)
            await eventually(
                lambda: leaks(gateway, fake) == dict.fromkeys(leaks(gateway, fake), 0), within=5
            )
