"""Token accounting against a hostile upstream, over real sockets: a usage object that never
ends, an endless line while the gateway strips the usage chunk, and absurd counts. The client
gets what the upstream sent as it comes, nothing is held beyond its bound, and nothing absurd
is counted (the store's write-behind is never poisoned)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmgateway.testing.configs import write_keys
from llmgateway.testing.hostile import CLOSE, HostileUpstream, Peer, Request
from tests.helpers import OPENAI_TOKEN, Running, gateway_settings, start_gateway

pytestmark = pytest.mark.security

SSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
BODY = orjson.dumps(
    {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
)


@pytest.fixture
async def upstream() -> AsyncIterator[HostileUpstream]:
    async with HostileUpstream() as server:
        yield server


@pytest.fixture
async def gateway(tmp_path: Path, upstream: HostileUpstream) -> AsyncIterator[Running]:
    """The gateway, its openai provider on the hostile upstream, `stream_usage: inject`."""
    write_keys(tmp_path / "keys" / "openai", ["sk-hostile-000000000000001"])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-unused-00000000000001"])
    policy = {"retry": {"enabled": False}, "stream_usage": "inject"}
    settings = gateway_settings(
        tmp_path, upstream.url, {"token_accounting": True}, gateway_policy=policy
    )
    async with start_gateway(settings) as running:
        yield running


async def first_bytes(url: str, enough: int, within: float = 5.0) -> bytes:
    """A streamed chat over a raw socket: its first `enough` body bytes (after the head; still
    chunk-framed), or all of them when the answer ends first."""
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {OPENAI_TOKEN}"
        f"\r\nconnection: close\r\ncontent-type: application/json\r\n"
        f"content-length: {len(BODY)}\r\n\r\n"
    ).encode()
    port = int(url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + BODY)
        got = b""
        async with asyncio.timeout(within):
            while b"\r\n\r\n" not in got:
                got += await reader.read(65536)
            got = got.split(b"\r\n\r\n", 1)[1]
            while len(got) < enough:
                piece = await reader.read(65536)
                if not piece:
                    break
                got += piece
        return got
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def endless(first: bytes, piece: bytes) -> Any:
    async def script(request: Request, peer: Peer) -> None:
        with contextlib.suppress(ConnectionError):
            await peer.send(SSE + first)
            while True:
                await peer.send(piece)
                await asyncio.sleep(0.001)
        peer.close()

    return script


def tokens(running: Running) -> dict[str, float]:
    metrics = running.app.state.edge.attempt_loop.metrics
    metrics.flush()
    return {
        sample.labels.get("direction", "missing"): sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name in ("llmgateway_tokens_total", "llmgateway_usage_missing_total")
    }


async def test_a_usage_object_that_never_ends_is_relayed_not_held(
    gateway: Running, upstream: HostileUpstream
) -> None:
    upstream.script = endless(b'data: {"choices":[],"usage":{"prompt_tokens":1', b"0" * 4096)
    got = await first_bytes(gateway.url, 1 << 20)  # 1 MiB arrives: nothing is held back
    assert b'data: {"choices":[],"usage":{"prompt_tokens":1' in got[:64]
    assert len(got) >= 1 << 20


async def test_an_endless_line_while_stripping_is_relayed_as_it_comes(
    gateway: Running, upstream: HostileUpstream
) -> None:
    upstream.script = endless(b"data: ", b"x" * 4096)
    got = await first_bytes(gateway.url, 256 << 10)
    assert len(got) >= 256 << 10
    assert orjson.loads(upstream.seen[0].body)["stream_options"] == {"include_usage": True}


async def test_absurd_counts_are_not_counted(gateway: Running, upstream: HostileUpstream) -> None:
    usage = b'{"prompt_tokens":99999999999999999999,"completion_tokens":-7,"total_tokens":"x"}'
    upstream.script = [
        SSE + b'data: {"choices":[],"usage":' + usage + b"}\n\ndata: [DONE]\n\n",
        CLOSE,
    ]
    got = await first_bytes(gateway.url, 1 << 20)
    assert b"[DONE]" in got
    assert b'"usage"' not in got  # the usage-only chunk the gateway asked for is not relayed
    counted = tokens(gateway)
    assert counted.get("input", 0) == counted.get("output", 0) == 0
    assert counted["missing"] == 1
