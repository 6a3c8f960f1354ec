"""A hostile upstream against both transports of `transport.upstream`, on real loopback sockets
(`HostileUpstream` answers with exact bytes): interim answers are skipped, bytes after an answer
close its connection, what an upstream sends is bounded, a request HTTP/1.1 cannot carry is
refused before anything is sent. The proxied path (aiohttp) is pointed at the hostile server
as its proxy, which then answers in the proxy's place."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from tests.helpers import eventually

from llmgateway.config.settings import Timeouts
from llmgateway.core.outcomes import ErrorReason
from llmgateway.testing.hostile import (
    CLOSE,
    SWITCHING_PROTOCOLS,
    HostileUpstream,
    Peer,
    Request,
    answer,
    echo,
    endless_body,
    endless_headers,
    interim,
)
from llmgateway.transport.errors import exception_reason
from llmgateway.transport.http1 import (
    MAX_HEAD_BYTES,
    Client,
    InvalidRequest,
    ProtocolError,
    Response,
    ResponseTooLarge,
    check_request,
)
from llmgateway.transport.upstream import HttpUpstream, Upstream, UpstreamResponse

WHOLE = 1 << 20
ONE_READ = 256 * 1024  # the most asyncio hands over in one `data_received`
CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    client = Client()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def upstream() -> AsyncIterator[HostileUpstream]:
    async with HostileUpstream() as server:
        yield server


async def call(
    client: Client, url: str, body: bytes = b"", read: float = 2.0, **headers: str
) -> Response:
    return await client.request(
        "POST", url + "/v1/x", headers, body, connect_timeout=2.0, read_timeout=read
    )


async def fetch(client: Client, url: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Status, headers and whole body of one call, the answer closed in the end."""
    response = await call(client, url, body)
    try:
        return response.status, response.headers, await response.read(WHOLE)
    finally:
        response.close()


def echoed(body: bytes) -> Callable[[bytes], bool]:
    """Whether an echoed request (head and body) is the one that carried `body`."""
    return lambda echo: echo.endswith(b"\r\n\r\n" + body)


# --- interim answers ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [100, 102, 103])
@pytest.mark.parametrize("segments", ["one", "two"])
async def test_an_interim_answer_is_skipped(
    client: Client, upstream: HostileUpstream, status: int, segments: str
) -> None:
    final = answer(b"the answer", headers=[("x-final", "1")])
    if segments == "one":
        upstream.script = interim(status) + final
    else:  # the upstream thinks a while between the two
        upstream.script = [interim(status), 0.02, final]
    for _ in range(2):  # and the connection carries the next request
        status_, headers, body = await fetch(client, upstream.url)
        assert (status_, body) == (200, b"the answer")
        assert "link" not in headers  # the interim answer's headers are dropped
        assert headers["x-final"] == "1"
    assert upstream.connections == 1


async def test_several_interim_answers_then_the_final_one(
    client: Client, upstream: HostileUpstream
) -> None:
    upstream.script = interim(100) + interim(103) + interim(102) * 50 + answer(b"final")
    assert (await fetch(client, upstream.url))[2] == b"final"
    assert client.open_connections() == 1


async def test_the_final_answer_after_a_pause(client: Client, upstream: HostileUpstream) -> None:
    upstream.script = [
        interim(100),
        0.05,
        b"HTTP/1.1 200 OK\r\ncontent-le",
        0.02,
        b"ngth: 1\r\n\r\nx",
    ]
    assert (await fetch(client, upstream.url))[2] == b"x"


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param(SWITCHING_PROTOCOLS, id="101"),
        pytest.param(interim(100) + SWITCHING_PROTOCOLS + answer(), id="100-then-101"),
        pytest.param(answer(status=999), id="999"),
        pytest.param(answer(status=600), id="600"),
        pytest.param(answer(status=99), id="099"),
        pytest.param(b"HTTP/1.1 150 Odd\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",
                     id="interim-with-a-body"),
        pytest.param(interim(100) + b"\r\n" + answer(), id="line-break-after-interim"),
        pytest.param(b"\r\n" + answer(), id="line-break-first"),
        pytest.param(answer().replace(b"HTTP/1.1", b"RTSP/1.0"), id="rtsp"),
        pytest.param(answer().replace(b"HTTP/1.1", b"ICE/1.0"), id="ice"),
        pytest.param(interim(100) + answer().replace(b"HTTP/1.1", b"ICE/1.0"), id="ice-after-100"),
        pytest.param(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nok", id="gzip-coding"),
        pytest.param(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
                     b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n", id="two-codings"),
        pytest.param(b"HTTP/1.1 200 OK\r\nx-a: 1\r\n 2\r\n\r\n", id="obs-fold"),
        pytest.param(b"HTTP/1.1 200 OK\ncontent-length: 0\n\n", id="bare-lf"),
    ],
)  # fmt: skip
async def test_an_answer_that_is_not_http11_is_a_protocol_error(
    client: Client, upstream: HostileUpstream, hostile: bytes
) -> None:
    upstream.script = [hostile, 0.5, CLOSE]
    with pytest.raises(ProtocolError) as caught:
        await call(client, upstream.url)
    assert exception_reason(caught.value) is ErrorReason.SERVER_ERROR  # the provider's fault
    assert client.open_connections() == 0
    upstream.script = echo()
    assert echoed(b"next")((await fetch(client, upstream.url, b"next"))[2])
    assert [seen.connection for seen in upstream.seen] == [1, 2]


