"""An Anthropic provider under attack, over real sockets against the real gateway: a hostile
upstream speaking the Messages API (garbage SSE, an event that never ends, a stream of pings
that never ends) is bounded, and a client's wrong token sent as `x-api-key` is a 401 in
Anthropic's shape that never echoes the token."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import orjson
import pytest

from llmgateway.core.stream_commit import PEEK_LIMIT_BYTES
from llmgateway.testing.hostile import CLOSE, HostileUpstream, Peer, Request, Script, answer
from tests.anthropic_rig import CLAUDE_TOKEN, MODEL, claude_settings
from tests.helpers import Running, eventually, start_gateway
from tests.security.test_routes_hostile import forever

pytestmark = pytest.mark.security

APP = "gw-hostile-claude-app-7d1e93b2c4a0"
KEY = "sk-ant-hostile-Q8v3Lm5Tx9Rb2Nc7"
PEEK_SEC = 1.0
SSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"
MESSAGE = orjson.dumps(
    {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
)
STREAM = orjson.dumps({**orjson.loads(MESSAGE), "stream": True})
REPLY = orjson.dumps({"type": "message", "content": [{"type": "text", "text": "hello"}]})
JSON = (("content-type", "application/json"),)


@dataclass(slots=True)
class Rig:
    running: Running
    upstream: HostileUpstream


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """`claude` on a hostile upstream (one key, no retries), route `sonnet` over it committed
    at the first event (peek `PEEK_SEC`), a gateway token for it."""
    async with HostileUpstream(answer(REPLY, headers=JSON)) as upstream:
        top = {
            "routes": {
                "sonnet": {
                    "targets": [{"provider": "claude", "model": MODEL}],
                    "peek_timeout_sec": PEEK_SEC,
                }
            },
            "gateway": {"tokens": [{"name": "app", "token": APP}]},
        }
        settings = claude_settings(
            tmp_path,
            upstream.url,
            [KEY],
            top=top,
            gateway_policy={"retry": {"enabled": False}},
            timeouts={"connect": 2, "read": 5, "total": 8},
        )
        async with start_gateway(settings) as running:
            yield Rig(running, upstream)


async def post(rig: Rig, body: bytes, token: str = CLAUDE_TOKEN) -> httpx.Response:
    headers = {"x-api-key": token, "content-type": "application/json"}
    async with httpx.AsyncClient(timeout=20) as client:
        response = await client.post(
            f"{rig.running.url}/v1/messages", content=body, headers=headers
        )
    assert KEY.encode() not in response.content
    return response


@dataclass(frozen=True, slots=True)
class Streamed:
    status: int
    first_at: float  # seconds from the request to the first body bytes
    first: bytes
    body: bytes


async def stream(rig: Rig, body: bytes, enough: int = 1 << 18) -> Streamed:
    """POST a streamed message as `sonnet`; read until `enough` bytes came, then leave."""
    headers = {"x-api-key": APP, "content-type": "application/json"}
    began = time.monotonic()
    chunks: list[bytes] = []
    first_at = 0.0
    async with (
        httpx.AsyncClient(timeout=20) as client,
        client.stream("POST", f"{rig.running.url}/v1/messages", content=body, headers=headers) as r,
    ):
        async for chunk in r.aiter_raw():
            first_at = first_at or time.monotonic() - began
            chunks.append(chunk)
            if sum(map(len, chunks)) >= enough:
                break
        status = r.status_code
    data = b"".join(chunks)
    assert KEY.encode() not in data
    return Streamed(status, first_at, chunks[0] if chunks else b"", data)


def sonnet(streamed: bool = True) -> bytes:
    return orjson.dumps({**orjson.loads(STREAM), "model": "sonnet", "stream": streamed})


@pytest.mark.parametrize(
    "script",
    [
        pytest.param([SSE + b"\x00\xff\xfe garbage \x80" * 2000, CLOSE], id="binary"),
        pytest.param([SSE + b"event: message_start\ndata: {{{{\n\n" * 500, CLOSE], id="bad-json"),
        pytest.param([SSE + b"event: error\ndata: \xff[[[[\n\n", CLOSE], id="bad-error"),
    ],
)
async def test_garbage_sse_is_never_a_crash_and_the_gateway_serves_on(
    rig: Rig, script: Script
) -> None:
    rig.upstream.script = script
    got = await stream(rig, sonnet())
    assert got.status in (200, 502)  # relayed as it came, or refused as the upstream's fault
    direct = await post(rig, STREAM)
    assert direct.status_code in (200, 502)
    rig.upstream.script = answer(REPLY, headers=JSON)
    answered = await post(rig, MESSAGE)
    assert (answered.status_code, answered.content) == (200, REPLY)


async def test_an_event_that_never_ends_is_held_at_most_the_peek_limit(rig: Rig) -> None:
    rig.upstream.script = forever(b"event: message_start\ndata: " + b"x" * (1 << 20), 0.5)
    got = await stream(rig, sonnet(), enough=1 << 20)
    assert got.status == 200
    assert got.first_at < PEEK_SEC + 1.0
    assert len(got.first) <= 2 * PEEK_LIMIT_BYTES  # never the whole event held


async def test_endless_pings_are_held_at_most_64_kib_then_dropped_when_the_client_leaves(
    rig: Rig,
) -> None:
    ping = b'event: ping\ndata: {"type": "ping"}\n\n'
    start = b'event: message_start\ndata: {"type": "message_start", "message": {}}\n\n'

    async def pings(request: Request, peer: Peer) -> None:
        await peer.send(SSE + start)
        while True:  # until the gateway hangs up: ConnectionError, counted in `hangups`
            await peer.send(ping * 256)
            await asyncio.sleep(0)

    rig.upstream.script = pings
    got = await stream(rig, sonnet(), enough=1 << 20)
    assert got.status == 200
    assert got.first.startswith(start)
    assert len(got.first) <= 2 * PEEK_LIMIT_BYTES
    assert got.first_at < PEEK_SEC  # the 64 KiB limit committed it, not the timeout
    await eventually(lambda: rig.upstream.hangups > 0, within=5)  # not drained after we left


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/models", "/v1/chat/completions"])
async def test_a_wrong_x_api_key_is_an_anthropic_401_without_the_token(rig: Rig, path: str) -> None:
    wrong = "gw-wrong-claude-token-3f9a7c1e5b"
    headers = {"x-api-key": wrong, "content-type": "application/json"}
    async with httpx.AsyncClient(timeout=20) as client:
        response = await client.request(
            "GET" if path == "/v1/models" else "POST",
            f"{rig.running.url}{path}",
            content=b"" if path == "/v1/models" else MESSAGE,
            headers=headers,
        )
    assert response.status_code == 401
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    assert wrong not in response.text
    assert wrong[:12] not in response.text
    assert rig.upstream.seen == []


async def test_an_upstream_error_echoing_the_key_reaches_the_client_scrubbed(rig: Rig) -> None:
    async def echo_key(request: Request, peer: Peer) -> None:
        error = {"type": "error", "error": {"type": "invalid_request_error", "message": KEY}}
        await peer.send(answer(orjson.dumps(error), status=400, headers=JSON))

    rig.upstream.script = echo_key
    response = await post(rig, MESSAGE)  # `post` asserts the key is not in the answer
    assert response.status_code == 400
