"""`timeouts.write` on direct traffic, over real loopback sockets on asyncio's loop and uvloop:
while part of a request is unsent, each `write` seconds in which the upstream takes none of it
ends the attempt (`WriteTimeout`, a timeout); an upstream that takes it slowly but steadily is
waited for; once all of it is sent, `read` bounds the wait for the answer.

The server's receive buffer is small and the body large, so most of the body waits in the
client's transport until the server reads it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from llmgateway.config.settings import Timeouts
from llmgateway.core.egress import DIRECT
from llmgateway.core.outcomes import ErrorReason
from llmgateway.transport.errors import exception_reason
from llmgateway.transport.http1 import ReadTimeout, WriteTimeout
from llmgateway.transport.upstream import HttpUpstream

BODY = bytes(16 << 20)
STEP = 1 << 20
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LOOPS = ["asyncio", "uvloop"]


def run(loop: str, scenario: Coroutine[Any, Any, None]) -> None:
    (uvloop.run if loop == "uvloop" else asyncio.run)(scenario)


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    """A raw server on 127.0.0.1 with a 64 KiB receive buffer; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.bind(("127.0.0.1", 0))
    tasks: set[asyncio.Task[Any]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        # the client went away, or the server is shutting down
        with contextlib.suppress(
            ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError
        ):
            await handler(reader, writer)
        writer.close()

    server = await asyncio.start_server(serve, sock=sock)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1/x"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def body_length(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    found = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
    assert found is not None
    return int(found[1])


async def takes_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.Event().wait()


async def takes_it_slowly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    left = await body_length(reader)
    while left:
        left -= len(await reader.readexactly(min(STEP, left)))
        await asyncio.sleep(0.1)  # 1 MiB every 0.1 s: the whole body takes over a second
    writer.write(OK)
    await writer.drain()
    await asyncio.Event().wait()


async def takes_it_then_says_nothing(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await reader.readexactly(await body_length(reader))
    await asyncio.Event().wait()


async def attempt(url: str, timeouts: Timeouts) -> bytes:
    upstream = HttpUpstream()
    try:
        answer = await upstream.request(DIRECT, "POST", url, {}, BODY, timeouts)
        try:
            return await answer.read(1024)
        finally:
            answer.close()
    finally:
        await upstream.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_an_upstream_that_takes_none_of_the_request_times_out_after_write(loop: str) -> None:
    async def scenario() -> None:
        async with serving(takes_nothing) as url:
            started = time.monotonic()
            with pytest.raises(WriteTimeout) as caught:
                await attempt(url, Timeouts(write=0.3, read=30))
            assert 0.25 <= time.monotonic() - started < 3
            assert exception_reason(caught.value) is ErrorReason.TIMEOUT

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_an_upstream_that_takes_the_request_slowly_is_waited_for(loop: str) -> None:
    async def scenario() -> None:
        async with serving(takes_it_slowly) as url:
            started = time.monotonic()
            assert await attempt(url, Timeouts(write=0.5, read=30)) == b"ok"
            assert time.monotonic() - started > 1.0  # longer than write, in steps shorter

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_once_the_request_is_sent_read_bounds_the_wait(loop: str) -> None:
    async def scenario() -> None:
        async with serving(takes_it_then_says_nothing) as url:
            started = time.monotonic()
            with pytest.raises(ReadTimeout):
                await attempt(url, Timeouts(write=30, read=0.3))
            assert 0.25 <= time.monotonic() - started < 3

    run(loop, scenario())
