"""The upstream HTTP seam: every call to a provider (the gateway's and the Keeper's) goes here.

Direct traffic uses the small keep-alive client of `llmgateway.http1` (the hot path: about a
quarter of aiohttp's CPU per call); traffic through an outbound proxy (static or stealth) uses one
aiohttp session per proxy. Both are HTTP/1.1 only (HTTP/2
multiplexing froze the original project under load), with explicit connection limits and the
provider's `timeouts`, and both answer with an `Answer`. Tests point it at the fake upstream in
`llmgateway.testing`, over real loopback HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from llmgateway import http1
from llmgateway.settings import Timeouts

if TYPE_CHECKING:  # loaded on the first proxied call: a gateway without proxies never needs it
    import aiohttp

DIRECT = "direct"
"""The egress id of traffic that leaves without an outbound proxy."""


class Answer(Protocol):
    """An upstream answer whose status and headers have arrived (header names lower-case).

    Read the body once (`read`, `read_prefix` or `chunks`), then `close()`: a connection read to
    its end is reused, any other is dropped."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content_length(self) -> int | None: ...
    async def read(self) -> bytes: ...
    async def read_prefix(self, limit: int) -> bytes: ...
    def chunks(self) -> AsyncIterator[bytes]: ...
    def close(self) -> None: ...


@dataclass(slots=True)
class _ViaProxy:
    """An aiohttp response as an `Answer` (body reads bounded by the request's deadline)."""

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

    async def read(self) -> bytes:
        with _oserrors_only():
            async with asyncio.timeout_at(self.deadline):
                return await self.response.read()

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

    async def chunks(self) -> AsyncIterator[bytes]:
        with _oserrors_only():
            async for chunk in self.response.content.iter_any():
                yield chunk

    def close(self) -> None:
        self.response.release()


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


@dataclass(slots=True)
class Upstream:
    """The direct client and one aiohttp session per proxy, opened lazily, closed together."""

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
    ) -> Awaitable[Answer]:
        """Send one request via `egress` (`direct` or a proxy URL); returns once the status and
        headers arrived. Past `deadline` (loop time), if given, waiting for the answer or reading
        its body (not `chunks()`) raises a TimeoutError. The caller closes the answer. `headers`
        must not hold hop-by-hop headers, Host or Content-Length."""
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
    ) -> Answer:
        async with asyncio.timeout_at(deadline):
            response = await self._session(egress).request(
                method,
                url,
                headers=headers,
                data=body or None,
                proxy=egress,
                timeout=client_timeout(timeouts),
                allow_redirects=False,
            )
        return _ViaProxy(response, deadline)

    def _session(self, egress: str) -> aiohttp.ClientSession:
        session = self._sessions.get(egress)
        if session is None or session.closed:
            import aiohttp

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
