"""The aiohttp connector of one SOCKS5 proxy: aiohttp-socks' `ProxyConnector`, whose every
failure to open a tunnel leaves as a `transport.socks.SocksError`.

Whatever is raised while the connector opens a connection happened before a byte of the request
left: reaching the proxy, its handshake and login, its connect to the upstream. So it is our
egress's fault whatever its kind, reset, garbage or TLS with the upstream through the tunnel
included, and is said in our own words (the library's may name the proxy's address). aiohttp
hands it on wrapped in a `ClientOSError`, which `transport.upstream` unwraps. Imported with the
first SOCKS session only: it loads aiohttp and aiohttp-socks.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.client_proto import ResponseHandler
from aiohttp_socks import ProxyConnector, ProxyType

from llmgateway.transport import http1
from llmgateway.transport.socks import SocksError, parse_socks, socks_failure


class SocksConnector(ProxyConnector):
    """aiohttp-socks' connector, its failures translated (see the module docstring)."""

    async def _wrap_create_connection(
        self, *args: Any, **kwargs: Any
    ) -> tuple[asyncio.Transport, ResponseHandler]:
        try:
            return await super()._wrap_create_connection(*args, **kwargs)
        except SocksError:
            raise
        except Exception as error:  # never CancelledError: aiohttp's own timeouts pass
            raise socks_failure(error) from None


def socks_connector(url: str, limits: http1.Limits) -> SocksConnector:
    """A connector opening every connection through the SOCKS5 proxy `url`, with the same pool
    limits as the HTTP proxies' connectors. Raises `SocksError` for a URL it cannot use."""
    proxy = parse_socks(url)
    return SocksConnector(
        proxy_type=ProxyType.SOCKS5,
        host=proxy.host,
        port=proxy.port,
        username=proxy.username,
        password=proxy.password,
        rdns=proxy.remote_dns,
        limit=limits.total,
        limit_per_host=limits.per_origin,
        keepalive_timeout=limits.keepalive_sec,
    )
