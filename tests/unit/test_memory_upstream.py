"""The in-memory upstream itself: scripted answers, bodies whole and in parts, waits on events
bounded by the request's deadline, faults, and what it records."""

from __future__ import annotations

import asyncio

import pytest

from llmgateway.config.settings import Timeouts
from llmgateway.core.egress import DIRECT
from llmgateway.testing.memory_upstream import (
    MemoryUpstream,
    ScriptedResponse,
    SentRequest,
    connect_error,
    read_timeout,
    reset,
)
from llmgateway.transport import http1
from llmgateway.transport.upstream import Upstream

TIMEOUTS = Timeouts()
URL = "https://upstream.test/v1/chat/completions"


async def call(
    upstream: Upstream, deadline: float | None = None, headers: dict[str, str] | None = None
) -> bytes:
    sent = headers or {}
    response = await upstream.request(DIRECT, "POST", URL, sent, b"{}", TIMEOUTS, deadline)
    try:
        return await response.read(1024)
    finally:
        response.close()


async def test_answers_in_turn_and_records_what_it_was_sent() -> None:
    upstream = MemoryUpstream.answering(ScriptedResponse(200, body=b"one"), connect_error())
    assert await call(upstream, headers={"authorization": "Bearer sk-one"}) == b"one"
    with pytest.raises(http1.ConnectError):
        await call(upstream, headers={"x-goog-api-key": "AIza-two"})
    assert [sent.key for sent in upstream.requests] == ["sk-one", "AIza-two"]
    assert upstream.requests[0] == SentRequest(
        DIRECT, "POST", URL, {"authorization": "Bearer sk-one"}, b"{}", None
    )
    with pytest.raises(AssertionError, match="more requests than its script"):
        await call(upstream)


async def test_a_whole_body_has_its_length_and_parts_stream() -> None:
    whole = MemoryUpstream(lambda sent: ScriptedResponse(200, {"Content-Type": "x/y"}, b"abc"))
    response = await whole.request(DIRECT, "GET", URL, {}, b"", TIMEOUTS)
    assert (response.content_length, response.headers["content-type"]) == (3, "x/y")
    assert await response.read_prefix(2) == b"ab"
    parts = MemoryUpstream(lambda sent: ScriptedResponse(200, body=[b"a", b"", b"bc"]))
    response = await parts.request(DIRECT, "GET", URL, {}, b"", TIMEOUTS)
    assert response.content_length is None
    assert [chunk async for chunk in response.chunks()] == [b"a", b"bc"]


async def test_a_body_over_the_limit_is_refused() -> None:
    upstream = MemoryUpstream(lambda sent: ScriptedResponse(200, body=[b"x" * 600, b"x" * 600]))
    with pytest.raises(http1.ResponseTooLarge):
        await call(upstream)
    assert upstream.open_connections() == 0


async def test_waits_are_events_and_end_at_the_deadline() -> None:
    head, more = asyncio.Event(), asyncio.Event()
    scripted = ScriptedResponse(200, body=[b"a", more, b"b"], after=head)
    upstream = MemoryUpstream(lambda sent: scripted)
    task = asyncio.create_task(call(upstream))
    await upstream.received(1)
    await asyncio.sleep(0)
    assert not task.done()  # the head waits for its event
    head.set()
    await asyncio.sleep(0)
    more.set()
    assert await task == b"ab"
    never = asyncio.Event()
    deadline = asyncio.get_running_loop().time() + 0.01
    waiting = MemoryUpstream(lambda sent: ScriptedResponse(200, after=never))
    with pytest.raises(http1.ReadTimeout):
        await call(waiting, deadline)
    stalled = MemoryUpstream(lambda sent: ScriptedResponse(200, body=[b"a", never]))
    with pytest.raises(http1.ReadTimeout):
        await call(stalled, asyncio.get_running_loop().time() + 0.01)


async def test_faults_mid_body_and_before_the_head() -> None:
    cut = MemoryUpstream(lambda sent: ScriptedResponse(200, body=[b"first", reset()]))
    response = await cut.request(DIRECT, "GET", URL, {}, b"", TIMEOUTS)
    chunks = response.chunks()
    assert await anext(chunks) == b"first"
    with pytest.raises(http1.Disconnected):
        await anext(chunks)
    assert cut.open_connections() == 1  # until the caller closes it
    response.close()
    assert cut.open_connections() == 0

    def timing_out(sent: SentRequest) -> ScriptedResponse:
        raise read_timeout()

    with pytest.raises(TimeoutError):
        await call(MemoryUpstream(timing_out))


async def test_an_async_handler_may_wait() -> None:
    go = asyncio.Event()

    async def handler(sent: SentRequest) -> ScriptedResponse:
        await go.wait()
        return ScriptedResponse(204)

    upstream = MemoryUpstream(handler)
    task = asyncio.create_task(call(upstream))
    await upstream.received(1)
    go.set()
    assert await task == b""
    await upstream.close()
