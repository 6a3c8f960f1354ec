"""The direct HTTP/1.1 client (`transport.http1`) on real loopback sockets: a scripted raw TCP
server answers with exact bytes, so framing, keep-alive, timeouts, pool limits and broken
connections are under the test's control; the fake upstream (aiohttp) is a real server too."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
import pytest
import trustme
from tests.helpers import eventually

from llmgateway.core.outcomes import ErrorReason
from llmgateway.testing import FakeUpstream
from llmgateway.transport.errors import exception_reason
from llmgateway.transport.http1 import (
    Client,
    ConnectError,
    ConnectTimeout,
    Disconnected,
    Limits,
    ReadTimeout,
    Response,
)

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
WHOLE = 64 << 20  # the limit of a body read whole
BIG = random.Random(7).randbytes(4 << 20)


@dataclass(slots=True)
class Peer:
    """The server's end of one accepted connection (`index`: 1 for the first accepted)."""

    server: Server
    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def request(self) -> bytes | None:
        """The next request's head (it and the body are recorded), or None once the client
        closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.server.eofs += 1
            return None
        length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
        body = await self.reader.readexactly(int(length[1]) if length else 0)
        self.server.seen.append((self.index, head, body))
        return head

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_eof(self) -> None:
        """Wait for the client to close the connection (counted in `server.eofs`)."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass
        self.server.eofs += 1


Script = Callable[[Peer], Awaitable[None]]
Reader = Callable[[Response], Awaitable[bytes]]


