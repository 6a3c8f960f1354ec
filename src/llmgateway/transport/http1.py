"""A small HTTP/1.1 client for the gateway's direct upstream traffic.

Why not aiohttp here: its client costs about 0.25 ms of CPU per call on the benchmark machine,
which alone is most of the gateway's 0.3 ms latency budget. This client does only what the hot
path needs: keep-alive connections pooled per origin under explicit limits, one write per request,
responses parsed by httptools (the C parser uvicorn uses), bodies handed on chunk by chunk with
flow control, and the provider's connect, write and read timeouts. Traffic through outbound proxies
stays on aiohttp (see `transport.upstream`). The receiving half is in
`llmgateway.transport.http1_connection` (the bytes an upstream sends, and their bounds) and
`llmgateway.transport.http1_response` (the answer the caller reads).

Failures raise `InvalidRequest` (the request cannot be written as given; nothing was sent),
`ConnectError` (never reached the upstream: refused, DNS, TLS, connect or pool timeout),
`WriteTimeout` (the upstream stopped taking the request), `ReadTimeout` (the upstream went
silent), `Disconnected` (the connection broke), or its subclass `ProtocolError` (the upstream's
answer was not valid HTTP/1.1, or broke a bound; its subclass `ResponseTooLarge` for a body over
the limit of `Response.read`).
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from llmgateway.transport.http1_connection import MAX_HEAD_BYTES, MAX_HEADER_FIELDS, Connection
from llmgateway.transport.http1_response import (
    PAUSE_ABOVE,
    Disconnected,
    ProtocolError,
    ReadTimeout,
    Response,
    ResponseTooLarge,
    WriteTimeout,
)

__all__ = [
    "MAX_HEADER_FIELDS",
    "MAX_HEAD_BYTES",
    "PAUSE_ABOVE",
    "Client",
    "ConnectError",
    "ConnectTimeout",
    "Disconnected",
    "InvalidRequest",
    "Limits",
    "ProtocolError",
    "ReadTimeout",
    "Response",
    "ResponseTooLarge",
    "WriteTimeout",
    "check_request",
]


class ConnectError(OSError):
    """No connection to the upstream could be opened (or none freed up in time)."""


class ConnectTimeout(ConnectError, TimeoutError):
    """Opening a connection, or waiting for a free one, took longer than allowed."""


class InvalidRequest(ValueError):
    """The request cannot be written as given (a method, target or header HTTP/1.1 cannot
    carry); nothing was sent. The message names what was refused, never its value."""


@dataclass(frozen=True, slots=True)
class Limits:
    """How many connections the client may hold, in all and per origin (0: no per-origin cap),
    and how long an idle one is kept."""

    total: int = 1000
    per_origin: int = 0
    keepalive_sec: float = 30.0


class Origin:
    """The connections to one scheme://host:port."""

    def __init__(self, client: Client, scheme: str, authority: str) -> None:
        self.client = client
        host, _, port = authority.rpartition(":") if _has_port(authority) else (authority, "", "")
        self.host = host.strip("[]")
        self.port = int(port) if port else (443 if scheme == "https" else 80)
        self.tls = scheme == "https"
        self.host_header = authority
        self.idle: list[Connection] = []
        self.open: set[Connection] = set()

    async def connect(self, within: float) -> Connection:
        loop = asyncio.get_running_loop()
        context = self.client.ssl_context() if self.tls else None
        try:
            async with asyncio.timeout(within):
                _, conn = await loop.create_connection(
                    lambda: Connection(self),
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

    def reusable(self, keepalive: float) -> Connection | None:
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

    def give_back(self, conn: Connection) -> None:
        conn.idle_since = asyncio.get_running_loop().time()
        self.idle.append(conn)
        self.client.freed()

    def lost(self, conn: Connection) -> None:
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
        self._origins: dict[tuple[str, str], Origin] = {}
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
        write_timeout: float | None = None,
        deadline: float | None = None,
    ) -> Response:
        """Send one request and return once the answer's final status and headers have arrived
        (interim answers are skipped).

        `url` is absolute (http or https); `headers` must not hold hop-by-hop headers, Host or
        Content-Length (they are set here). `connect_timeout` bounds waiting for a pooled
        connection plus opening one; `write_timeout` (default: `read_timeout`) bounds each time
        the upstream takes none of the request's unsent bytes, `WriteTimeout`; once it is all
        sent, `read_timeout` bounds each silence of the upstream; past `deadline` (loop time),
        if given, any wait ends in `ReadTimeout`, body reads included.
        A request `check_request` refuses raises `InvalidRequest` before anything is sent."""
        scheme, authority, target = _split(url)
        origin = self._origins.get((scheme, authority))
        if origin is None:
            if scheme not in ("http", "https") or not authority or "@" in authority:
                raise ConnectError(f"not an http(s) URL without credentials: {scheme}://…")
            _check_authority(authority)
            origin = self._origins[(scheme, authority)] = Origin(self, scheme, authority)
        head = _head(method, target, origin.host_header, headers, len(body))
        write = read_timeout if write_timeout is None else write_timeout
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
            response = Response(conn, read_timeout, write, deadline)
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
        self, origin: Origin, within: float, until: float | None
    ) -> tuple[Connection, bool]:
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
        oldest: Connection | None = None
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

    def closed(self, conn: Connection) -> None:
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


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # RFC 9110 5.6.2
_METHOD = re.compile(_TOKEN)
_NAMES = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z:]+")  # header names joined by ":"
_TARGET = re.compile(r"[!\"$-~]+")  # visible ASCII (0x21-0x7E) but "#"
_WIDE = re.compile("[\u0100-\U0010ffff]")  # beyond latin-1
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_AUTHORITY = re.compile(r"(?:\[[0-9A-Za-z:.%]+\]|[-0-9A-Za-z._~!$&'()*+,;=%]+)(?::[0-9]{0,5})?")


