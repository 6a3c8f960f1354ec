"""The upstream HTTP seam: every call to a provider (the gateway's and the Keeper's) goes here.

`Upstream` is the seam as its callers see it: `request()` answers with an `UpstreamResponse`
(status and headers arrived, the body still to read). `HttpUpstream` is the one on the network:
direct traffic uses the small keep-alive client of `transport.http1` (the hot path: about a
quarter of aiohttp's CPU per call); traffic through an outbound proxy (static or stealth) uses one
aiohttp session per proxy: an HTTP proxy is named per request (CONNECT, or absolute-URI
forwarding), a SOCKS5 one is built into its session's connector (`transport.socks`). Both are
HTTP/1.1 only (HTTP/2 multiplexing froze the original project under load), with explicit
connection limits and the provider's `timeouts`. Both refuse a request HTTP/1.1 cannot carry
(`http1.InvalidRequest`, before anything is sent) and turn an answer that is not valid HTTP/1.1,
or breaks a bound, into `http1.ProtocolError`. Tests point it at the fake
upstream in `llmgateway.testing`, over real loopback HTTP, and at its `HostileUpstream`; unit
tests of the attempt loop use `llmgateway.testing.memory_upstream.MemoryUpstream` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from llmgateway.config.settings import Timeouts
from llmgateway.core.egress import DIRECT
from llmgateway.transport import http1, socks

if TYPE_CHECKING:  # loaded on the first proxied call: a gateway without proxies never needs it
    import aiohttp

# What aiohttp may take of a proxied answer's head: it bounds each line and field and their count
# (100, as http1's MAX_HEADER_FIELDS), not the head's total, which is thus at most about 1.6 MiB
# against http1's 64 KiB. A field of 16 KiB leaves room for long cookies or tokens.
PROXIED_MAX_LINE = 8190
PROXIED_MAX_FIELD = 16384


class UpstreamResponse(Protocol):
    """An upstream's response whose status and headers have arrived (header names lower-case).

    Read the body once (`read`, `read_prefix` or `chunks`), then `close()`: a connection read to
    its end is reused, any other is dropped. `read(limit)` raises `http1.ResponseTooLarge` as
    soon as more than `limit` bytes arrived."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content_length(self) -> int | None: ...
    async def read(self, limit: int) -> bytes: ...
    async def read_prefix(self, limit: int) -> bytes: ...
    def chunks(self) -> AsyncGenerator[bytes, None]: ...
    def close(self) -> None: ...


