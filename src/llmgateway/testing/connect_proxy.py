"""A small real HTTP proxy for tests: `CONNECT host:port` tunnels and absolute-URI forwarding
(`GET http://host:port/path`, which is how aiohttp sends plain-http requests through a proxy).

It counts what passes through it, so a test can prove which proxy a key's traffic used, and it
can be stopped (connections refused, open ones cut) and started again on the same port to
simulate a proxy dying and coming back. Use as `async with ConnectProxy() as proxy:`.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from llmgateway.testing.pipes import pipe_both

_MAX_HEAD = 64 * 1024


class ConnectProxy:
    """An HTTP proxy on loopback. `url` is what to configure; `tunnels` counts CONNECTs,
    `forwarded` counts absolute-URI requests, `requests` both."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.tunnels = 0
        self.forwarded = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> int:
        """Everything that went through: tunnels plus forwarded requests."""
        return self.tunnels + self.forwarded

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen (again) on `host:port`; port 0 picks a free one the first time."""
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every open connection (the proxy is dead)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._open):
            writer.transport.abort()
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_HEAD:
                return
            line, _, rest = head.partition(b"\r\n")
            method, target, version = line.decode("latin-1").split(" ", 2)
            if method == "CONNECT":
                await self._tunnel(target, reader, writer)
            else:
                await self._forward(method, target, version, rest, reader, writer)
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    async def _tunnel(
        self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        host, _, port = target.rpartition(":")
        try:
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            return
        self.tunnels += 1
        self._open.add(up_writer)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await pipe_both(reader, writer, up_reader, up_writer)
        self._open.discard(up_writer)

    async def _forward(
        self,
        method: str,
        target: str,
        version: str,
        headers: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        parts = urlsplit(target)
        if parts.scheme != "http" or not parts.hostname:
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            return
        self.forwarded += 1
        self._open.add(up_writer)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        # One request per connection: the upstream closes after answering, so piping ends.
        kept = [
            h
            for h in headers.split(b"\r\n")
            if h and not h.lower().startswith((b"connection:", b"proxy-", b"keep-alive:"))
        ]
        head = f"{method} {path} {version}\r\n".encode("latin-1")
        head += b"\r\n".join([*kept, b"connection: close"]) + b"\r\n\r\n"
        up_writer.write(head)
        await pipe_both(reader, writer, up_reader, up_writer)
        self._open.discard(up_writer)