def check_request(method: str, url: str, headers: Mapping[str, str]) -> None:
    """Refuse with `InvalidRequest` a request that HTTP/1.1 cannot carry as given: a method that
    is not an HTTP token, a URL whose host is not a host name or address (with an optional
    port), a target (path and query) holding anything but visible ASCII or holding "#", a header
    name that is not a token, a header value holding CR, LF, NUL or a character beyond latin-1.
    The message names what was refused, never a value (it may be a secret)."""
    _, authority, target = _split(url)
    _check_authority(authority.rpartition("@")[2])
    _check_head(method, target, headers)


def _split(url: str) -> tuple[str, str, str]:
    """An absolute URL as scheme, authority and request target ("/" when it has none)."""
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    target = slash + path
    if "?" in authority or "#" in authority:  # "http://host?query": no path
        cut = min(at for at in (authority.find("?"), authority.find("#")) if at >= 0)
        authority, target = authority[:cut], "/" + authority[cut:] + target
    return scheme, authority, target or "/"


def _check_authority(authority: str) -> None:
    if _AUTHORITY.fullmatch(authority) is None:
        raise InvalidRequest("the URL's host is not a host name or address with an optional port")


def _check_head(method: str, target: str, headers: Mapping[str, str]) -> None:
    # one check over all names and one over all values: cheaper than one per header
    if method not in _METHODS and _METHOD.fullmatch(method) is None:
        raise InvalidRequest("the method is not an HTTP token")
    if _TARGET.fullmatch(target) is None:
        raise InvalidRequest("the request target holds a character other than visible ASCII or '#'")
    if not headers:
        return
    names = ":".join(headers)  # tokens hold no ":", and none may be empty
    if (
        _NAMES.fullmatch(names) is None
        or names.count(":") != len(headers) - 1
        or "::" in names
        or names[0] == ":"
        or names[-1] == ":"
    ):
        raise InvalidRequest("a header name is not an HTTP token")
    if _unsafe(" ".join(headers.values())):
        name = next(name for name, value in headers.items() if _unsafe(value))
        raise InvalidRequest(
            f"the value of header {name!r} holds CR, LF, NUL or a character beyond latin-1"
        )


def _unsafe(value: str) -> bool:
    """Whether a header value holds CR, LF, NUL or a character latin-1 cannot encode."""
    return (
        "\r" in value
        or "\n" in value
        or "\0" in value
        or (not value.isascii() and _WIDE.search(value) is not None)
    )


def _head(method: str, target: str, host: str, headers: Mapping[str, str], length: int) -> bytes:
    _check_head(method, target, headers)
    lines = [f"{method} {target} HTTP/1.1\r\nhost: {host}\r\n"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n")
    if length or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        lines.append(f"content-length: {length}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")
