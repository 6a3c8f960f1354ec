"""What one client may cost the gateway before its request reaches the edge: a head that never
ends, a head that never completes, connections that are never used, too many connections.
Each is sent over a raw socket to the real gateway (uvicorn with `EdgeProtocol`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2 as httpx
import orjson
import pytest

from llmgateway.conductor.app import create_app
from llmgateway.conductor.edge import EdgeLimits
from llmgateway.conductor.serving import running
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import OPENAI_TOKEN, eventually, forget_leftovers, gateway_settings

pytestmark = pytest.mark.security

HEAD_TIMEOUT = 0.5
MAX_CONNECTIONS = 8
CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    """The gateway on the fake upstream with a short head deadline and few connections;
    yields its URL and port."""
    write_keys(tmp_path / "keys" / "openai", ["sk-good-openai-000000000001"])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    async with FakeUpstream() as fake:
        settings = gateway_settings(tmp_path, fake)
        limits = EdgeLimits(header_timeout_sec=HEAD_TIMEOUT, max_connections=MAX_CONNECTIONS)
        async with running(create_app(settings, rng=random.Random(1)), limits=limits) as url:
            yield url, int(url.rsplit(":", 1)[1])


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def answer_of(reader: asyncio.StreamReader, within: float = 5.0) -> bytes:
    """Everything the gateway sends until it closes the connection."""
    async with asyncio.timeout(within):
        return await reader.read()


def chat_request(extra_headers: bytes = b"") -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n"
        b"authorization: Bearer " + OPENAI_TOKEN.encode() + b"\r\n"
        b"content-type: application/json\r\n"
        + extra_headers
        + b"content-length: %d\r\n\r\n" % len(CHAT)
    ) + CHAT


async def healthy(url: str) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{url}/v1/chat/completions",
            headers={"authorization": f"Bearer {OPENAI_TOKEN}"},
            content=CHAT,
        )
    assert answer.status_code == 200


async def test_a_head_that_never_completes_gets_408_and_the_connection_closes(
    gateway: tuple[str, int],
) -> None:
    url, port = gateway
    reader, writer = await connect(port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx-slow: ")
    started = time.monotonic()
    raw = await answer_of(reader)
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in raw
    assert orjson.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert time.monotonic() - started >= HEAD_TIMEOUT * 0.9
    writer.close()
    await healthy(url)


async def test_a_head_sent_a_byte_at_a_time_still_ends_at_the_deadline(
    gateway: tuple[str, int],
) -> None:
    """Trickling bytes does not reset the clock (uvicorn's keep-alive timer would be)."""
    _, port = gateway
    reader, writer = await connect(port)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx-slow: " + b"a" * 1000
    started = time.monotonic()
    closed = asyncio.create_task(answer_of(reader))
    for byte in head:
        if closed.done():
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(HEAD_TIMEOUT / 20)  # the client's pace: one byte at a time
    raw = await closed
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < HEAD_TIMEOUT * 4
    writer.close()


async def test_a_connection_that_never_speaks_is_closed(gateway: tuple[str, int]) -> None:
    _, port = gateway
    reader, writer = await connect(port)
    assert await answer_of(reader) == b""  # closed without a word: nothing was asked
    writer.close()


@pytest.mark.parametrize("where", ["one header", "many headers", "request line"])
async def test_a_head_over_64_kib_gets_431_without_being_read_on(
    gateway: tuple[str, int], where: str
) -> None:
    url, port = gateway
    reader, writer = await connect(port)
    if where == "one header":
        head = b"POST /v1/chat/completions HTTP/1.1\r\nx-big: " + b"a" * (1 << 20)
    elif where == "many headers":
        head = b"POST /v1/chat/completions HTTP/1.1\r\n" + b"x-h: aaaaaaaaaaaaaaaa\r\n" * 5000
    else:
        head = b"GET /v1/" + b"a" * (1 << 20)
    with contextlib.suppress(ConnectionError):  # the gateway may close while we still write
        writer.write(head)
        await writer.drain()
    raw = await answer_of(reader)
    assert raw.startswith(b"HTTP/1.1 431 ")
    assert orjson.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_head_too_large"
    writer.close()
    await healthy(url)


async def test_a_head_just_under_the_limit_is_served(gateway: tuple[str, int]) -> None:
    _, port = gateway
    reader, writer = await connect(port)
    writer.write(chat_request(b"x-pad: " + b"a" * 60_000 + b"\r\nconnection: close\r\n"))
    raw = await answer_of(reader)
    assert raw.startswith(b"HTTP/1.1 200 ")
    writer.close()


async def test_keep_alive_requests_each_get_a_fresh_head_deadline(
    gateway: tuple[str, int],
) -> None:
    """A kept-alive connection whose requests come slower than the head deadline, but each
    head in one piece, is served every time."""
    _, port = gateway
    reader, writer = await connect(port)
    for _ in range(3):
        writer.write(chat_request())
        status = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
        assert status.startswith(b"HTTP/1.1 200 ")
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        await reader.readexactly(length)
        await asyncio.sleep(HEAD_TIMEOUT * 0.6)  # idle between requests: keep-alive's business
    writer.close()


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """One answer with a content-length, head and body, off a kept-alive connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    return head + await reader.readexactly(length)


async def test_a_kept_alive_connection_whose_next_head_stalls_gets_408(
    gateway: tuple[str, int],
) -> None:
    """The deadline also holds for a head that begins after an answer on the same connection
    (the first head came whole, so no timer was running when the second began)."""
    _, port = gateway
    reader, writer = await connect(port)
    writer.write(chat_request())
    assert (await read_answer(reader)).startswith(b"HTTP/1.1 200 ")
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx-slow: ")
    started = time.monotonic()
    raw = await answer_of(reader)
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started >= HEAD_TIMEOUT * 0.9
    writer.close()


async def test_a_large_head_pipelined_behind_a_small_request_closes_the_connection(
    gateway: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    """Both in one write: the second head begins mid-data, yet its size is counted. The
    connection ends; no 431 is sent where the first request's answer belongs (it would be
    read as that answer), and nothing is logged as an error."""
    await forget_leftovers(caplog)
    url, port = gateway
    reader, writer = await connect(port)
    big = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n" + b"x-h: " + b"a" * 70_000
    with contextlib.suppress(ConnectionError):
        writer.write(chat_request() + big + b"\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
    raw = await answer_of(reader)
    # the data may arrive in two reads, the first answer then going out before the second
    # head is seen: a 200 (and then the 431) is right too
    assert raw == b"" or raw.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 200 " not in raw.partition(b"HTTP/1.1 431 ")[2]
    writer.close()
    await healthy(url)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_an_idle_kept_alive_connection_closes_after_the_keep_alive_time(
    tmp_path: Path,
) -> None:
    """The watchdog keeps uvicorn's keep-alive time: served, then idle, then closed; a
    connection that keeps asking stays open past it."""
    write_keys(tmp_path / "keys" / "openai", ["sk-good-openai-000000000001"])
    async with FakeUpstream() as fake:
        app = create_app(gateway_settings(tmp_path, fake), rng=random.Random(1))
        async with running(app, timeout_keep_alive=0.4) as url:
            port = int(url.rsplit(":", 1)[1])
            reader, writer = await connect(port)
            for _ in range(4):  # busy for longer than the keep-alive time: stays open
                writer.write(chat_request())
                assert (await read_answer(reader)).startswith(b"HTTP/1.1 200 ")
                await asyncio.sleep(0.15)  # the client's pace: busy, not idle
            started = time.monotonic()
            assert await answer_of(reader) == b""  # closed without a word
            assert 0.2 <= time.monotonic() - started < 2.0
            writer.close()


async def test_connections_beyond_the_cap_get_503_and_the_gateway_keeps_serving(
    gateway: tuple[str, int],
) -> None:
    url, port = gateway
    held = [await connect(port) for _ in range(MAX_CONNECTIONS)]
    reader, writer = await connect(port)
    raw = await answer_of(reader)
    assert raw.startswith(b"HTTP/1.1 503 ")
    writer.close()
    for _, idle in held:
        idle.close()

    async def serving() -> bool:
        try:
            await healthy(url)
        except (AssertionError, httpx.HTTPError):
            return False
        return True

    # the held connections leave as their closes are seen
    await eventually(serving, within=5, step=0.05)