# --- bytes after the answer -------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(answer(b"stale"), id="a-second-answer"),
        pytest.param(b"garbage", id="garbage"),
        pytest.param(b"HTTP/1.1 20", id="a-partial-status-line"),
    ],
)
async def test_bytes_after_the_answer_in_the_same_segment_close_the_connection(
    client: Client, upstream: HostileUpstream, extra: bytes
) -> None:
    upstream.script = echo(after=extra)
    for body in (b"one", b"two"):
        status, _, echo_ = await fetch(client, upstream.url, body)
        assert status == 200
        assert echoed(body)(echo_)  # the answer itself is intact
        await eventually(lambda: client.open_connections() == 0)
    assert [seen.connection for seen in upstream.seen] == [1, 2]
    await eventually(lambda: upstream.hangups == 2)


async def test_bytes_after_the_answer_in_a_later_segment_close_the_connection(
    client: Client, upstream: HostileUpstream
) -> None:
    later = asyncio.Event()

    async def script(request: Request, peer: Peer) -> None:
        await peer.send(answer(b"mine"))
        await later.wait()
        await peer.send(answer(b"stale"))

    upstream.script = script
    response = await call(client, upstream.url)
    later.set()  # the caller still holds the answer: it stays readable
    await eventually(lambda: client.open_connections() == 0)
    assert await response.read(WHOLE) == b"mine"
    response.close()
    upstream.script = answer(b"fresh")
    assert (await fetch(client, upstream.url))[2] == b"fresh"
    assert upstream.connections == 2


async def test_bytes_on_an_idle_connection_close_it(
    client: Client, upstream: HostileUpstream
) -> None:
    idle = asyncio.Event()

    async def script(request: Request, peer: Peer) -> None:
        await peer.send(answer(b"mine"))
        await idle.wait()
        await peer.send(answer(b"early: before any request"))

    upstream.script = script
    assert (await fetch(client, upstream.url))[2] == b"mine"
    assert client.open_connections() == 1  # idle in the pool
    idle.set()
    await eventually(lambda: client.open_connections() == 0)
    upstream.script = answer(b"fresh")
    assert (await fetch(client, upstream.url))[2] == b"fresh"
    assert upstream.connections == 2


# --- bounds on what an upstream sends --------------------------------------------------------


def head_of(size: int) -> bytes:
    """A 200 whose head (status line to empty line) is exactly `size` bytes."""
    start, end = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-pad: ", b"\r\n\r\n"
    return start + b"p" * (size - len(start) - len(end)) + end


