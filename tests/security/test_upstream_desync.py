"""Response desync through the direct client, end to end over keep-alive connections: a hostile
upstream sends interim answers, a second answer in the same segment as the real one, or bytes
on a connection at rest, and no caller may ever receive an answer meant for another request.

Every request carries its own body and the upstream echoes it back, so each caller can check
that the answer it got was made for its own request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from llmgateway.testing.hostile import (
    HostileUpstream,
    Peer,
    Request,
    answer,
    echo,
    interim,
)
from llmgateway.transport.http1 import Client, Limits
from tests.helpers import eventually

pytestmark = pytest.mark.security

REQUESTS = 6


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    client = Client(Limits(total=4))
    try:
        yield client
    finally:
        await client.close()


async def ask(client: Client, url: str, body: bytes) -> bytes:
    """One POST carrying `body`; the whole answer's body, the answer closed in the end."""
    response = await client.request(
        "POST", url + "/v1/chat", {}, body, connect_timeout=2.0, read_timeout=2.0
    )
    try:
        assert response.status == 200
        assert "link" not in response.headers  # nothing of an interim answer (103) stays
        return await response.read(1 << 20)
    finally:
        response.close()


def mine(echoed: bytes, body: bytes) -> bool:
    """Whether an echo (request head and body) is of the request that carried `body`."""
    return echoed.endswith(b"\r\n\r\n" + body)


def stale(n: int) -> bytes:
    """An extra answer that looks like an echo of another request."""
    return answer(b"POST /v1/chat HTTP/1.1\r\n\r\nrequest-%d" % n)


@pytest.mark.parametrize(
    ("before", "after", "connections"),
    [
        pytest.param(interim(100), b"", 1, id="100-continue"),
        pytest.param(interim(103) + interim(100), b"", 1, id="103-and-100"),
        pytest.param(b"", stale(0), REQUESTS, id="a-second-answer"),
        pytest.param(interim(100), interim(100) + stale(0), REQUESTS, id="interim-around"),
        pytest.param(b"", b"HTTP/1.1 200 OK\r\ncontent-le", REQUESTS, id="half-an-answer"),
    ],
)
async def test_each_caller_gets_the_answer_to_its_own_request(
    client: Client, before: bytes, after: bytes, connections: int
) -> None:
    async with HostileUpstream(echo(before=before, after=after)) as upstream:
        for n in range(REQUESTS):
            body = b"request-%d" % n
            assert mine(await ask(client, upstream.url, body), body)
        assert upstream.connections == connections  # a connection that said too much is gone
        assert [seen.body for seen in upstream.seen] == [b"request-%d" % n for n in range(REQUESTS)]


async def test_an_interim_answer_then_a_pause_is_not_the_answer(client: Client) -> None:
    async def script(request: Request, peer: Peer) -> None:
        await peer.send(interim(100))
        await asyncio.sleep(0.01)  # the upstream takes its time over the real answer
        await peer.send(answer(request.head + request.body))

    async with HostileUpstream(script) as upstream:
        for n in range(REQUESTS):
            body = b"request-%d" % n
            assert mine(await ask(client, upstream.url, body), body)
        assert upstream.connections == 1


async def test_concurrent_callers_on_shared_connections_get_their_own_answers(
    client: Client,
) -> None:
    # a second answer follows every other real one: connections die and are replaced while
    # other requests are in flight
    async def script(request: Request, peer: Peer) -> None:
        extra = stale(99) if request.body.endswith((b"0", b"2", b"4", b"6", b"8")) else b""
        await asyncio.sleep(0.001)  # the upstream's pace: requests overlap
        await peer.send(interim(100) + answer(request.head + request.body) + extra)

    async with HostileUpstream(script) as upstream:

        async def one(n: int) -> None:
            body = b"request-%d" % n
            assert mine(await ask(client, upstream.url, body), body)

        for _ in range(3):
            await asyncio.gather(*(one(n) for n in range(20)))
        assert len(upstream.seen) == 60


async def test_an_answer_sent_ahead_of_the_next_request_is_never_taken_for_it(
    client: Client,
) -> None:
    # after each real answer the upstream, once the caller is done with it, pushes an answer
    # for a request not yet made: the connection at rest is dropped, never reused
    async def script(request: Request, peer: Peer) -> None:
        await peer.send(answer(request.head + request.body))
        await asyncio.sleep(0.01)  # the upstream's pace: the caller is done by then
        await peer.send(stale(int(request.body.split(b"-")[1]) + 1))

    async with HostileUpstream(script) as upstream:
        for n in range(REQUESTS):
            body = b"request-%d" % n
            assert mine(await ask(client, upstream.url, body), body)
            await eventually(lambda: client.open_connections() == 0)
        assert upstream.connections == REQUESTS
