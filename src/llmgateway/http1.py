"""A small HTTP/1.1 client for the gateway's direct upstream traffic.

Why not aiohttp here: its client costs about 0.25 ms of CPU per call on the benchmark machine,
which alone is most of the gateway's 0.3 ms latency budget. This client does only what the hot
path needs: keep-alive connections pooled per origin under explicit limits, one write per request,
responses parsed by httptools (the C parser uvicorn uses), bodies handed on chunk by chunk with
flow control, and the provider's connect and read timeouts. Traffic through outbound proxies
stays on aiohttp (see `llmgateway.upstream`).

Failures raise `ConnectError` (never reached the upstream: refused, DNS, TLS, connect or pool
timeout), `ReadTimeout` (the upstream went silent) or `Disconnected` (the connection broke or the
answer was malformed).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import cast

import httptools

PAUSE_ABOVE = 256 * 1024
"""Buffered body bytes above which the socket stops being read until the consumer catches up."""


class ConnectError(OSError):
    """No connection to the upstream could be opened (or none freed up in time)."""


class ConnectTimeout(ConnectError, TimeoutError):
    """Opening a connection, or waiting for a free one, took longer than allowed."""


class ReadTimeout(TimeoutError):
    """The upstream sent nothing for longer than the read timeout."""


class Disconnected(ConnectionResetError):
    """The connection closed before the answer was complete, or the answer was malformed."""


@dataclass(frozen=True, slots=True)
class Limits:
    """How many connections the client may hold, in all and per origin (0: no per-origin cap),
    and how long an idle one is kept."""

    total: int = 1000
    per_origin: int = 0
    keepalive_sec: float = 30.0


class Response:
    """An upstream answer: status and headers (names lower-cased), then the body.

    Read the body with `read()`, `read_prefix()` or `chunks()`, then `close()`: the connection
    goes back to the pool when the body was read to its end, else it is dropped."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_deadline",
        "_eof",
        "_error",
        "_read_timeout",
        "_waiter",
        "content_length",
        "headers",
        "status",
    )

    def __init__(self, conn: _Connection, read_timeout: float, deadline: float | None) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.content_length: int | None = None
        self._conn: _Connection | None = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._read_timeout = read_timeout
        self._deadline = deadline

    async def read(self) -> bytes:
        """The whole body."""
        while not self._eof:
            await self._wait()
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

    async def chunks(self) -> AsyncIterator[bytes]:
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
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish(reusable=self._eof and self._error is None)

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        if self._conn is not None and self._conn.paused:  # asked for more: read on
            self._conn.resume()
        loop = asyncio.get_running_loop()
        wait = self._read_timeout
        if self._deadline is not None:
            left = self._deadline - loop.time()
            if left <= 0:
                raise ReadTimeout("the request's deadline passed")
            wait = min(wait, left)
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(wait, self._silent, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _silent(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(ReadTimeout("the upstream sent nothing in time"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # fed by the connection
    def _headers_done(self, status: int) -> None:
        self.status = status
        length = self.headers.get("content-length")
        if length is not None and length.isdigit():
            self.content_length = int(length)
        self._wake()

    def _body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > PAUSE_ABOVE and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _done(self) -> None:
        if self._error is None:  # a failed answer stays failed
            self._eof = True
            self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self._eof:
            self._error = error
            self._wake()


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the answer it is receiving."""

    def __init__(self, origin: _Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.header_name = ""
        self.complete = False  # the answer ended and the connection may carry another
        self.paused = False
        self.head = False
        self.idle_since = 0.0
        self.received = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._broken(Disconnected("the upstream sent a malformed HTTP response"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.origin.lost(self)
        response = self.response
        if response is None:
            return
        headers = response.headers
        if (
            response.status
            and not self.complete
            and "content-length" not in headers
            and ("chunked" not in headers.get("transfer-encoding", ""))
        ):
            response._done()  # a body delimited by the end of the connection
        else:
            response._fail(Disconnected("the upstream closed the connection"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        key = name.decode("latin-1").lower()
        headers = self.response.headers
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        assert self.response is not None
        self.response._headers_done(self.parser.get_status_code())
        if self.head:  # the parser cannot know a HEAD answer has no body: end it here, and
            self.response._done()  # drop the connection, whose parser now expects one

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._body(body)

    def on_message_complete(self) -> None:
        self.complete = self.parser.should_keep_alive()  # only valid inside the callback
        assert self.response is not None
        self.response._done()

    # the client's side
    def send(self, data: bytes, response: Response) -> None:
        assert self.transport is not None
        self.response = response
        self.complete = self.received = False
        self.head = data.startswith(b"HEAD ")
        self.transport.write(data)

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def finish(self, reusable: bool) -> None:
        self.response = None
        if reusable and self.complete:
            self.resume()
            self.origin.give_back(self)
        else:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        self.origin.lost(self)

    def _broken(self, error: BaseException) -> None:
        if self.response is not None:
            self.response._fail(error)
        self.close()


class _Origin:
    """The connections to one scheme://host:port."""

    def __init__(self, client: Client, scheme: str, authority: str) -> None:
        self.client = client
        host, _, port = authority.rpartition(":") if _has_port(authority) else (authority, "", "")
        self.host = host.strip("[]")
        self.port = int(port) if port else (443 if scheme == "https" else 80)
        self.tls = scheme == "https"
        self.host_header = authority
        self.idle: list[_Connection] = []
        self.open: set[_Connection] = set()

    async def connect(self, within: float) -> _Connection:
        loop = asyncio.get_running_loop()
        context = self.client.ssl_context() if self.tls else None
        try:
            async with asyncio.timeout(within):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=context,
                    server_hostname=self.host if context is not None else None,
                )
        except TimeoutError:
            raise ConnectTimeout(f"connecting to the upstream took over {within:g}s") from None
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise ConnectError(error.errno, f"cannot connect to the upstream: {reason}") from None
        self.open.add(conn)
        return conn

    def reusable(self, keepalive: float) -> _Connection | None:
        """The most recently used idle connection still fresh (stale ones are closed)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.transport is not None and (
                asyncio.get_running_loop().time() - conn.idle_since < keepalive
            ):
                return conn
            conn.close()
        return None

    def give_back(self, conn: _Connection) -> None:
        conn.idle_since = asyncio.get_running_loop().time()
        self.idle.append(conn)
        self.client.freed()

    def lost(self, conn: _Connection) -> None:
        if conn in self.open:
            self.open.discard(conn)
            if conn in self.idle:
                self.idle.remove(conn)
            self.client.closed(conn)


def _has_port(authority: str) -> bool:
    return authority.rfind(":") > authority.rfind("]")


class Client:
    """Keep-alive HTTP/1.1 connections to any number of origins, under one set of limits."""

    def __init__(
        self, limits: Limits = Limits(), ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.limits = limits
        self._origins: dict[tuple[str, str], _Origin] = {}
        self._count = 0  # open or opening connections
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._ssl = ssl_context

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS settings: the given context, else the system's trust store (honouring
        SSL_CERT_FILE), with certificates and host names verified."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        connect_timeout: float,
        read_timeout: float,
        deadline: float | None = None,
    ) -> Response:
        """Send one request and return once the answer's status and headers have arrived.

        `url` is absolute (http or https); `headers` must not hold hop-by-hop headers, Host or
        Content-Length (they are set here). `connect_timeout` bounds waiting for a pooled
        connection plus opening one; `read_timeout` bounds each silence of the upstream; past
        `deadline` (loop time), if given, any wait ends in `ReadTimeout`, body reads included."""
        scheme, _, rest = url.partition("://")
        authority, slash, target = rest.partition("/")
        if "?" in authority or "#" in authority:
            authority, query = authority.split("?" if "?" in authority else "#", 1)
            target = "?" + query
        target = (slash + target) or "/"
        if target[0] != "/":
            target = "/" + target
        origin = self._origins.get((scheme, authority))
        if origin is None:
            if scheme not in ("http", "https") or not authority or "@" in authority:
                raise ConnectError(f"not an http(s) URL without credentials: {scheme}://…")
            origin = self._origins[(scheme, authority)] = _Origin(self, scheme, authority)
        head = _head(method, target, origin.host_header, headers, len(body))
        data = head + body if len(body) < 65536 else None
        fresh_retry = True
        while True:
            conn = origin.reusable(self.limits.keepalive_sec)
            reused = conn is not None
            try:
                if conn is None:
                    conn, reused = await self._checkout(origin, connect_timeout, deadline)
            except ConnectTimeout:
                if deadline is not None and asyncio.get_running_loop().time() >= deadline:
                    raise ReadTimeout("the request's deadline passed") from None
                raise
            response = Response(conn, read_timeout, deadline)
            if data is None:
                conn.send(head, response)
                if conn.transport is not None:
                    conn.transport.write(body)
            else:
                conn.send(data, response)
            try:
                while not response.status:
                    await response._wait()
            except Disconnected:
                response.close()
                # a kept-alive connection the upstream had closed while idle: nothing was
                # processed, so the request goes once more on a fresh connection
                if reused and fresh_retry and not conn.received:
                    fresh_retry = False
                    continue
                raise
            except BaseException:
                response.close()
                raise
            return response

    async def _checkout(
        self, origin: _Origin, within: float, until: float | None
    ) -> tuple[_Connection, bool]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        if until is not None and until < deadline:
            deadline = until
        while True:
            conn = origin.reusable(self.limits.keepalive_sec)
            if conn is not None:
                return conn, True
            per_origin = self.limits.per_origin
            if self._count >= self.limits.total:
                self._evict_idle()
            if self._count < self.limits.total and (
                not per_origin or len(origin.open) < per_origin
            ):
                self._count += 1
                try:
                    return await origin.connect(deadline - loop.time()), False
                except BaseException:
                    self._count -= 1
                    self.freed()
                    raise
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(max(deadline - loop.time(), 0)):
                    await waiter
            except TimeoutError:
                if waiter.done() and not waiter.cancelled():
                    self.freed()  # woken as time ran out: pass the turn on
                raise ConnectTimeout(f"no upstream connection free within {within:g}s") from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _evict_idle(self) -> None:
        """At the total limit: close the longest-idle connection of any origin, if any."""
        oldest: _Connection | None = None
        for origin in self._origins.values():
            if origin.idle and (oldest is None or origin.idle[0].idle_since < oldest.idle_since):
                oldest = origin.idle[0]
        if oldest is not None:
            oldest.close()

    def freed(self) -> None:
        """A connection went idle or closed: let one waiting request look again."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def closed(self, conn: _Connection) -> None:
        self._count -= 1
        self.freed()

    def open_connections(self) -> int:
        """Connections currently open (idle or busy)."""
        return sum(len(origin.open) for origin in self._origins.values())

    async def close(self) -> None:
        """Close every connection; answers still being read fail with `Disconnected`."""
        for origin in list(self._origins.values()):
            for conn in list(origin.open):
                conn._broken(Disconnected("the gateway is shutting down"))
        self._origins.clear()
        await asyncio.sleep(0)


def _head(method: str, target: str, host: str, headers: Mapping[str, str], length: int) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\nhost: {host}\r\n"]
    for name, value in headers.items():
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            raise ValueError(f"header {name!r} holds a line break; it cannot be sent")
        lines.append(f"{name}: {value}\r\n")
    if length or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        lines.append(f"content-length: {length}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")