def answering(answer: bytes) -> Script:
    """Answer every request of a connection with `answer`, keeping it open."""

    async def script(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(answer)

    return script


def first_then(first: Script) -> Script:
    """`first` on the first connection, then plain `OK`s on later ones."""
    return lambda peer: first(peer) if peer.index == 1 else answering(OK)(peer)


def stall_mid_body(head: bytes, part: bytes) -> Script:
    """Take one request, send `head + part`, then say nothing until the client leaves."""

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(head + part)
        await peer.until_eof()

    return script


@dataclass(slots=True)
class Server:
    """A raw TCP server on 127.0.0.1 running `script` on each accepted connection, then
    closing it; `seen` holds (connection index, head, body) per request."""

    script: Script
    tls: ssl.SSLContext | None = None
    connections: int = 0
    eofs: int = 0
    port: int = 0
    seen: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    _tasks: set[asyncio.Task[object]] = field(default_factory=set)
    _server: asyncio.Server | None = None

    def url(self, target: str = "/v1/x") -> str:
        return f"http://127.0.0.1:{self.port}{target}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.connections += 1
        try:
            await self.script(Peer(self, self.connections, reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the server is shutting down
        finally:
            writer.close()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def opened(limits: Limits | None = None) -> AsyncIterator[Client]:
    client = Client(limits or Limits())
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async with opened() as client:
        yield client


async def call(
    client: Client, url: str, method: str = "GET", body: bytes = b"", **kw: Any
) -> Response:
    """`client.request()` with no headers and 2 s timeouts unless `headers`, `connect`, `read`."""
    connect, read = kw.get("connect", 2.0), kw.get("read", 2.0)
    headers = kw.get("headers", {})
    return await client.request(
        method, url, headers, body, connect_timeout=connect, read_timeout=read
    )


async def fetch(client: Client, url: str, reader: Reader | None = None, **options: Any) -> bytes:
    """One call's whole body (by `reader`, default `read(WHOLE)`), the answer closed in the end."""
    response = await call(client, url, **options)
    try:
        return await (reader or read_whole)(response)
    finally:
        response.close()


async def read_whole(response: Response) -> bytes:
    return await response.read(WHOLE)


async def iterate(response: Response) -> bytes:
    pieces = []
    async for piece in response.chunks():
        pieces.append(piece)
        await asyncio.sleep(0)  # a consumer that yields to the loop at every piece
    return b"".join(pieces)


READERS = [pytest.param(read_whole, id="read"), pytest.param(iterate, id="chunks")]


def chunked(payload: bytes, size: int) -> bytes:
    pieces = [payload[i : i + size] for i in range(0, len(payload), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


@pytest.mark.parametrize(
    ("version", "extra", "connections"),
    [("HTTP/1.1", b"", 1), ("HTTP/1.1", b"Connection: close\r\n", 2), ("HTTP/1.0", b"", 2)],
    ids=["keep-alive", "connection-close", "http1.0"],
)
async def test_connections_are_reused_unless_the_answer_closes(
    client: Client, version: str, extra: bytes, connections: int
) -> None:
    head = f"{version} 201 Created\r\n".encode() + extra + b"X-Multi: a\r\nX-Multi: b\r\n"
    async with Server(answering(head + b"Content-Length: 2\r\n\r\nok")) as server:
        for _ in range(2):
            response = await call(client, server.url())
            assert (response.status, response.content_length) == (201, 2)
            assert response.headers["x-multi"] == "a, b"
            assert await response.read(WHOLE) == b"ok"
            response.close()
        assert len(server.seen) == 2
        assert server.connections == connections
        assert client.open_connections() == (1 if connections == 1 else 0)


@pytest.mark.parametrize(
    ("method", "body", "length_line"),
    [
        ("POST", b'{"model":"m"}', b"content-length: 13\r\n"),
        ("POST", bytes(range(256)) * 400, b"content-length: 102400\r\n"),  # head, body: 2 writes
        ("POST", b"", b"content-length: 0\r\n"),
        ("GET", b"", b""),
    ],
    ids=["small", "100KiB", "empty-post", "get"],
)
async def test_the_request_goes_out_framed_exactly(
    client: Client, method: str, body: bytes, length_line: bytes
) -> None:
    async with Server(answering(OK)) as server:
        headers = {"authorization": "Bearer sk-1", "x-trace": "a b"}
        response = await call(client, server.url("/v1/chat?x=1&y=2"), method, body, headers=headers)
        assert response.status == 200
        start = f"{method} /v1/chat?x=1&y=2 HTTP/1.1\r\nhost: 127.0.0.1:{server.port}\r\n"
        head = start.encode() + b"authorization: Bearer sk-1\r\nx-trace: a b\r\n" + length_line
        assert server.seen == [(1, head + b"\r\n", body)]


async def test_an_origin_only_url_asks_for_the_root(client: Client) -> None:
    async with Server(answering(OK)) as server:
        await fetch(client, f"http://127.0.0.1:{server.port}")
        assert server.seen[0][1].startswith(b"GET / HTTP/1.1\r\n")


async def test_a_chunked_body_streams_in_order(client: Client) -> None:
    go_on = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await go_on.wait()  # the rest only once the client has had the first piece
        await peer.send(b"7\r\n second\r\n6\r\n third\r\n0\r\n\r\n")

    async with Server(script) as server:
        response = await call(client, server.url())
        assert response.content_length is None
        pieces = []
        async for piece in response.chunks():
            pieces.append(piece)
            go_on.set()
        assert pieces[0] == b"first"
        assert b"".join(pieces) == b"first second third"


async def test_a_body_ended_by_close_is_read_whole(client: Client) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npart one, ")
        await asyncio.sleep(0.01)  # the upstream's pace: the body comes in two reads
        await peer.send(b"part two")

    async with Server(script) as server:
        response = await call(client, server.url())
        assert await response.read(WHOLE) == b"part one, part two"
        response.close()
        assert client.open_connections() == 0


@pytest.mark.parametrize(("size", "expected"), [(100, 10), (10, 10), (4, 4), (0, 0)])
async def test_read_prefix_gives_at_most_n_bytes(client: Client, size: int, expected: int) -> None:
    body = bytes(range(size))
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (size, body)
    async with Server(answering(answer)) as server:
        response = await call(client, server.url())
        assert await response.read_prefix(10) == body[:expected]


async def test_a_head_answer_has_no_body(client: Client) -> None:
    async with Server(answering(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")) as server:
        response = await call(client, server.url(), "HEAD", read=0.2)
        assert response.content_length == 100
        assert await response.read(WHOLE) == b""


@pytest.mark.parametrize(
    ("head", "reader"),
    [pytest.param(b"", None, id="silent"),
     pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", read_whole, id="read"),
     pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", iterate, id="chunks")],
)  # fmt: skip
async def test_a_stalling_upstream_times_out(
    client: Client, head: bytes, reader: Reader | None
) -> None:
    async with Server(stall_mid_body(head, b"")) as server:
        if reader is not None:  # the head came in time, the body stalls
            response = await call(client, server.url(), read=0.1)
            started = time.monotonic()
            with pytest.raises(ReadTimeout) as caught:
                await reader(response)
            response.close()
        else:
            started = time.monotonic()
            with pytest.raises(ReadTimeout) as caught:
                await call(client, server.url(), read=0.1)
        assert 0.09 <= time.monotonic() - started < 1.0
        assert exception_reason(caught.value) is ErrorReason.TIMEOUT
        assert client.open_connections() == 0
        await eventually(lambda: server.eofs == 1)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:{port}/x", "ftp://127.0.0.1/x", "http://u:p@127.0.0.1/x", "http:///x"]
)
async def test_no_connection_is_a_connect_error(url: str) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = url.format(port=unused.getsockname()[1])
        async with opened(Limits(total=1)) as client, Server(answering(OK)) as server:
            for _ in range(3):  # and a failed attempt gives its pool slot back
                with pytest.raises(ConnectError) as caught:
                    await call(client, url)
                assert not isinstance(caught.value, ConnectTimeout)
                assert exception_reason(caught.value) is ErrorReason.EGRESS_ERROR
            assert client.open_connections() == 0
            assert await fetch(client, server.url(), connect=0.2) == b"ok"


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
     b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n64\r\n"],
    ids=["content-length", "chunked"],
)  # fmt: skip
@pytest.mark.parametrize("reader", READERS)
async def test_an_upstream_closing_mid_body_is_a_disconnect(
    client: Client, head: bytes, reader: Reader
) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(head + b"0123456789")

    async with Server(script) as server:
        response = await call(client, server.url())
        with pytest.raises(Disconnected) as caught:
            await reader(response)
        assert exception_reason(caught.value) is ErrorReason.STREAM_DISCONNECT
        response.close()
        assert client.open_connections() == 0


@pytest.mark.parametrize("answer", [b"HTTP/1.1 abc OK\r\n\r\n", b"SSH-2.0-OpenSSH_9.6\r\n\r\n"])
async def test_a_malformed_answer_is_a_disconnect(client: Client, answer: bytes) -> None:
    async with Server(first_then(answering(answer))) as server:
        with pytest.raises(Disconnected):
            await call(client, server.url())
        assert client.open_connections() == 0
        assert await fetch(client, server.url()) == b"ok"
        assert server.connections == 2


async def test_a_full_pool_times_out_the_wait() -> None:
    limits = Limits(total=2, per_origin=1)
    async with Server(answering(OK)) as one, Server(answering(OK)) as two, opened(limits) as client:
        held = [await call(client, one.url())]
        started = time.monotonic()
        with pytest.raises(ConnectTimeout) as caught:
            await call(client, one.url(), connect=0.05)  # the cap per origin
        assert 0.04 <= time.monotonic() - started < 1.0
        assert exception_reason(caught.value) is ErrorReason.EGRESS_ERROR
        held.append(await call(client, two.url(), connect=0.5))  # other origins are free
        with pytest.raises(ConnectTimeout):
            await call(client, f"http://localhost:{one.port}/x", connect=0.05)  # the total cap
        assert (one.connections, two.connections) == (1, 1)
        for response in held:
            response.close()


async def test_an_idle_connection_makes_room_for_another_origin() -> None:
    limits = Limits(total=1)
    async with Server(answering(OK)) as one, Server(answering(OK)) as two, opened(limits) as client:
        assert await fetch(client, one.url()) == b"ok"  # idle in the pool now
        assert await fetch(client, two.url(), connect=0.2) == b"ok"
        assert client.open_connections() == 1


@pytest.mark.parametrize(("read_first", "connections"), [(True, 1), (False, 2)])
async def test_a_waiting_request_gets_the_freed_slot(read_first: bool, connections: int) -> None:
    release = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab")
        await release.wait()
        await peer.send(b"cd")
        await answering(OK)(peer)

    async with Server(first_then(script)) as server, opened(Limits(total=1)) as client:
        held = await call(client, server.url())
        waiting = asyncio.create_task(fetch(client, server.url()))
        await eventually(lambda: len(client._waiters) == 1)
        assert not waiting.done()
        if read_first:
            release.set()
            assert await held.read(WHOLE) == b"abcd"
        held.close()  # read to its end: back to the pool; else dropped
        assert await asyncio.wait_for(waiting, 1.0) == b"ok"
        assert server.connections == connections


async def test_an_idle_connection_past_keepalive_is_not_reused() -> None:
    async with Server(answering(OK)) as server, opened(Limits(keepalive_sec=0.05)) as client:
        assert await fetch(client, server.url()) == b"ok"
        await asyncio.sleep(0.08)  # the idle time itself is under test: past the 0.05 s
        assert await fetch(client, server.url()) == b"ok"
        assert server.connections == 2
        await eventually(lambda: server.eofs == 1)
        assert client.open_connections() == 1


@pytest.mark.parametrize("race", [False, True], ids=["closed-while-idle", "closed-on-request"])
async def test_a_connection_the_upstream_closed_is_replaced(client: Client, race: bool) -> None:
    async def once(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)  # keep-alive by the headers, then closed all the same...
        if race:
            await peer.request()  # ... only when the next request comes, answering nothing

    async with Server(first_then(once)) as server:
        for body in (b"one", b"two"):
            response = await call(client, server.url(), "POST", body)
            assert await response.read(WHOLE) == b"ok"
            response.close()
            if body == b"one" and not race:
                await eventually(lambda: client.open_connections() == 0)
        sent = [(index, body) for index, _, body in server.seen]
        assert sent == [(1, b"one"), *([(1, b"two")] if race else []), (2, b"two")]
        assert server.connections == 2
        assert client.open_connections() == 1


async def test_a_reused_connection_broken_mid_answer_is_not_retried(client: Client) -> None:
    async def once_then_break(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-le")

    async with Server(first_then(once_then_break)) as server:
        assert await fetch(client, server.url()) == b"ok"
        with pytest.raises(Disconnected):
            await call(client, server.url(), "POST", b"x")
        assert server.connections == 1


async def test_closing_an_answer_mid_body_drops_its_connection(client: Client) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"
    async with Server(first_then(stall_mid_body(head, b"0123456789"))) as server:
        response = await call(client, server.url())
        assert await response.read_prefix(10) == b"0123456789"
        response.close()
        response.close()
        assert client.open_connections() == 0
        await eventually(lambda: server.eofs == 1)
        assert await fetch(client, server.url()) == b"ok"
        assert server.connections == 2


FRAMINGS = [
    pytest.param(b"content-length: %d\r\n\r\n%s" % (len(BIG), BIG), id="content-length"),
    pytest.param(b"transfer-encoding: chunked\r\n\r\n" + chunked(BIG, 50_000), id="chunked"),
]


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("reader", READERS)
async def test_a_large_body_comes_whole_through_flow_control(
    client: Client, framing: bytes, reader: Reader
) -> None:
    async with Server(answering(b"HTTP/1.1 200 OK\r\n" + framing)) as server:
        for _ in range(2):  # and the connection is fit for reuse afterwards
            assert await fetch(client, server.url(), reader, read=0.5) == BIG
        assert server.connections == 1


PARTIAL = [
    pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", id="content-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n", id="until-close"),
]


@pytest.mark.parametrize("head", PARTIAL)
async def test_closing_the_client_fails_the_answer_being_read(head: bytes) -> None:
    async with Server(stall_mid_body(head, b"0123456789")) as server:
        client = Client()
        response = await call(client, server.url())
        reading = asyncio.create_task(response.read(WHOLE))
        await asyncio.sleep(0.01)  # a window in which the stalled read must not end
        assert not reading.done()
        await client.close()
        with pytest.raises(Disconnected):
            await reading
        assert client.open_connections() == 0
        await eventually(lambda: server.eofs == 1)
        with pytest.raises(Disconnected):  # and stays failed once the loss was processed too
            await response.read(WHOLE)


async def test_cancelling_a_request_releases_its_connection() -> None:
    silent = first_then(stall_mid_body(b"", b""))
    async with Server(silent) as server, opened(Limits(total=1)) as client:
        task = asyncio.create_task(call(client, server.url()))
        await eventually(lambda: len(server.seen) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.open_connections() == 0
        await eventually(lambda: server.eofs == 1)
        assert await fetch(client, server.url(), connect=0.2) == b"ok"  # its pool slot is free
        assert server.connections == 2


async def test_a_cancelled_pool_waiter_does_not_swallow_the_freed_slot() -> None:
    async with Server(answering(OK)) as server, opened(Limits(total=1)) as client:
        held = await call(client, server.url())
        assert await held.read(WHOLE) == b"ok"
        gives_up = asyncio.create_task(fetch(client, server.url()))
        await eventually(lambda: len(client._waiters) == 1)
        gives_up.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gives_up
        waiting = asyncio.create_task(fetch(client, server.url()))
        await eventually(lambda: len(client._waiters) == 1)
        held.close()
        assert await asyncio.wait_for(waiting, 1.0) == b"ok"
        assert server.connections == 1


async def test_against_the_fake_upstream(client: Client) -> None:
    async with FakeUpstream(chunks=4) as fake:
        url = f"{fake.openai_base}/chat/completions"
        headers = {"authorization": "Bearer sk-good-1", "content-type": "application/json"}
        messages = [{"role": "user", "content": "hi"}]
        for stream in (False, True):
            body = orjson.dumps({"model": "gpt-4o-mini", "messages": messages, "stream": stream})
            response = await call(client, url, "POST", body, headers=headers)
            assert response.status == 200
            data = await iterate(response) if stream else await response.read(WHOLE)
            response.close()
            if stream:  # chunked by aiohttp
                assert data.count(b"data: ") == 5
                assert data.rstrip().endswith(b"data: [DONE]")
            else:
                assert orjson.loads(data)["choices"][0]["message"]["content"]
        assert fake.calls("sk-good-1") == 2
        assert client.open_connections() == 1


async def test_https_is_verified_and_kept_alive() -> None:
    ca = trustme.CA()
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(served)
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    async with Server(answering(OK), tls=served) as server:
        url = f"https://localhost:{server.port}/v1/x"
        client = Client(ssl_context=trusted)
        try:
            for _ in range(2):
                response = await client.request(
                    "POST", url, {}, b"{}", connect_timeout=2, read_timeout=2
                )
                assert (response.status, await response.read(WHOLE)) == (200, b"ok")
                response.close()
        finally:
            await client.close()
        assert server.connections == 1
        assert [head.split(b"\r\n")[1] for _, head, _ in server.seen] == [
            f"host: localhost:{server.port}".encode()
        ] * 2
        # a certificate the system does not trust: refused before anything is sent, and an
        # egress fault (never the key's)
        untrusting = Client()
        try:
            with pytest.raises(ConnectError) as refused:
                await untrusting.request("POST", url, {}, b"{}", connect_timeout=2, read_timeout=2)
        finally:
            await untrusting.close()
        assert exception_reason(refused.value) is ErrorReason.EGRESS_ERROR
        assert len(server.seen) == 2
