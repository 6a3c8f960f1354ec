"""Chaos: bad keys, hanging upstreams, streams dropped mid-way and clients leaving mid-stream,
all at once, under a load of concurrent official-SDK clients.

What must hold:
- 30 % invalid and 20 % rate-limited keys, and a key whose upstream hangs, cost clients nothing:
  every request answers (the gateway retries on other keys before the first byte).
- A stream that breaks after its first byte cannot be retried: the only errors clients may see
  are such breaks, never an error status, and never more than the dropping key was called.
- Clients leaving mid-stream cancel the upstream call at once and free the key.
- No healthy key is marked bad in the pool or the store; nothing leaks.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai

from llmgateway.core.outcomes import KeyStatus
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.faults import Behavior
from tests.chaos.load import MESSAGES, Load, leaks
from tests.helpers import OPENAI_TOKEN, chaos_settings, eventually, start_gateway

GOOD = [f"sk-chaos-good-{i:08d}" for i in range(8)]
INVALID = [f"sk-chaos-invalid-{i:08d}" for i in range(6)]  # 30 % of 20
LIMITED = [f"sk-chaos-ratelimited-{i:08d}" for i in range(4)]  # 20 % of 20
HANG = "sk-chaos-hang-00000001"
DROP = "sk-chaos-drop-00000001"
GEMINI_GOOD = [f"AIza-chaos-good-{i:08d}" for i in range(5)]
GEMINI_BAD = [f"AIza-chaos-invalid-{i:08d}" for i in range(3)] + [
    f"AIza-chaos-ratelimited-{i:08d}" for i in range(2)
]


async def _leave_mid_stream(url: str, rounds: int) -> int:
    """Open streams and walk away after the first chunk; returns how many were left."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=OPENAI_TOKEN, max_retries=0)
    left = 0
    try:
        for _ in range(rounds):
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True
            )
            async for _chunk in stream:
                break
            await stream.close()
            left += 1
    finally:
        await client.close()
    return left


async def test_bad_keys_hangs_drops_and_disconnects(tmp_path: Path) -> None:
    baseline = asyncio.all_tasks()
    async with FakeUpstream(chunks=4, chunk_delay=0.05) as fake:
        write_keys(tmp_path / "keys" / "openai", GOOD + INVALID + LIMITED + [HANG, DROP])
        write_keys(tmp_path / "keys" / "gemini", GEMINI_GOOD + GEMINI_BAD)
        fake.set_behavior(DROP, Behavior(drop_after_chunks=1))
        settings = chaos_settings(
            tmp_path,
            fake,
            gateway_policy={"egress_rate_limit": {"min_keys": 5, "window_sec": 5}},
        )
        async with start_gateway(settings) as gw:
            load = Load(gw.url, clients=12)
            load.start()
            await eventually(lambda: len(load.ok()) >= 50, within=30)
            left = await asyncio.gather(*[_leave_mid_stream(gw.url, 5) for _ in range(4)])
            await eventually(lambda: len(load.ok()) >= 300, within=60)
            await load.stop()
            gateway = gw.gateway
            assert gateway.writer is not None
            await gateway.writer.flush()

            errors = load.errors()
            assert sum(left) == 20
            # the only errors: streams the dropping key broke after their first byte
            assert all(e.status is None for e in errors), errors[:5]
            assert len(errors) <= fake.calls(DROP), (len(errors), fake.calls(DROP), errors[:5])
            assert fake.calls(HANG) >= 1  # the hanging key was tried, and the client never saw it

            assert gateway.store is not None
            snapshot = await gateway.store.snapshot()
            by_secret = {row.secret: row.status for row in snapshot.keys}
            for secret in GOOD + GEMINI_GOOD:
                assert by_secret[secret] in (KeyStatus.VALID, KeyStatus.UNTESTED), secret
            for secret in INVALID:
                assert by_secret[secret] is KeyStatus.INVALID_KEY
            pool = gateway.providers["openai"].pool
            ids = {row.secret: row.key_id for row in snapshot.keys}
            for secret in GOOD:
                state = pool.state(ids[secret], "gpt-4o-mini", gateway.clock())
                assert state in ("healthy", "untested"), (secret, state)
            await eventually(
                lambda: leaks(gateway, fake) == dict.fromkeys(leaks(gateway, fake), 0), within=5
            )
        assert gateway.upstream.open_connections() == 0
    await asyncio.sleep(0)  # one turn of the loop, for tasks that just ended to be done
    left_over = {t for t in asyncio.all_tasks() - baseline if not t.done()}
    assert left_over == {asyncio.current_task()} or not left_over, left_over