@pytest.mark.parametrize("segments", [1, 7])
async def test_a_head_may_take_64_kib_not_more(
    client: Client, upstream: HostileUpstream, segments: int
) -> None:
    for size, fits in ((MAX_HEAD_BYTES, True), (MAX_HEAD_BYTES + 1, False)):
        head = head_of(size)
        step = -(-len(head) // segments)
        upstream.script = [head[i : i + step] for i in range(0, len(head), step)]
        if fits:
            assert (await fetch(client, upstream.url))[0] == 200
        else:
            with pytest.raises(ProtocolError, match="head is over 64 KiB"):
                await call(client, upstream.url)


async def test_interim_answers_count_against_the_head_bound(
    client: Client, upstream: HostileUpstream
) -> None:
    upstream.script = interim(100) * (MAX_HEAD_BYTES // len(interim(100)) + 1) + answer()
    with pytest.raises(ProtocolError, match="head is over 64 KiB"):
        await call(client, upstream.url)


@pytest.mark.parametrize(("count", "fits"), [(100, True), (101, False)])
async def test_a_head_may_hold_100_fields(
    client: Client, upstream: HostileUpstream, count: int, fits: bool
) -> None:
    fields = [("x-same", "v")] * (count - 1)  # and the content-length
    upstream.script = answer(headers=fields)
    if fits:
        assert (await fetch(client, upstream.url))[1]["x-same"] == ", ".join(["v"] * (count - 1))
    else:
        with pytest.raises(ProtocolError, match="over 100 header fields"):
            await call(client, upstream.url)


def traced_peak(before: int) -> int:
    return tracemalloc.get_traced_memory()[1] - before


@pytest.fixture
def traced() -> Iterator[int]:
    """Python's allocations traced for the test; yields what was allocated before it."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        yield tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


async def test_an_endless_header_is_cut_off_after_64_kib(
    client: Client, upstream: HostileUpstream, traced: int
) -> None:
    # bounded, so that a client without the bound fails in seconds instead of eating the memory
    upstream.script = endless_headers(limit=32 << 20)
    with pytest.raises(ProtocolError, match="head is over 64 KiB"):
        await call(client, upstream.url, read=10.0)
    # a head is counted before the parser gets it: the parser held under 64 KiB, and the
    # client the read being looked at (unbounded, it would have taken the 32 MiB)
    assert traced_peak(traced) < MAX_HEAD_BYTES + ONE_READ * 2
    await eventually(lambda: upstream.hangups == 1)


@pytest.mark.parametrize(
    "tail",
    [pytest.param(b"0\r\nx-trailer: ", id="trailer"), pytest.param(b"5;ext=", id="extension")],
)
async def test_endless_framing_after_the_head_is_cut_off(
    client: Client, upstream: HostileUpstream, traced: int, tail: bytes
) -> None:
    async def script(request: Request, peer: Peer) -> None:
        await peer.send(CHUNKED + b"2\r\nok\r\n" + tail)
        for _ in range(2048):  # 32 MiB at most
            await peer.send(b"a" * 16384)

    upstream.script = script
    response = await call(client, upstream.url, read=10.0)
    with pytest.raises(ProtocolError, match="framing without data"):
        await response.read(WHOLE)
    response.close()
    # after the head, bytes are counted once parsed: the parser held up to 64 KiB and one read,
    # and copied them once more while appending the next piece of a trailer field
    assert traced_peak(traced) < (MAX_HEAD_BYTES + ONE_READ) * 4


async def test_trailers_are_not_headers_and_trailing_whitespace_is_dropped(
    client: Client, upstream: HostileUpstream
) -> None:
    upstream.script = (
        b"HTTP/1.1 200 OK\r\nx-a:  one \t\r\ncontent-type: text/plain \r\n"
        b"transfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-trailer: 1\r\n\r\n"
    )
    _, headers, body = await fetch(client, upstream.url)
    assert headers == {"x-a": "one", "content-type": "text/plain", "transfer-encoding": "chunked"}
    assert body == b"ok"


@pytest.mark.parametrize(("count", "fits"), [(100, True), (101, False)])
async def test_a_trailer_section_may_hold_100_fields(
    client: Client, upstream: HostileUpstream, count: int, fits: bool
) -> None:
    trailers = b"".join(b"x-t%d: 1\r\n" % (n % 50) for n in range(count))  # repeats, too
    upstream.script = CHUNKED + b"2\r\nok\r\n0\r\n" + trailers + b"\r\n"
    if fits:
        assert (await fetch(client, upstream.url))[2] == b"ok"
    else:  # in one segment with the head: the caller may not even see the head
        with pytest.raises(ProtocolError, match="over 100 trailer fields"):
            await fetch(client, upstream.url)


@pytest.mark.parametrize("chunked", [False, True], ids=["until-close", "chunked"])
async def test_an_endless_body_read_whole_stops_at_the_limit(
    client: Client, upstream: HostileUpstream, traced: int, chunked: bool
) -> None:
    limit = 1 << 20
    upstream.script = endless_body(chunked=chunked, limit=64 << 20)
    response = await call(client, upstream.url)
    with pytest.raises(ResponseTooLarge, match="over 1048576 bytes"):
        await response.read(limit)
    with pytest.raises(ResponseTooLarge):  # and it stays failed
        await response.read(limit)
    response.close()
    assert client.open_connections() == 0
    assert traced_peak(traced) < limit + ONE_READ * 3  # the limit, the read over it, the copy
    await eventually(lambda: upstream.hangups == 1)


@pytest.mark.parametrize(("size", "fits"), [(1000, True), (1001, False)])
async def test_a_declared_length_over_the_limit_fails_at_once(
    client: Client, upstream: HostileUpstream, size: int, fits: bool
) -> None:
    upstream.script = [b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size, b"x" * 1000]
    response = await call(client, upstream.url)
    if fits:
        assert len(await response.read(1000)) == 1000
    else:
        with pytest.raises(ResponseTooLarge):
            await response.read(1000)
    response.close()
    assert client.open_connections() == (1 if fits else 0)


# --- requests HTTP/1.1 cannot carry ----------------------------------------------------------

SECRET = "sk-secret-0123456789"
BAD_REQUESTS = [
    pytest.param("GE T", "/v1/x", {}, "method", id="space-in-method"),
    pytest.param("GET\r\nX: y", "/v1/x", {}, "method", id="crlf-in-method"),
    pytest.param("", "/v1/x", {}, "method", id="empty-method"),
    pytest.param("GET", "/v1/x y", {}, "target", id="space-in-target"),
    pytest.param("GET", "/v1/x\r\nx-evil: 1", {}, "target", id="crlf-in-target"),
    pytest.param("GET", f"/v1/x#{SECRET}", {}, "target", id="fragment"),
    pytest.param("GET", "/v1/é", {}, "target", id="non-ascii-target"),
    pytest.param("GET", "/v1/\x7f", {}, "target", id="del-in-target"),
    pytest.param("GET", "/v1/\x00", {}, "target", id="nul-in-target"),
    pytest.param("GET", "/v1/x", {"x a": "1"}, "header name", id="space-in-name"),
    pytest.param("GET", "/v1/x", {"x:y": "1"}, "header name", id="colon-in-name"),
    pytest.param("GET", "/v1/x", {"": "1"}, "header name", id="empty-name"),
    pytest.param("GET", "/v1/x", {"x-a\r\nx-evil": "1"}, "header name", id="crlf-in-name"),
    pytest.param("GET", "/v1/x", {"x-é": "1"}, "header name", id="non-ascii-name"),
    pytest.param("GET", "/v1/x", {"x-a": f"{SECRET}\r\nx-evil: 1"}, "'x-a'", id="crlf-in-value"),
    pytest.param("GET", "/v1/x", {"x-a": f"{SECRET}\nx"}, "'x-a'", id="lf-in-value"),
    pytest.param("GET", "/v1/x", {"x-a": f"{SECRET}\rx"}, "'x-a'", id="cr-in-value"),
    pytest.param("GET", "/v1/x", {"x-a": f"{SECRET}\0"}, "'x-a'", id="nul-in-value"),
    pytest.param("GET", "/v1/x", {"ok": "1", "x-a": f"{SECRET}€"}, "'x-a'", id="beyond-latin-1"),
]


@pytest.mark.parametrize(("method", "target", "headers", "named"), BAD_REQUESTS)
async def test_a_request_http1_cannot_carry_is_refused_before_sending(
    client: Client,
    upstream: HostileUpstream,
    method: str,
    target: str,
    headers: dict[str, str],
    named: str,
) -> None:
    url = upstream.url + target
    with pytest.raises(InvalidRequest) as refused:
        await client.request(method, url, headers, b"", connect_timeout=2, read_timeout=2)
    assert named in str(refused.value)
    assert SECRET not in str(refused.value)
    with pytest.raises(InvalidRequest):
        check_request(method, url, headers)
    upstream.script = echo()
    assert echoed(b"after")((await fetch(client, upstream.url, b"after"))[2])
    assert len(upstream.seen) == 1  # the refused request never went out
    assert upstream.refused == []


@pytest.mark.parametrize("authority", ["ho st", "host\r\nx-evil: 1", "h\x00st", "host:12ab"])
async def test_a_url_whose_host_is_not_a_host_is_refused(client: Client, authority: str) -> None:
    with pytest.raises(InvalidRequest, match="host"):
        await client.request(
            "GET", f"http://{authority}/", {}, b"", connect_timeout=1, read_timeout=1
        )
    assert client.open_connections() == 0


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080", "http://[::1]:8080/v1?x=1&y=%20", "https://api.example.com/v1/a:b"],
)
def test_ordinary_requests_pass_the_check(url: str) -> None:
    check_request("POST", url, {"authorization": "Bearer sk-1", "x-empty": "", "x-tab": "a\tb"})


# --- the proxied path (aiohttp) --------------------------------------------------------------

TIMEOUTS = Timeouts(connect=2.0, read=2.0, pool=1.0)


@pytest.fixture
async def proxied() -> AsyncIterator[Upstream]:
    sessions = HttpUpstream()
    try:
        yield sessions
    finally:
        await sessions.close()


async def via_proxy(proxied: Upstream, upstream: HostileUpstream, **kw: Any) -> UpstreamResponse:
    """A call through `upstream` as the outbound proxy (it answers in the proxy's place)."""
    headers = kw.get("headers", {})
    url = kw.get("url", "http://provider.invalid/v1/x")
    return await proxied.request(upstream.url, "POST", url, headers, b"{}", TIMEOUTS)


async def test_proxied_interim_answers_are_skipped(
    proxied: Upstream, upstream: HostileUpstream
) -> None:
    upstream.script = interim(100) + interim(103) + answer(b"final")
    response = await via_proxy(proxied, upstream)
    try:
        assert (response.status, await response.read(WHOLE)) == (200, b"final")
    finally:
        response.close()
    assert upstream.seen[0].target == "http://provider.invalid/v1/x"


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param(SWITCHING_PROTOCOLS, id="101"),
        pytest.param(answer(status=999), id="999"),
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", id="not-http"),
        pytest.param(head_of(17000), id="field-over-16-kib"),
        pytest.param(b"HTTP/1.1 200 " + b"x" * 9000 + b"\r\n\r\n", id="status-line-over-8-kib"),
        pytest.param(answer(headers=[("x-same", "v")] * 100), id="over-100-fields"),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx",
                     id="conflicting-lengths"),
    ],
)  # fmt: skip
async def test_proxied_answers_that_are_not_http11_are_protocol_errors(
    proxied: Upstream, upstream: HostileUpstream, hostile: bytes
) -> None:
    upstream.script = [hostile, CLOSE]
    with pytest.raises(ProtocolError):
        await via_proxy(proxied, upstream)


