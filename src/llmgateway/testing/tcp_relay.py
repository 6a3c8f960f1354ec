"""A TCP relay for tests: forwards a loopback port to a real server, and can be cut and restored.

Point a client (the gateway's database URL, say) at the relay instead of the server; `cut()`
then makes the server unreachable (new connections refused, open ones reset) and `restore()`
brings it back on the same port, without touching the server itself. Use as
`async with TcpRelay("127.0.0.1", 5432) as relay:`.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Self

from llmgateway.testing.pipes import pipe_both


class TcpRelay:
    """Relays `host:port` (loopback, port 0 picks one) to `target_host:target_port`."""

    def __init__(
        self, target_host: str, target_port: int, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.target_host, self.target_port = target_host, target_port
        self.host, self.port = host, port
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[Any]] = set()

    @property
    def open_connections(self) -> int:
        """Client connections relayed right now."""
        return len(self._pipes)

    async def start(self) -> None:
        """Listen on `host:port`."""
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Make the target unreachable: stop listening and reset every relayed connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._open):
            writer.transport.abort()
        pipes = list(self._pipes)
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def restore(self) -> None:
        """Listen again on the same port (no-op when not cut)."""
        if self._server is None:
            await self.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.cut()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.accepted += 1
        self._pipes.add(task)
        self._open.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
            self._open.add(up_writer)
            await pipe_both(reader, writer, up_reader, up_writer)
        except OSError:
            pass  # the target refused: the client sees its connection closed
        except asyncio.CancelledError:
            pass  # cut: the connections were reset already
        finally:
            for end in (writer, up_writer):
                if end is not None:
                    self._open.discard(end)
                    end.transport.abort()
            self._pipes.discard(task)
