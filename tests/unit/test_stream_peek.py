"""The peek of a streamed answer (`commit: first_event`): decided by the first event, bounded
by its wait without losing a byte, and never mistaking a client's cancellation for its own
timer's, on an in-memory response (no socket, no sleep: a wait of 0 rings at the next turn of
the loop)."""

from __future__ import annotations

import asyncio

import pytest

from llmgateway.conductor.stream_peek import peek
from llmgateway.core.stream_commit import Decision
from llmgateway.testing.memory_upstream import MemoryResponse, Part, ScriptedResponse

FIRST = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
REST = b"data: [DONE]\n\n"
PING = b": keep-alive\n\n"


def stream(*parts: Part) -> MemoryResponse:
    scripted = ScriptedResponse(200, {"content-type": "text/event-stream"}, list(parts))
    return MemoryResponse(scripted, None)


async def rest_of(response: MemoryResponse) -> bytes:
    return b"".join([chunk async for chunk in response.chunks()])


async def test_the_first_event_decides_and_the_rest_is_left_to_read() -> None:
    response = stream(PING, FIRST, REST)
    found = await peek(response, 5.0)
    assert found.decision is Decision.COMMIT
    assert found.held == PING + FIRST
    assert await rest_of(response) == REST


async def test_an_error_event_decides_an_error() -> None:
    error = b'data: {"error":{"code":429,"message":"slow down"}}\n\n'
    found = await peek(stream(error), 5.0)
    assert (found.decision, found.status) == (Decision.ERROR, 429)


async def test_no_event_within_the_wait_commits_what_came_and_the_task_goes_on() -> None:
    later = asyncio.Event()
    response = stream(PING, later, FIRST)
    found = await peek(response, 0.0)
    assert (found.decision, found.held) == (Decision.COMMIT, PING)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # the timer's cancellation taken back
    await asyncio.sleep(0)  # and no cancellation left pending for the next await
    later.set()
    assert await rest_of(response) == FIRST


async def test_no_event_by_the_deadline_is_a_timeout() -> None:
    with pytest.raises(TimeoutError):
        await peek(stream(PING, asyncio.Event()), 0.0, last=True)


async def test_a_client_gone_during_the_peek_cancels_it() -> None:
    task = asyncio.create_task(peek(stream(asyncio.Event()), 60.0))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_client_gone_as_the_timer_rings_is_still_a_cancellation() -> None:
    task = asyncio.create_task(peek(stream(asyncio.Event()), 0.0))
    await asyncio.sleep(0)  # the peek waits; its timer is due
    await asyncio.sleep(0)  # this turn runs the test, then the timer
    task.cancel()  # the client leaves in the very turn the timer rings
    with pytest.raises(asyncio.CancelledError):
        await task
