"""A streamed answer held back until its first event (`commit: first_event`): the I/O around
`core.stream_commit.FirstEvent`.

`peek()` reads the upstream's chunks into the detector until it decides, the stream ends, or
the peek time is up (then the stream is committed undecided). A read cut short by the timeout
loses nothing: both transports keep what arrived in the response's buffer, and
`UpstreamResponse.chunks()` reads on from there; the bytes the peek took are `Peek.held`, sent
to the client first.
"""

from __future__ import annotations

import asyncio

from llmgateway.core.stream_commit import Decision, FirstEvent, Peek
from llmgateway.transport.upstream import UpstreamResponse


def is_event_stream(response: UpstreamResponse) -> bool:
    """Whether the answer is an SSE stream (the only kind held back)."""
    return "text/event-stream" in response.headers.get("content-type", "")


async def peek(response: UpstreamResponse, wait: float, *, last: bool = False) -> Peek:
    """Read `response` until its first event decides, for at most `wait` seconds; then commit
    undecided, or (`last`: the wait ends at the request's deadline) raise `TimeoutError`, as
    an upstream that did not answer in time: a stream undecided at the deadline is a 504,
    never a 200 about to fail."""
    detector = FirstEvent()
    chunks = response.chunks()
    alarm = _Alarm(max(wait, 0.0))
    try:
        async for chunk in chunks:
            found = detector.feed(chunk)
            if found.decision is not Decision.NEED_MORE:
                return found
        return detector.end()
    except asyncio.CancelledError:
        if not alarm.rang():
            raise
        if last:
            raise TimeoutError("the stream's first event did not come in time") from None
        return detector.commit()
    finally:
        alarm.stop()
        await chunks.aclose()  # the rest is read by a fresh `chunks()`


class _Alarm:
    """What `asyncio.timeout` does for the peek, at a fifth of its cost (it runs once per
    streamed request): cancel the current task after `delay` seconds unless stopped first.
    `rang()` tells a CancelledError of the alarm's from anyone else's (a client gone)."""

    __slots__ = ("_cancelling", "_handle", "_rung", "_task")

    def __init__(self, delay: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._cancelling = task.cancelling()
        self._rung = False
        self._handle = asyncio.get_running_loop().call_later(delay, self._ring)

    def _ring(self) -> None:
        self._rung = True
        self._task.cancel()

    def rang(self) -> bool:
        """Whether the CancelledError being handled is the alarm's alone (taken back, then)."""
        return self._rung and self._task.uncancel() <= self._cancelling

    def stop(self) -> None:
        self._handle.cancel()
