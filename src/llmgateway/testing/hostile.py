"""A scripted hostile upstream for tests: a raw asyncio TCP server (no HTTP library) that reads
each request with a small strict reader and answers it with whatever bytes its script says.

The script is read afresh for every request, so a test may change it between two. It is one of:

- `bytes`: written as they are, the connection kept open for the next request;
- a sequence of steps: `bytes` are written (one write each), a `float` pauses that many seconds,
  `CLOSE` closes the connection;
- a function `(request, peer) -> Awaitable[None]` for anything else (`endless_headers()`,
  `endless_body()`, `echo()` are such functions); the connection stays open unless it calls
  `peer.close()`.

Every request that arrived is in `seen` (connection index, raw head, body), whatever it got, so
a test can check what reached the upstream, or that nothing did. Example::

    async with HostileUpstream(interim(100) + answer(b"hello")) as upstream:
        response = await client.request(
            "POST", upstream.url + "/v1/x", {}, b"hi", connect_timeout=2, read_timeout=2
        )
        assert (response.status, await response.read(1024)) == (200, b"hello")
        upstream.script = [answer(b"first") + answer(b"second"), CLOSE]  # two in one segment
        ...
        assert [seen.body for seen in upstream.seen] == [b"hi", ...]
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

__all__ = [
    "CLOSE",
    "SWITCHING_PROTOCOLS",
    "HostileUpstream",
    "Peer",
    "Request",
    "Script",
    "Step",
    "answer",
    "echo",
    "endless_body",
    "endless_headers",
    "interim",
]

_MAX_HEAD = 64 * 1024
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [!-~]+ HTTP/1\.[01]\r\n")
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*)\r\n")
_REASONS = {100: "Continue", 101: "Switching Protocols", 102: "Processing", 103: "Early Hints"}


class _Close:
    def __repr__(self) -> str:
        return "CLOSE"


CLOSE: Final = _Close()
"""A script step: close the connection (after what was written before it)."""

Step = bytes | float | _Close


@dataclass(frozen=True, slots=True)
class Request:
    """One request as it reached the upstream: `connection` is 1 for the first accepted one;
    `head` runs from the request line to the empty line included."""

    connection: int
    head: bytes
    body: bytes

    @property
    def target(self) -> str:
        """The request target as sent (origin-form, or absolute-form through a proxy)."""
        return self.head.split(b" ", 2)[1].decode("latin-1")


class Peer:
    """The server's end of one connection, handed to script functions."""

    def __init__(
        self,
        upstream: HostileUpstream,
        index: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.index = index
        self.closed = False
        self._upstream = upstream
        self._reader = reader
        self._writer = writer

    async def send(self, data: bytes) -> None:
        """Write `data` in one write and wait until it is handed to the kernel; raises
        ConnectionError once the client has gone."""
        self._writer.write(data)
        self._upstream.written += len(data)
        await self._writer.drain()

    async def until_closed(self) -> None:
        """Wait until the client closes the connection (what it sends meanwhile is dropped)."""
        while await self._reader.read(65536):
            pass

    def close(self) -> None:
        """Close the connection once the script returns."""
        self.closed = True


Script = bytes | Sequence[Step] | Callable[[Request, Peer], Awaitable[None]]


def answer(
    body: bytes = b"ok", status: int = 200, headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """A complete answer with a Content-Length (any status, even an invalid one)."""
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers)
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Whatever')}\r\n{fields}"
    return head.encode("latin-1") + b"content-length: %d\r\n\r\n%s" % (len(body), body)


def interim(status: int = 100) -> bytes:
    """An interim (1xx) answer: `103` carries a Link header, as Early Hints do."""
    link = "link: </style.css>; rel=preload\r\n" if status == 103 else ""
    return f"HTTP/1.1 {status} {_REASONS.get(status, 'Interim')}\r\n{link}\r\n".encode()


SWITCHING_PROTOCOLS: Final = (
    b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
)
"""A 101 answer nobody asked for."""


def echo(before: bytes = b"", after: bytes = b"") -> Callable[[Request, Peer], Awaitable[None]]:
    """Answer 200 with the request's head and body as the body, `before` and `after` it in the
    same write (e.g. interim answers before, a second answer after)."""

    async def script(request: Request, peer: Peer) -> None:
        await peer.send(before + answer(request.head + request.body) + after)

    return script


def endless_headers(
    piece: int = 16 * 1024, limit: int | None = None
) -> Callable[[Request, Peer], Awaitable[None]]:
    """A status line, then one header value that never ends: `piece` bytes per write until the
    client goes away (or `limit` bytes were written, then the connection is closed)."""

    async def script(request: Request, peer: Peer) -> None:
        await peer.send(b"HTTP/1.1 200 OK\r\nx-endless: ")
        await _forever(peer, b"a" * piece, limit)

    return script


def endless_body(
    chunked: bool = False, piece: int = 64 * 1024, limit: int | None = None
) -> Callable[[Request, Peer], Awaitable[None]]:
    """A 200 whose body never ends (delimited by the connection's end, or chunked): `piece`
    bytes per write until the client goes away (or `limit` bytes were written)."""

    async def script(request: Request, peer: Peer) -> None:
        framing = b"transfer-encoding: chunked\r\n" if chunked else b"connection: close\r\n"
        await peer.send(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n")
        data = b"x" * piece
        await _forever(peer, b"%x\r\n%s\r\n" % (piece, data) if chunked else data, limit)

    return script


async def _forever(peer: Peer, data: bytes, limit: int | None) -> None:
    sent = 0
    while limit is None or sent < limit:
        await peer.send(data)
        sent += len(data)
    peer.close()


class HostileUpstream:
    """The server, on 127.0.0.1 and a free port: `url` is `http://127.0.0.1:PORT`. `seen` holds
    every request, `connections` counts accepted connections, `hangups` those the client
    closed, `written` the bytes sent to clients, `refused` the heads that did not parse (the
    connection was closed on them)."""

    def __init__(self, script: Script | None = None) -> None:
        self.script: Script = answer() if script is None else script
        self.seen: list[Request] = []
        self.refused: list[bytes] = []
        self.connections = 0
        self.hangups = 0
        self.written = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        peer = Peer(self, self.connections, reader, writer)
        try:
            while not peer.closed:
                request = await self._request(reader, peer.index)
                if request is None:
                    break
                self.seen.append(request)
                await self._run(self.script, request, peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.hangups += 1
        except asyncio.CancelledError:
            pass  # the server is shutting down
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _request(self, reader: asyncio.StreamReader, index: int) -> Request | None:
        """The next request, or None once the client closed or sent something unparsable."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as error:
            if error.partial:
                self.refused.append(error.partial)
            self.hangups += 1
            return None
        except asyncio.LimitOverrunError:
            self.refused.append(b"")  # a head over 64 KiB
            return None
        length = _content_length(head)
        if length is None:
            self.refused.append(head)
            return None
        return Request(index, head, await reader.readexactly(length))

    async def _run(self, script: Script, request: Request, peer: Peer) -> None:
        if isinstance(script, bytes):
            await peer.send(script)
        elif callable(script):
            await script(request, peer)
        else:
            for step in script:
                if isinstance(step, bytes):
                    await peer.send(step)
                elif isinstance(step, _Close):
                    peer.close()
                    return
                else:
                    await asyncio.sleep(step)


def _content_length(head: bytes) -> int | None:
    """The body's length of a well-formed request head (0 without one), else None."""
    line = _REQUEST_LINE.match(head)
    if line is None:
        return None
    lengths: set[bytes] = set()
    at = line.end()
    while at < len(head) - 2:
        field = _FIELD.match(head, at)
        if field is None:
            return None
        if field[1].lower() == b"content-length":
            lengths.add(field[2].rstrip(b" \t"))
        elif field[1].lower() == b"transfer-encoding":
            return None  # not needed by any test: refused rather than half-supported
        at = field.end()
    if len(lengths) > 1 or not all(length.isdigit() for length in lengths):
        return None
    return int(lengths.pop()) if lengths else 0
