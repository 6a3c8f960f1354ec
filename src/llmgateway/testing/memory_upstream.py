"""An in-memory `Upstream` for unit tests of the attempt loop: no socket, no server, no sleep.

Like httpx's `MockTransport`, a `MemoryUpstream` hands every request to a handler the test
writes, which answers with a `ScriptedResponse` (status, headers, body) or raises the fault the
test wants: `connect_error()` (an egress fault: the upstream was never reached), `read_timeout()`
(no answer in time) or any other exception. A body given as a list of parts streams them in
turn, and a part may be an `asyncio.Event` (the body waits until the test sets it) or an
exception (raised there: `reset()` after the first part is a connection reset after the first
byte). `ScriptedResponse.after` holds the head back the same way. Waits end at the request's
deadline with `http1.ReadTimeout`, as on the network (`chunks()` excepted, as there); nothing
sleeps, so a test decides when each step happens.

    upstream = MemoryUpstream(lambda sent: ScriptedResponse(200, JSON, b"{}"))
    upstream = MemoryUpstream.answering(ScriptedResponse(503), ScriptedResponse(200, JSON, b"{}"))

It records what it was sent (`requests`, each with the key it carried) and counts the responses
not yet closed (`open_connections()`): a test ends with it at 0 to show nothing leaked.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from llmgateway.config.settings import Timeouts
from llmgateway.transport import http1

Part = bytes | asyncio.Event | BaseException
"""One step of a streamed body: bytes to deliver, an event to wait for, an error to raise."""


@dataclass(frozen=True, slots=True)
class ScriptedResponse:
    """What the upstream answers: `body` as bytes is sent whole (with its content-length), as
    a sequence of parts it streams (no content-length unless `headers` give one)."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | Sequence[Part] = b""
    after: asyncio.Event | None = None  # the head arrives once this is set


@dataclass(frozen=True, slots=True)
class SentRequest:
    """One request as the upstream received it."""

    egress: str
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    deadline: float | None

    @property
    def key(self) -> str | None:
        """The provider key it carried (a Bearer token or `x-goog-api-key`)."""
        bearer = self.headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            return bearer[7:]
        return self.headers.get("x-goog-api-key")


Handler = Callable[[SentRequest], ScriptedResponse | Awaitable[ScriptedResponse]]


def connect_error() -> http1.ConnectError:
    """The upstream could not be reached (classified an egress fault, never the key's)."""
    return http1.ConnectError("connection refused (in memory)")


def read_timeout() -> http1.ReadTimeout:
    """The upstream sent nothing in time."""
    return http1.ReadTimeout("the upstream sent nothing in time (in memory)")


def reset() -> http1.Disconnected:
    """The connection broke off (before the head, or in the body where it is a part)."""
    return http1.Disconnected("the upstream broke off (in memory)")


class MemoryUpstream:
    """An `Upstream` answering from `handler` in memory (see the module docstring)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[SentRequest] = []
        self.responses: list[MemoryResponse] = []
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []

    @classmethod
    def answering(cls, *script: ScriptedResponse | BaseException) -> MemoryUpstream:
        """An upstream answering its requests with `script` in turn (an exception is raised
        instead of answering); a request beyond the script fails the test."""
        left = collections.deque(script)

        def next_in_script(sent: SentRequest) -> ScriptedResponse:
            assert left, f"the upstream got more requests than its script holds: {sent.url}"
            answer = left.popleft()
            if isinstance(answer, BaseException):
                raise answer
            return answer

        return cls(next_in_script)

    async def request(
        self,
        egress: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        timeouts: Timeouts,
        deadline: float | None = None,
    ) -> MemoryResponse:
        """Record the request, then answer as the handler says (see `Upstream.request`)."""
        sent = SentRequest(egress, method, url, dict(headers), body, deadline)
        self.requests.append(sent)
        for count, waiter in self._waiting:
            if len(self.requests) >= count and not waiter.done():
                waiter.set_result(None)
        async with _until(deadline):
            scripted = self.handler(sent)
            if inspect.isawaitable(scripted):
                scripted = await scripted
            if scripted.after is not None:
                await scripted.after.wait()
        response = MemoryResponse(scripted, deadline)
        self.responses.append(response)
        return response

    async def received(self, count: int = 1) -> list[SentRequest]:
        """Wait until the upstream has received `count` requests in all; returns them all."""
        if len(self.requests) < count:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append((count, waiter))
            try:
                await waiter
            finally:
                self._waiting.remove((count, waiter))
        return self.requests

    def open_connections(self) -> int:
        """Responses handed out and not closed yet."""
        return sum(not response.closed for response in self.responses)

    async def close(self) -> None:
        """Close every response still open."""
        for response in self.responses:
            response.close()


class MemoryResponse:
    """An `UpstreamResponse` from a `ScriptedResponse`."""

    def __init__(self, scripted: ScriptedResponse, deadline: float | None) -> None:
        self.status = scripted.status
        self.headers = {name.lower(): value for name, value in scripted.headers.items()}
        body = scripted.body
        if isinstance(body, bytes):
            self.headers.setdefault("content-length", str(len(body)))
            parts: Sequence[Part] = [body] if body else []
        else:
            parts = body
        length = self.headers.get("content-length")
        self.content_length = int(length) if length is not None else None
        self._parts = collections.deque(parts)
        self._deadline = deadline
        self.closed = False

    async def read(self, limit: int) -> bytes:
        """The whole body; `http1.ResponseTooLarge` once more than `limit` bytes arrived."""
        data = bytearray()
        async with _until(self._deadline):
            while (part := await self._next()) is not None:
                data += part
                if len(data) > limit:
                    raise http1.ResponseTooLarge(f"the answer body is over {limit} bytes")
        return bytes(data)

    async def read_prefix(self, limit: int) -> bytes:
        """Up to `limit` bytes of the body."""
        data = bytearray()
        async with _until(self._deadline):
            while len(data) < limit and (part := await self._next()) is not None:
                data += part
        return bytes(data[:limit])

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body part by part (not bounded by the deadline: the caller bounds it)."""
        while (part := await self._next()) is not None:
            yield part

    def close(self) -> None:
        """Done with it; safe to call more than once."""
        self.closed = True

    async def _next(self) -> bytes | None:
        """The next bytes of the body, None at its end."""
        while self._parts:
            if self.closed:
                raise http1.Disconnected("read after close")
            part = self._parts.popleft()
            if isinstance(part, asyncio.Event):
                await part.wait()
            elif isinstance(part, BaseException):
                raise part
            elif part:
                return part
        return None


@contextlib.asynccontextmanager
async def _until(deadline: float | None) -> AsyncIterator[None]:
    """`asyncio.timeout_at(deadline)`, its expiry an `http1.ReadTimeout` as on the network."""
    try:
        async with asyncio.timeout_at(deadline) as timer:
            yield
    except TimeoutError:
        if not timer.expired():
            raise  # the script's own timeout
        raise http1.ReadTimeout("the request's deadline passed (in memory)") from None
