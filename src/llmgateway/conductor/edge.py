"""uvicorn's httptools protocol with the limits it lacks, for every listener the gateway opens.

uvicorn bounds neither the time a client takes to send a request's head, nor the head's size
(httptools buffers a header line of any length), nor the number of open connections: a few
hundred half-sent heads, or one 100 MB header, cost the gateway its memory and its event loop.
This subclass adds, per connection:

- a head deadline (`gateway.client_header_timeout_sec`): a head still incomplete then is
  answered 408 and the connection closed; a fresh connection that sends nothing is closed;
- a head size cap (64 KiB): larger heads are answered 431 without being parsed further;
- a cap on open connections per process (`gateway.max_connections`): beyond it a new
  connection is answered 503 and closed before anything is read.

One timer per connection keeps both the head deadline and uvicorn's keep-alive idle time
(uvicorn sets and cancels a timer per request). Body pace and size are the edge's
(`conductor.admission`), where the route's error shape is known. Everything else is uvicorn's
own code path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from llmgateway.config.settings import GatewaySettings
from llmgateway.providers import openai
from llmgateway.transport.lazy_timer import LazyTimer

log = logging.getLogger("llmgateway.edge")

MAX_HEAD_BYTES = 64 * 1024
"""The largest request head (request line and headers) the gateway reads."""
_REFUSAL_LOG_EVERY_SEC = 10.0
LINGER_SEC = 1.0
"""After an answer of ours, what the client still sends is read and dropped this long (at most
`LINGER_BYTES`) before the connection closes: closing with unread bytes would make the kernel
reset the connection, and the client would lose the answer."""
LINGER_BYTES = 4 * 1024 * 1024
ON_DISCONNECT = "llmgateway.on_disconnect"
"""A scope key under which the app may put a callable (or None): it is called when the client
disconnects before its answer is complete, so a request stops at once without a task watching
`receive()`."""
BODY_ARRIVED = "llmgateway.body_arrived"
"""A scope key set to True once the request's whole body has arrived: the app's `receive()`
then cannot wait, and reading the body needs no timer."""


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """What one client connection may cost (see the module docstring)."""

    header_timeout_sec: float = 10.0
    max_connections: int = 4096
    max_head_bytes: int = MAX_HEAD_BYTES

    @classmethod
    def of(cls, gateway: GatewaySettings) -> EdgeLimits:
        """The limits the `gateway` settings ask for."""
        return cls(gateway.client_header_timeout_sec, gateway.max_connections)


@dataclass(slots=True)
class _Refusals:
    """When a refused connection was last logged (one WARNING per 10 s, with a count)."""

    count: int = 0
    logged_at: float = field(default=0.0)


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head over the limit."""


class EdgeProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` with a head deadline, a head size cap and a connection cap."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: EdgeLimits,
        refusals: _Refusals | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self._refusals = refusals if refusals is not None else _Refusals()
        self._admitted = False  # False: refused at connect, nothing of uvicorn's was set up
        self._done = False  # answered by this class and closing: what comes is dropped
        self._lingered = 0
        self._in_head = True  # bytes arriving now belong to a request head
        self._head_bytes = 0  # bytes fed since the head phase began (an upper bound)
        self._fed = 0  # the size of the data being fed now
        # One timer per connection watches both the head deadline and the keep-alive idle
        # time. Requests only note when a head began or the connection fell idle; the timer
        # is set again when it fires early, so a busy connection sets one every few seconds
        # rather than two per request (uvicorn's keep-alive timer and a head timer).
        self._head_began: float | None = None  # loop time; None: no head in progress
        self._idle_since: float | None = None  # loop time; None: not idle
        self._watchdog = LazyTimer(self.loop, self._look)

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.transport = transport  # uvicorn's state stays unset: it never sees this one
            self._note_refusal()
            self._close_with(503, "The gateway has too many open connections.")
            return
        self._admitted = True
        super().connection_made(transport)
        self._head_began = self.loop.time()  # a fresh connection that never speaks is closed too
        self._watchdog.at(self._head_began + self.limits.header_timeout_sec)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._watchdog.close()
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            tell = cycle.scope.get(ON_DISCONNECT)
            if callable(tell):
                tell()

    def data_received(self, data: bytes) -> None:
        if self._done:
            self._lingered += len(data)
            if self._lingered > LINGER_BYTES:
                self.transport.abort()
            return
        self._idle_since = None
        self._fed = len(data)
        if self._in_head:
            self._head_bytes += self._fed
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as error:
            if isinstance(error.__context__, _HeadTooLarge):
                self._close_with(431, "The request head is larger than 64 KiB.")
            else:
                log.info("invalid HTTP request received: %s", error)
                self.send_400_response("Invalid HTTP request received.")
            return
        if self._in_head and not self._done and self._head_bytes > self.limits.max_head_bytes:
            self._close_with(431, "The request head is larger than 64 KiB.")

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_began is None:
            self._head_began = began = self.loop.time()
            self._watchdog.at(began + self.limits.header_timeout_sec)

    def on_headers_complete(self) -> None:
        limit = self.limits.max_head_bytes
        # a head that began in this data is at most `_fed` long: count exactly only when the
        # bound allows a head over the limit
        if self._head_bytes + self._fed > limit:
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > limit:
                raise _HeadTooLarge
        self._in_head = False
        self._head_began = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.scope[BODY_ARRIVED] = True  # type: ignore[literal-required]
        self._in_head, self._head_bytes = True, 0  # what follows is the next request's head

    def on_response_complete(self) -> None:
        """uvicorn's, with the keep-alive time kept by the watchdog (see `__init__`)."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:  # a request that arrived meanwhile waits its turn: start it
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle_since = idle = self.loop.time()
            self._watchdog.at(idle + self.timeout_keep_alive)

    # -- internals -------------------------------------------------------------------------------

    def _look(self, now: float) -> float | None:
        """The watchdog fired: a late head or an idle connection past keep-alive ends here;
        otherwise it looks again when one could be due (a request being served has deadlines
        of its own)."""
        if self._done or self.transport.is_closing():
            return None
        if self._head_began is not None:
            due = self._head_began + self.limits.header_timeout_sec
            if now >= due:
                self._head_late()
                return None
        elif self._idle_since is not None:
            due = self._idle_since + self.timeout_keep_alive
            if now >= due:
                self.transport.close()
                return None
        else:
            return None
        return due

    def _head_late(self) -> None:
        if self._head_bytes:
            seconds = f"{self.limits.header_timeout_sec:g}"
            self._close_with(408, f"The request head did not arrive within {seconds} s.")
        else:
            self.transport.close()

    def _close_with(self, status: int, message: str) -> None:
        """Answer `status` and close, lingering (see `LINGER_SEC`) so the answer arrives. With
        an earlier request of the connection still being answered, close without a word: an
        answer now would be read as that request's."""
        self._done = True
        self._watchdog.cancel()
        transport = self.transport
        if transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # its handler's sends become no-ops
            cycle.message_event.set()
            transport.close()
            return
        transport.write(_answer(status, message))
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(LINGER_SEC, transport.close)
        else:
            transport.close()

    def _note_refusal(self) -> None:
        refusals = self._refusals
        refusals.count += 1
        now = time.monotonic()
        if now - refusals.logged_at >= _REFUSAL_LOG_EVERY_SEC:
            log.warning(
                "refused %d connection(s): %d open, gateway.max_connections is %d",
                refusals.count,
                len(self.connections),
                self.limits.max_connections,
            )
            refusals.count, refusals.logged_at = 0, now


_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Unavailable"}


def _answer(status: int, message: str) -> bytes:
    """A complete error answer (OpenAI's error shape: the route is not known yet) that closes
    the connection."""
    code = {408: "request_timeout", 431: "request_head_too_large", 503: "gateway_busy"}[status]
    body = openai.error_body(status, message, code=code)
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
        status,
        _REASONS[status],
        len(body),
    )
    return head + b"connection: close\r\n\r\n" + body


def protocol_factory(limits: EdgeLimits) -> Any:
    """The `http` protocol class uvicorn is given: `EdgeProtocol` bound to `limits` (and one
    refusal log shared by the listener's connections)."""
    import functools

    return functools.partial(EdgeProtocol, limits=limits, refusals=_Refusals())


@dataclass(slots=True)
class ClientWatch:
    """Cancels a request's task when its client disconnects (`gone` tells the handler). The
    edge's protocol calls `client_left` from its `connection_lost`: no task or timer per
    request."""

    task: asyncio.Task[Any]
    gone: bool = False

    def client_left(self) -> None:
        self.gone = True
        self.task.cancel()

    def forgiven(self, request_id: str) -> bool:
        """Called with the task's cancellation caught: True (the cancellation undone, the
        disconnect logged) when the client's leaving caused it, else False (re-raise it)."""
        if not self.gone:
            return False
        self.task.uncancel()
        logging.getLogger("llmgateway.api").info(
            "client disconnected", extra={"request_id": request_id}
        )
        return True