async def test_proxied_fields_may_take_16_kib(proxied: Upstream, upstream: HostileUpstream) -> None:
    upstream.script = head_of(16000)
    response = await via_proxy(proxied, upstream)
    response.close()
    assert len(response.headers["x-pad"]) > 15000


async def test_proxied_endless_headers_are_a_protocol_error(
    proxied: Upstream, upstream: HostileUpstream
) -> None:
    upstream.script = endless_headers(limit=32 << 20)
    with pytest.raises(ProtocolError):
        await via_proxy(proxied, upstream)
    await eventually(lambda: upstream.hangups == 1)


@pytest.mark.parametrize("chunked", [False, True], ids=["until-close", "chunked"])
async def test_proxied_endless_body_read_whole_stops_at_the_limit(
    proxied: Upstream, upstream: HostileUpstream, traced: int, chunked: bool
) -> None:
    upstream.script = endless_body(chunked=chunked, limit=64 << 20)
    response = await via_proxy(proxied, upstream)
    try:
        with pytest.raises(ResponseTooLarge):
            await response.read(WHOLE)
    finally:
        response.close()
    assert traced_peak(traced) < WHOLE + ONE_READ * 4


async def test_proxied_declared_length_over_the_limit_fails_at_once(
    proxied: Upstream, upstream: HostileUpstream
) -> None:
    upstream.script = [b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n", 5.0]
    response = await via_proxy(proxied, upstream)
    try:
        with pytest.raises(ResponseTooLarge):
            await response.read(4999)
    finally:
        response.close()


@pytest.mark.parametrize(("method", "target", "headers", "named"), BAD_REQUESTS)
async def test_proxied_requests_http1_cannot_carry_are_refused_before_sending(
    proxied: Upstream,
    upstream: HostileUpstream,
    method: str,
    target: str,
    headers: dict[str, str],
    named: str,
) -> None:
    url = "http://provider.invalid" + target
    with pytest.raises(InvalidRequest) as refused:
        await proxied.request(upstream.url, method, url, headers, b"", TIMEOUTS)
    assert SECRET not in str(refused.value)
    upstream.script = echo()
    response = await via_proxy(proxied, upstream)
    response.close()
    assert len(upstream.seen) == 1  # the refused request never went out
