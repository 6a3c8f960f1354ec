"""`stream_usage` over real HTTP: `inject` asks the upstream for the usage chunk and the client
receives, byte for byte, the stream it would have received without it; a client's own
`stream_options` is left alone; `never` forwards the body untouched and counts the stream as
missing; `llmgateway_tokens_total` counts what was read, by direction."""

from __future__ import annotations

from typing import Any

import httpx2 as httpx
import orjson
import pytest

from llmgateway.testing import wire
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import OPENAI_TOKEN, GatewayFactory

GOOD = "sk-good-openai-000000000001"
CHUNKS = 5
AUTH = {"authorization": f"Bearer {OPENAI_TOKEN}"}


@pytest.fixture
def fake_options() -> dict[str, Any]:
    return {"chunks": CHUNKS}


async def streamed(url: str, body: dict[str, Any]) -> bytes:
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await client.post(f"{url}/v1/chat/completions", json=body, headers=AUTH)
        assert reply.status_code == 200
        return reply.content


def tokens_total(started: list[Any]) -> dict[tuple[str, str], float]:
    metrics = started[-1].state.edge.attempt_loop.metrics
    metrics.flush()
    found: dict[tuple[str, str], float] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name in ("llmgateway_tokens_total", "llmgateway_usage_missing_total"):
                direction = sample.labels.get("direction", "missing")
                found[(sample.labels["model"], direction)] = sample.value
    return found


ACCOUNTING = {"token_accounting": True}
BODY = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


async def test_inject_gives_the_client_the_stream_it_asked_for(
    gateway: GatewayFactory, fake: FakeUpstream, started: list[Any]
) -> None:
    plain = b"".join(wire.openai_chunks("gpt-4o-mini", CHUNKS, False))
    with_usage = b"".join(wire.openai_chunks("gpt-4o-mini", CHUNKS, True))
    async with gateway(
        gateway_section=ACCOUNTING, gateway_policy={"stream_usage": "inject"}
    ) as url:
        assert await streamed(url, BODY) == plain
        seen = fake.last_request(GOOD)
        assert seen is not None
        assert orjson.loads(seen.body)["stream_options"] == {"include_usage": True}
        assert seen.body.endswith(orjson.dumps(BODY)[1:])  # the client's bytes, spliced into

        asked = BODY | {"stream_options": {"include_usage": True}}
        assert await streamed(url, asked) == with_usage  # its usage chunk, as the upstream sent
        refused = BODY | {"stream_options": {"include_usage": False}}
        assert await streamed(url, refused) == plain
        seen = fake.last_request(GOOD)
        assert seen is not None
        assert seen.body == orjson.dumps(refused)  # a client's own stream_options: untouched
        counted = tokens_total(started)
    # the third stream carried no usage: counted as missing, not guessed
    assert counted[("gpt-4o-mini", "input")] == 2 * wire.PROMPT_TOKENS
    assert counted[("gpt-4o-mini", "output")] == 2 * CHUNKS
    assert counted[("gpt-4o-mini", "missing")] == 1


async def test_never_forwards_the_body_untouched(
    gateway: GatewayFactory, fake: FakeUpstream, started: list[Any]
) -> None:
    async with gateway(gateway_section=ACCOUNTING, gateway_policy={"stream_usage": "never"}) as url:
        assert await streamed(url, BODY) == b"".join(
            wire.openai_chunks("gpt-4o-mini", CHUNKS, False)
        )
        seen = fake.last_request(GOOD)
        assert seen is not None
        assert seen.body == orjson.dumps(BODY)
        assert tokens_total(started)[("gpt-4o-mini", "missing")] == 1