@dataclass(slots=True)
class _ViaProxy:
    """An aiohttp response as an `UpstreamResponse` (body reads bounded by the request's
    deadline)."""

    response: aiohttp.ClientResponse
    deadline: float | None
    headers: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.headers = {}
        for name, value in self.response.headers.items():
            name = name.lower()
            self.headers[name] = f"{self.headers[name]}, {value}" if name in self.headers else value

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def content_length(self) -> int | None:
        return self.response.content_length

    async def read(self, limit: int) -> bytes:
        length = self.response.content_length
        if length is not None and length > limit:
            raise _too_large(limit)
        parts: list[bytes] = []
        size = 0
        with _oserrors_only():
            async with asyncio.timeout_at(self.deadline):
                while chunk := await self.response.content.readany():
                    size += len(chunk)
                    if size > limit:
                        raise _too_large(limit)
                    parts.append(chunk)
        return b"".join(parts)

    async def read_prefix(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        with _oserrors_only():
            async with asyncio.timeout_at(self.deadline):
                while size < limit:
                    chunk = await self.response.content.read(limit - size)
                    if not chunk:
                        break
                    parts.append(chunk)
                    size += len(chunk)
        return b"".join(parts)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        with _oserrors_only():
            async for chunk in self.response.content.iter_any():
                yield chunk

    def close(self) -> None:
        self.response.release()


class ProxyDisconnected(http1.ConnectError):
    """The connection through an outbound proxy broke before the answer's head arrived.

    Through a proxy that is the proxy's doing as far as anyone can tell (it died, or dropped
    the tunnel): an egress fault, never the key's, so a proxy dying under load opens its own
    egress breaker, not the provider's. A cut after the head is the stream's, as on direct
    traffic."""


def _broke_off(error: BaseException) -> http1.ConnectError:
    """A proxied request's connection failure before the head: the SOCKS connector's own
    error (aiohttp wraps it in a `ClientOSError`), else a `ProxyDisconnected`."""
    if isinstance(error.__cause__, socks.SocksError):
        return error.__cause__
    return ProxyDisconnected(
        f"the connection through the proxy broke before the answer ({type(error).__name__})"
    )


def _too_large(limit: int) -> http1.ResponseTooLarge:
    return http1.ResponseTooLarge(f"the upstream's answer body is over {limit} bytes")


@contextlib.contextmanager
def _oserrors_only() -> Iterator[None]:
    """A body read's failure as the OSError the edge expects of either transport: aiohttp's
    payload and disconnect errors, which are not OSErrors, become `http1.Disconnected`."""
    try:
        yield
    except OSError:
        raise
    except Exception as error:
        raise http1.Disconnected(f"the upstream broke off: {type(error).__name__}") from error


def client_timeout(timeouts: Timeouts) -> aiohttp.ClientTimeout:
    """aiohttp timeouts from a provider's settings.

    `connect` covers waiting for a pooled connection plus opening one, so a saturated local
    pool surfaces as a connect timeout (an egress fault, never the key's); `sock_read` bounds
    the silence between two chunks; the whole request is bounded by the caller's deadline.
    """
    import aiohttp

    return aiohttp.ClientTimeout(
        total=None,
        connect=timeouts.pool + timeouts.connect,
        sock_connect=timeouts.connect,
        sock_read=timeouts.read,
    )


class Upstream(Protocol):
    """Where calls to a provider go: `HttpUpstream` on the network, `MemoryUpstream`
    (`llmgateway.testing.memory_upstream`) in memory, for tests."""

    def request(
        self,
        egress: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        timeouts: Timeouts,
        deadline: float | None = None,
    ) -> Awaitable[UpstreamResponse]:
        """Send one request via `egress` (`direct` or a proxy URL); returns once the status and
        headers arrived. Past `deadline` (loop time), if given, waiting for the answer or reading
        its body (not `chunks()`) raises a TimeoutError. The caller closes the response.
        `headers` must not hold hop-by-hop headers, Host or Content-Length. A transport failure
        is an OSError (`http1.ConnectError`, `http1.ReadTimeout`, `http1.Disconnected`…) or,
        through a proxy, one of aiohttp's `ClientError`s; a proxy that does not open the tunnel
        (an HTTP proxy's refusal, any SOCKS handshake failure) or breaks it before the answer's
        head is an `http1.ConnectError`."""
        ...

    def open_connections(self) -> int:
        """Connections (in memory: responses) currently held, for leak checks and metrics."""
        ...

    async def close(self) -> None:
        """Close every connection; in-flight requests on them fail."""
        ...


@dataclass(slots=True)
class HttpUpstream:
    """The `Upstream` on the network: the direct client and one aiohttp session per proxy,
    opened lazily, closed together."""

    limits: http1.Limits = field(default_factory=http1.Limits)
    _direct: http1.Client | None = None
    _sessions: dict[str, aiohttp.ClientSession] = field(default_factory=dict)

    def request(
        self,
        egress: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        timeouts: Timeouts,
        deadline: float | None = None,
    ) -> Awaitable[UpstreamResponse]:
        """See `Upstream.request`."""
        if egress == DIRECT:  # the client's own coroutine: no extra layer on the hot path
            if self._direct is None:
                self._direct = http1.Client(self.limits)
            return self._direct.request(
                method,
                url,
                headers,
                body,
                connect_timeout=timeouts.pool + timeouts.connect,
                read_timeout=timeouts.read,
                write_timeout=timeouts.write,
                deadline=deadline,
            )
        return self._via_proxy(egress, method, url, headers, body, timeouts, deadline)

    async def _via_proxy(
        self,
        egress: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        timeouts: Timeouts,
        deadline: float | None,
    ) -> UpstreamResponse:
        http1.check_request(method, url, headers)
        session = self._session(egress)
        import aiohttp

        through_socks = socks.is_socks(egress)  # its connector opens the tunnel: no proxy=
        try:
            async with asyncio.timeout_at(deadline):
                response = await session.request(
                    method,
                    url,
                    headers=headers,
                    data=body or None,
                    proxy=None if through_socks else egress,
                    timeout=client_timeout(timeouts),
                    allow_redirects=False,
                )
        except aiohttp.ClientConnectorError:
            raise  # no connection to the proxy: aiohttp's own, an egress fault already
        except (
            aiohttp.ClientOSError,
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientConnectionResetError,
        ) as error:
            raise _broke_off(error) from None
        except aiohttp.ClientHttpProxyError as error:  # the HTTP proxy refused the tunnel
            raise http1.ConnectError(
                f"the HTTP proxy refused the tunnel (status {error.status})"
            ) from None
        except aiohttp.ClientResponseError as error:  # else only: the head did not parse
            cause = type(error.__cause__ or error).__name__  # e.g. BadStatusLine, LineTooLong
            raise http1.ProtocolError(
                f"the upstream sent a malformed HTTP response ({cause})"
            ) from error
        if not 200 <= response.status <= 599:  # aiohttp skips interim answers but 101
            response.close()
            raise http1.ProtocolError(
                f"the upstream answered with status {response.status}, not in 200-599"
            )
        return _ViaProxy(response, deadline)

    def _session(self, egress: str) -> aiohttp.ClientSession:
        session = self._sessions.get(egress)
        if session is None or session.closed:
            import aiohttp

            connector: aiohttp.TCPConnector
            if socks.is_socks(egress):
                from llmgateway.transport.socks_connector import socks_connector

                connector = socks_connector(egress, self.limits)
            else:
                connector = aiohttp.TCPConnector(
                    limit=self.limits.total,
                    limit_per_host=self.limits.per_origin,
                    keepalive_timeout=self.limits.keepalive_sec,
                    ttl_dns_cache=300,
                )
            session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                version=aiohttp.HttpVersion11,
                trust_env=False,
                max_line_size=PROXIED_MAX_LINE,
                max_field_size=PROXIED_MAX_FIELD,
                max_headers=http1.MAX_HEADER_FIELDS,
            )
            self._sessions[egress] = session
        return session

    def open_connections(self) -> int:
        """Connections currently held across all egresses (for leak checks and metrics)."""
        total = self._direct.open_connections() if self._direct is not None else 0
        for session in self._sessions.values():
            connector = session.connector
            if connector is not None and not connector.closed:
                total += sum(len(v) for v in connector._conns.values())
                total += len(connector._acquired)
        return total

    async def close(self) -> None:
        """Close every connection; in-flight requests on them fail."""
        direct, self._direct = self._direct, None
        if direct is not None:
            await direct.close()
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
