"""The upstream HTTP seam: one aiohttp client session per egress (direct, or each outbound proxy).

HTTP/1.1 only (HTTP/2 multiplexing froze the original project under load), explicit connection
limits, and timeouts from the provider's `timeouts`. Tests point it at the fake upstream in
`llmgateway.testing`, over real loopback HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp

from llmgateway.settings import Timeouts

DIRECT = "direct"
"""The egress id of traffic that leaves without an outbound proxy."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How many upstream connections one egress may hold, in all and per host."""

    total: int = 1000
    per_host: int = 0  # 0: only the total applies
    keepalive_sec: float = 30.0


def client_timeout(timeouts: Timeouts) -> aiohttp.ClientTimeout:
    """aiohttp timeouts from a provider's settings.

    `connect` covers waiting for a pooled connection plus opening one, so a saturated local
    pool surfaces as a connect timeout (an egress fault, never the key's); `sock_read` bounds
    the silence between two chunks; the whole request is bounded by the caller's deadline.
    """
    return aiohttp.ClientTimeout(
        total=None,
        connect=timeouts.pool + timeouts.connect,
        sock_connect=timeouts.connect,
        sock_read=timeouts.read,
    )


@dataclass(slots=True)
class Upstream:
    """Client sessions per egress, opened lazily and closed together."""

    limits: ConnectionLimits = ConnectionLimits()
    _sessions: dict[str, aiohttp.ClientSession] = field(default_factory=dict)

    def session(self, egress: str = DIRECT) -> aiohttp.ClientSession:
        """The session for an egress: `direct` or a proxy URL (the proxy is given per request)."""
        session = self._sessions.get(egress)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.limits.total,
                limit_per_host=self.limits.per_host,
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

    @staticmethod
    def proxy_url(egress: str) -> str | None:
        """The proxy URL to pass per request for an egress, or None for direct traffic."""
        return None if egress == DIRECT else egress

    def open_connections(self) -> int:
        """Connections currently held across all egresses (for leak checks and metrics)."""
        total = 0
        for session in self._sessions.values():
            connector = session.connector
            if connector is not None and not connector.closed:
                total += sum(len(v) for v in connector._conns.values())
                total += len(connector._acquired)
        return total

    async def close(self) -> None:
        """Close every session; in-flight requests on them fail."""
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
