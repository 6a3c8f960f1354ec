"""A hostile upstream behind the real gateway: the client gets the real answer when there is
one (interim answers skipped), else a 502, and the gateway keeps serving."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from llmgateway.conductor.app import create_app
from llmgateway.conductor.serving import running
from llmgateway.testing.configs import write_keys
from llmgateway.testing.hostile import (
    SWITCHING_PROTOCOLS,
    HostileUpstream,
    Peer,
    Request,
    Script,
    answer,
    endless_body,
    endless_headers,
    interim,
)
from llmgateway.transport.http1 import Client
from tests.helpers import OPENAI_TOKEN, eventually, gateway_settings

pytestmark = pytest.mark.security

CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
REPLY = orjson.dumps({"choices": [{"message": {"role": "assistant", "content": "hello"}}]})
JSON = [("content-type", "application/json")]
RESPONSE_LIMIT = 64 << 10


@pytest.fixture
async def upstream() -> AsyncIterator[HostileUpstream]:
    async with HostileUpstream() as server:
        yield server


@pytest.fixture
async def gateway(tmp_path: Path, upstream: HostileUpstream) -> AsyncIterator[str]:
    """The gateway, its openai provider on the hostile upstream (one key, no retries; a small
    plain answer is read whole, at most `RESPONSE_LIMIT` bytes of it)."""
    write_keys(tmp_path / "keys" / "openai", ["sk-hostile-000000000000001"])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-unused-00000000000001"])
    policy = {"retry": {"enabled": False}}
    settings = gateway_settings(
        tmp_path,
        upstream.url,
        {"max_response_bytes": RESPONSE_LIMIT},
        gateway_policy=policy,
    )
    async with running(create_app(settings, rng=random.Random(7))) as url:
        yield url


async def chat(url: str) -> tuple[int, bytes]:
    client = Client()
    try:
        headers = {"authorization": f"Bearer {OPENAI_TOKEN}", "content-type": "application/json"}
        response = await client.request(
            "POST", f"{url}/v1/chat/completions", headers, CHAT, connect_timeout=5, read_timeout=10
        )
        try:
            return response.status, await response.read(4 << 20)
        finally:
            response.close()
    finally:
        await client.close()


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(interim(100) + answer(REPLY, headers=JSON), id="100-continue"),
        pytest.param(interim(103) + interim(100) + answer(REPLY, headers=JSON), id="103-and-100"),
    ],
)
async def test_the_client_gets_the_real_answer(
    gateway: str, upstream: HostileUpstream, script: bytes
) -> None:
    upstream.script = script
    assert await chat(gateway) == (200, REPLY)


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(SWITCHING_PROTOCOLS, id="101"),
        pytest.param(answer(REPLY, status=999), id="999"),
        pytest.param(endless_headers(limit=32 << 20), id="endless-headers"),
    ],
)
async def test_a_hostile_answer_is_a_502_and_the_gateway_serves_on(
    gateway: str, upstream: HostileUpstream, script: Script
) -> None:
    upstream.script = script
    status, body = await chat(gateway)
    assert status == 502
    assert b"upstream" in body
    upstream.script = answer(REPLY, headers=JSON)
    assert await chat(gateway) == (200, REPLY)


@pytest.mark.parametrize("chunked", [False, True], ids=["close-delimited", "chunked"])
async def test_an_endless_answer_is_relayed_and_dropped_when_the_client_leaves(
    gateway: str, upstream: HostileUpstream, chunked: bool
) -> None:
    upstream.script = endless_body(chunked=chunked, limit=64 << 20)
    client = Client()
    try:
        headers = {"authorization": f"Bearer {OPENAI_TOKEN}", "content-type": "application/json"}
        response = await client.request(
            "POST",
            f"{gateway}/v1/chat/completions",
            headers,
            CHAT,
            connect_timeout=5,
            read_timeout=10,
        )
        assert response.status == 200
        got = 0
        async for chunk in response.chunks():  # relayed as it comes, never read whole
            got += len(chunk)
            if got > 4 * RESPONSE_LIMIT:
                break
        response.close()
    finally:
        await client.close()
    # the client left: the gateway dropped the upstream's connection instead of draining it
    await eventually(lambda: upstream.hangups > 0, within=5)
    assert upstream.written < 32 << 20
    upstream.script = answer(REPLY, headers=JSON)
    assert await chat(gateway) == (200, REPLY)


async def test_an_answer_declared_over_the_limit_is_a_502_and_its_connection_closed(
    gateway: str, upstream: HostileUpstream
) -> None:
    # small enough to be read whole (up to 1 MiB), larger than max_response_bytes
    length = 2 * RESPONSE_LIMIT
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % length
    )

    async def script(request: Request, peer: Peer) -> None:
        await peer.send(head)  # and then nothing: the gateway does not wait for it
        await peer.until_closed()

    upstream.script = script
    status, _ = await chat(gateway)
    assert status == 502
    # the connection was dropped, not left checked out
    await eventually(lambda: upstream.hangups > 0, within=2)
