"""A hostile SOCKS5 proxy as the real gateway's static proxy: one answering garbage, one sending
an endless reply, one that never answers, one demanding a login the URL lacks, one refusing
the target, one hanging up or resetting the connection mid-handshake. Each is bounded by the
provider's connect timeout (the endless reply by what the handshake reads: never buffered
whole), answered as the client's API shapes a failure, counted as an egress fault
(`egress_error`) and never blamed on a key; the proxy's password appears in no answer and no
log line."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import openai
import pytest

from llmgateway.core.outcomes import KeyStatus
from llmgateway.testing.configs import write_keys
from llmgateway.testing.fake_upstream import FakeUpstream
from tests.helpers import OPENAI_TOKEN, Running, gateway_settings, start_gateway

pytestmark = pytest.mark.security

CONNECT_SEC = 0.5
POOL_SEC = 0.5
PASSWORD = "hostile-socks-pa55word"
ENDLESS_CAP = 256 << 20  # the endless reply stops by itself past this
KEYS = [f"sk-good-hostile-socks-{i:03d}-abc" for i in range(3)]

Behaviour = Callable[["HostileSocks", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class HostileSocks:
    """A loopback server speaking (or pretending to speak) SOCKS5 the way `behaviour` says."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.port = 0
        self.connections = 0
        self.sent = 0  # bytes of the endless reply written before the client hung up
        self.hung_up = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> HostileSocks:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def url(self, login: bool = True) -> str:
        return f"socks5://gw:{PASSWORD}@127.0.0.1:{self.port}" if login else self.bare_url

    @property
    def bare_url(self) -> str:
        return f"socks5://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.behaviour(self, reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            self.hung_up = True
        finally:
            self._tasks.discard(task)
            writer.transport.abort()


async def greeting(reader: asyncio.StreamReader) -> bytes:
    """The client's method offer: version, count, methods."""
    head = await reader.readexactly(2)
    return await reader.readexactly(head[1])


async def garbage(_: HostileSocks, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await greeting(reader)
    w.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
    await w.drain()
    await reader.read(1)


async def endless(s: HostileSocks, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await greeting(reader)
    chunk = b"\xff" * (64 << 10)
    while s.sent < ENDLESS_CAP:
        w.write(chunk)
        await w.drain()  # raises once the client has hung up
        s.sent += len(chunk)


async def silent(_: HostileSocks, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await reader.read(1)  # whatever comes, nothing goes back
    await asyncio.sleep(3600)


async def demands_login(
    _: HostileSocks, reader: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    await greeting(reader)
    w.write(b"\x05\x02")  # user and password, though the client offered none
    await w.drain()
    await reader.read(1)


async def refuses_target(
    _: HostileSocks, reader: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    offered = await greeting(reader)
    if 2 in offered:
        w.write(b"\x05\x02")
        await w.drain()
        head = await reader.readexactly(2)
        await reader.readexactly(head[1])
        size = (await reader.readexactly(1))[0]
        await reader.readexactly(size)
        w.write(b"\x01\x00")  # login accepted
    else:
        w.write(b"\x05\x00")
    await w.drain()
    await reader.readexactly(4)
    w.write(b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00")  # connection refused by the target
    await w.drain()
    await reader.read(1)


async def hangs_up(_: HostileSocks, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await greeting(reader)
    w.write(b"\x05")  # half a reply, then gone


async def resets(_: HostileSocks, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await greeting(reader)
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, no FIN


@contextlib.asynccontextmanager
async def gateway_via(tmp_path: Path, fake: FakeUpstream, proxy_url: str) -> AsyncIterator[Running]:
    write_keys(tmp_path / "keys" / "openai", KEYS)
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-hostile-socks-0001-ab"])
    settings = gateway_settings(
        tmp_path,
        fake,
        proxy_config={"mode": "static", "static_url": proxy_url},
        timeouts={"connect": CONNECT_SEC, "pool": POOL_SEC, "read": 5},
    )
    async with start_gateway(settings) as gw:
        yield gw


def egress_attempts(gw: Running) -> dict[str, float]:
    """The openai provider's upstream attempts by reason."""
    found = gw.samples("llmgateway_upstream_attempts_total")
    return {labels["reason"]: value for labels, value in found if labels["provider"] == "openai"}


@pytest.mark.parametrize(
    ("behaviour", "login"),
    [
        pytest.param(garbage, True, id="garbage"),
        pytest.param(endless, True, id="endless-reply"),
        pytest.param(silent, True, id="never-answers"),
        pytest.param(demands_login, False, id="demands-a-login"),
        pytest.param(refuses_target, True, id="refuses-the-target"),
        pytest.param(hangs_up, True, id="hangs-up-mid-handshake"),
        pytest.param(resets, True, id="resets-mid-handshake"),
    ],
)
async def test_a_hostile_socks_proxy_is_an_egress_fault_bounded_in_time(
    tmp_path: Path,
    fake: FakeUpstream,
    behaviour: Behaviour,
    login: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        HostileSocks(behaviour) as hostile,
        gateway_via(tmp_path, fake, hostile.url(login)) as gw,
        openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=OPENAI_TOKEN, max_retries=0) as sdk,
    ):
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
        took = time.monotonic() - started
        assert caught.value.status_code in (502, 503)
        assert isinstance(caught.value.body, dict)  # the API's error shape, not a traceback
        assert PASSWORD not in caught.value.response.text
        # the pool wait and the connect (handshake included) bound it, with room for a slow
        # machine; the endless reply is cut as soon as the handshake reads a wrong byte
        assert took < POOL_SEC + CONNECT_SEC + 2.0, took
        assert hostile.connections >= 1
        if behaviour is endless:
            assert hostile.hung_up
            assert hostile.sent < ENDLESS_CAP

        attempts = egress_attempts(gw)
        assert set(attempts) == {"egress_error"}, attempts
        assert sum(fake.calls_by_key().values()) == 0
        assert gw.cooldowns() == {}
        gateway = gw.gateway
        assert gateway.writer is not None
        assert gateway.store is not None
        await gateway.writer.flush()
        snapshot = await gateway.store.snapshot()
        assert {r.status for r in snapshot.keys} == {KeyStatus.UNTESTED}
    assert PASSWORD not in caplog.text
