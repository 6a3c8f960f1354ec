"""An HTTP proxy refusing the CONNECT tunnel (407, 403, 502), or hanging up before the answer,
is an egress fault, as a refused SOCKS handshake or a SOCKS proxy dying mid-request is: never
read as the upstream's malformed answer or disconnect, never the key's, and the proxy's password
is in no message."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from llmgateway.config.settings import Timeouts
from llmgateway.core.outcomes import ErrorReason
from llmgateway.keeper.prober import describe_exception
from llmgateway.transport import http1
from llmgateway.transport.errors import exception_reason
from llmgateway.transport.upstream import HttpUpstream, ProxyDisconnected

PASSWORD = "http-proxy-pa55word"


@pytest.mark.parametrize("status", [407, 403, 502])
async def test_a_refused_connect_is_an_egress_fault(status: int) -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 {status} No\r\ncontent-length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = HttpUpstream()
    try:
        with pytest.raises(http1.ConnectError) as caught:
            await upstream.request(
                f"http://gw:{PASSWORD}@127.0.0.1:{port}",
                "GET",
                "https://llm.example/v1/models",  # https: a CONNECT tunnel is asked for
                {},
                b"",
                Timeouts(connect=2, read=2, pool=2),
            )
    finally:
        await upstream.close()
        server.close()
        await server.wait_closed()
    assert exception_reason(caught.value) is ErrorReason.EGRESS_ERROR
    assert str(caught.value) == f"the HTTP proxy refused the tunnel (status {status})"
    assert PASSWORD not in describe_exception(caught.value)


@pytest.mark.parametrize("target", ["http://llm.example/v1/models", "https://llm.example/v1"])
async def test_a_proxy_hanging_up_before_the_answer_is_an_egress_fault(target: str) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"CONNECT"):  # the tunnel opens, then the proxy dies in it
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await reader.read(1)
        writer.transport.abort()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = HttpUpstream()
    try:
        # plain: no answer to the forwarded request; https: the TLS handshake in the tunnel
        # breaks (aiohttp's connector error)
        with pytest.raises((http1.ConnectError, aiohttp.ClientConnectorError)) as caught:
            await upstream.request(
                f"http://gw:{PASSWORD}@127.0.0.1:{port}",
                "POST",
                target,
                {},
                b"{}",
                Timeouts(connect=2, read=2, pool=2),
            )
    finally:
        await upstream.close()
        server.close()
        await server.wait_closed()
    if target.startswith("http:"):
        assert isinstance(caught.value, ProxyDisconnected)
    assert exception_reason(caught.value) is ErrorReason.EGRESS_ERROR
    assert PASSWORD not in describe_exception(caught.value)
