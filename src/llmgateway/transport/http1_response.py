"""An answer of `transport.http1` as the caller sees it: status, headers and a body read with
flow control, the waits bounded by the write timeout while the request is not all sent and by
the read timeout after, and the errors an exchange may end in.

The bytes arrive through its `Connection` (`transport.http1_connection`), which checks them.
`Response.read(limit)` stops at `limit`.
"""

from __future__ import annotations

import asyncio
import collections
import sys
from collections.abc import AsyncGenerator
from typing import Protocol

from llmgateway.transport.lazy_timer import LazyTimer


class Connection(Protocol):
    """The connection an answer arrives on (`http1_connection.Connection`), as the answer uses
    it: read flow control, what of the request is still unsent, and the hand-back."""

    @property
    def paused(self) -> bool: ...
    @property
    def sending(self) -> bool: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def unsent(self) -> int: ...
    def finish(self, reusable: bool) -> None: ...


PAUSE_ABOVE = 256 * 1024
"""Buffered body bytes above which the socket stops being read until the consumer catches up."""


class ReadTimeout(TimeoutError):
    """The upstream sent nothing for longer than the read timeout."""


class WriteTimeout(TimeoutError):
    """The upstream took none of the request's unsent bytes for longer than the write timeout."""


class Disconnected(ConnectionResetError):
    """The connection closed before the answer was complete, or the answer was malformed."""


class ProtocolError(Disconnected):
    """The upstream sent something that is not a valid HTTP/1.1 answer: malformed, a head too
    large or with too many fields, a status outside 100-599, a 101, bytes after the answer.
    The message holds a short reason, never what was sent."""


class ResponseTooLarge(ProtocolError):
    """A body read whole (`Response.read(limit)`) grew beyond its limit."""


class Response:
    """An upstream answer: status and headers (names lower-cased, duplicates joined with ", "),
    then the body.

    Read the body with `read(limit)`, `read_prefix()` or `chunks()`, then `close()`: the
    connection goes back to the pool when the body was read to its end, else it is dropped."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_deadline",
        "_due",
        "_eof",
        "_error",
        "_high",
        "_limit",
        "_read_timeout",
        "_timer",
        "_unsent",
        "_waiter",
        "_write_timeout",
        "content_length",
        "headers",
        "status",
    )

    def __init__(
        self, conn: Connection, read_timeout: float, write_timeout: float, deadline: float | None
    ) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.content_length: int | None = None
        self._conn: Connection | None = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._high = PAUSE_ABOVE  # above this many buffered bytes, `_over` decides
        self._limit = sys.maxsize  # what `read(limit)` allows
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._unsent = 0  # request bytes the upstream had not taken at the last look
        self._deadline = deadline
        # one timer per answer, not one per wait (`LazyTimer`); `_due`: the current wait's end
        self._due = 0.0
        self._timer: LazyTimer | None = None

    async def read(self, limit: int) -> bytes:
        """The whole body; `ResponseTooLarge` as soon as more than `limit` bytes arrived (what
        was buffered is dropped, and so is the connection)."""
        if self.content_length is not None and self.content_length > limit:
            self._too_large(limit)
        self._limit = limit
        self._high = min(PAUSE_ABOVE, limit)
        while not self._eof:
            if self._buffered > limit:
                self._too_large(limit)
            await self._wait()
        if self._buffered > limit:
            self._too_large(limit)
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return data

    async def read_prefix(self, limit: int) -> bytes:
        """Up to `limit` bytes of the body (fewer when it is shorter)."""
        while not self._eof and self._buffered < limit:
            await self._wait()
        data = b"".join(self._chunks)[:limit]
        self._chunks.clear()
        self._buffered = 0
        return data

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body piece by piece, as it arrives."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._conn is not None and self._buffered < PAUSE_ABOVE:
                    self._conn.resume()
                yield chunk
            elif self._eof:
                return
            else:
                await self._wait()

    def close(self) -> None:
        """Done with this answer; safe to call more than once."""
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish(reusable=self._eof and self._error is None)

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        if self._conn is not None and self._conn.paused:  # asked for more: read on
            self._conn.resume()
        loop = asyncio.get_running_loop()
        now = loop.time()
        conn = self._conn
        if conn is not None and conn.sending:  # part of the request is still to be taken
            self._unsent = conn.unsent()
            due = now + self._write_timeout
        else:
            due = now + self._read_timeout
        if self._deadline is not None:
            if self._deadline <= now:
                raise ReadTimeout("the request's deadline passed")
            due = min(due, self._deadline)
        self._due = due
        if self._timer is None:
            self._timer = LazyTimer(loop, self._silent)
        self._timer.at(due)
        waiter = self._waiter = loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _silent(self, now: float) -> float | None:
        """The timer fired: the wait in progress ends in `ReadTimeout` when its time is up,
        else the timer looks again when it will be."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            return None  # nobody waits: the next wait sets the timer
        if now < self._due:
            return self._due
        conn = self._conn
        if conn is not None and conn.sending and not self._past_deadline(now):
            unsent = conn.unsent()
            if unsent < self._unsent:  # it took some of the request: time for the next part
                self._unsent = unsent
                self._due = self._bounded(now + self._write_timeout)
                return self._due
            waiter.set_exception(WriteTimeout("the upstream took none of the request in time"))
            return None
        waiter.set_exception(ReadTimeout("the upstream sent nothing in time"))
        return None

    def _past_deadline(self, now: float) -> bool:
        return self._deadline is not None and now >= self._deadline

    def _bounded(self, due: float) -> float:
        return due if self._deadline is None else min(due, self._deadline)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _too_large(self, limit: int) -> None:
        error = ResponseTooLarge(f"the upstream's answer body is over {limit} bytes")
        self._chunks.clear()
        self._buffered = 0
        self._fail(error)
        raise error

    # fed by the connection
    def _sent(self, now: float) -> None:
        """The whole request is sent: the wait in progress, if any, is now for the answer."""
        if self._timer is not None and self._waiter is not None:
            self._due = self._bounded(now + self._read_timeout)
            self._timer.at(self._due)

    def _headers_done(self, status: int) -> None:
        self.status = status
        length = self.headers.get("content-length")
        if length is not None and length.isdigit():
            self.content_length = int(length)
        self._wake()

    def _body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > self._high:
            self._over()
        self._wake()

    def _over(self) -> None:
        """More is buffered than flow control or the read's limit allow."""
        if self._buffered > self._limit:
            self._too_large(self._limit)  # raised inside the parser: the connection is dropped
        if self._conn is not None:
            self._conn.pause()

    def _done(self) -> None:
        if self._error is None:  # a failed answer stays failed
            self._eof = True
            self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self._eof:
            self._error = error
            self._wake()
