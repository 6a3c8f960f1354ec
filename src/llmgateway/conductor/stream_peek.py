"""A streamed answer held back until its first event (`commit: first_event`): the I/O around
`core.stream_commit.FirstEvent`.

`peek()` reads the upstream's chunks into the detector until it decides, the stream ends, or
the peek time is up (then the stream is committed undecided). A committed stream goes on from
where the peek stopped: `Peeked.rest` yields the held bytes, then the read the timeout caught
in flight (never cancelled: cancelling a chunk read would end the stream), then the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from llmgateway.core.stream_commit import Decision, FirstEvent, Peek
from llmgateway.transport.upstream import UpstreamResponse


@dataclass(slots=True)
class Peeked:
    """What the peek found, and the stream to relay when it committed."""

    peek: Peek
    rest: AsyncIterator[bytes]


def is_event_stream(response: UpstreamResponse) -> bool:
    """Whether the answer is an SSE stream (the only kind held back)."""
    return "text/event-stream" in response.headers.get("content-type", "")


async def peek(response: UpstreamResponse, wait: float) -> Peeked:
    """Read `response` until its first event decides, for at most `wait` seconds."""
    detector = FirstEvent()
    chunks = response.chunks()
    loop = asyncio.get_running_loop()
    until = loop.time() + max(wait, 0.0)
    while True:
        reading = asyncio.ensure_future(anext(chunks))
        done, _ = await asyncio.wait((reading,), timeout=max(until - loop.time(), 0.0))
        if not done:
            reading.add_done_callback(_retrieved)
            found = detector.commit()
            return Peeked(found, _resumed(found.held, reading, chunks))
        try:
            chunk = reading.result()
        except StopAsyncIteration:
            return Peeked(detector.end(), _nothing())
        found = detector.feed(chunk)
        if found.decision is not Decision.NEED_MORE:
            return Peeked(found, _resumed(found.held, None, chunks))


async def _resumed(
    held: bytes, reading: asyncio.Future[bytes] | None, chunks: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    try:
        if held:
            yield held
        if reading is not None:
            try:
                yield await reading
            except StopAsyncIteration:
                return
        async for chunk in chunks:
            yield chunk
    finally:
        if reading is not None and not reading.done():
            reading.cancel()


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield  # an empty async generator


def _retrieved(reading: asyncio.Future[bytes]) -> None:
    """A read left in flight may fail once nobody waits for it any more: its error is read
    here so that asyncio does not log it as never retrieved."""
    if not reading.cancelled():
        with contextlib.suppress(BaseException):
            reading.exception()
