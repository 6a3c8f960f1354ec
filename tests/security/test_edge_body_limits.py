"""What one client's body may cost the gateway, over a real socket against the real gateway
(`client_body_timeout_sec: 0.5`, `max_inflight_body_bytes: 64 KiB`, `max_body_bytes: 128 KiB`).

A body that stalls is answered 408 once it has been silent for the timeout, and the connection
closed; bodies held at once beyond the budget are refused 503 with `Retry-After`; a body
declared over the limit is refused 413 unread; a client leaving mid-upload is an INFO line,
never an error or a traceback. No key is taken for any of them, and every byte held is given
back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from llmgateway.conductor.admission import BodyBudget
from tests.helpers import eventually, forget_leftovers
from tests.security.edge import (
    CHAT,
    OPENAI_TOKEN,
    Rig,
    build_request,
    closed_by_server,
    openai_error,
    read_response,
    running_rig,
)

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="module")]

SILENCE = 0.5
BUDGET = 64 * 1024
UPLOAD = 48 * 1024
AUTH = ("authorization", f"Bearer {OPENAI_TOKEN}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    edge = {
        "client_body_timeout_sec": SILENCE,
        "max_inflight_body_bytes": BUDGET,
        "max_body_bytes": 128 * 1024,
    }
    async with running_rig(tmp_path_factory.mktemp("limits"), gateway=edge) as rig:
        yield rig


@pytest.fixture(autouse=True)
def fresh(rig: Rig) -> None:
    rig.reset()


def bodies(rig: Rig) -> BodyBudget:
    budget: BodyBudget = rig.app.state.edge.bodies
    return budget


def head_of(length: int) -> bytes:
    """A chat request's head declaring a `length`-byte body (and nothing of the body)."""
    return build_request("POST", "/v1/chat/completions", [AUTH, ("content-length", str(length))])


async def test_a_stalled_body_is_a_408_and_the_connection_closed(rig: Rig) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
    try:
        writer.write(head_of(1000) + b'{"model":"gpt-4o-mini","messages":[')
        await writer.drain()
        sent = time.monotonic()
        refused = await read_response(reader, SILENCE + 5)
        waited = time.monotonic() - sent
        openai_error(refused, 408, "request_timeout")
        assert refused.closes
        assert await closed_by_server(reader)
    finally:
        writer.close()
    assert waited >= SILENCE * 0.9
    await eventually(lambda: bodies(rig).held == 0)
    rig.assert_untouched()


async def test_a_trickling_body_is_a_408_once_it_falls_silent(rig: Rig) -> None:
    """Each part within the timeout keeps the upload alive; silence then ends it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
    try:
        writer.write(head_of(1000))
        for _ in range(4):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(SILENCE / 3)  # the client's pace, not a wait for the gateway
        refused = await read_response(reader, SILENCE + 5)
        openai_error(refused, 408, "request_timeout")
        assert refused.closes
    finally:
        writer.close()
    await eventually(lambda: bodies(rig).held == 0)
    rig.assert_untouched()


async def test_bodies_over_the_budget_are_a_503_with_retry_after(rig: Rig) -> None:
    first_reader, first = await asyncio.open_connection("127.0.0.1", rig.port)
    try:
        first.write(head_of(UPLOAD) + b" " * (40 * 1024))  # most of it, then it stalls
        await first.drain()
        await eventually(lambda: bodies(rig).held >= 40 * 1024)
        second_reader, second = await asyncio.open_connection("127.0.0.1", rig.port)
        try:
            second.write(head_of(UPLOAD) + b" " * 1024)
            await second.drain()
            refused = await read_response(second_reader)
            openai_error(refused, 503, "gateway_busy")
            assert refused.header("retry-after") == "1"
            assert refused.closes
        finally:
            second.close()
        # the first one is still held, then refused for its silence
        timed_out = await read_response(first_reader, SILENCE + 5)
        openai_error(timed_out, 408, "request_timeout")
    finally:
        first.close()
    await eventually(lambda: bodies(rig).held == 0)
    rig.assert_untouched()
    # and the budget serves again
    answered = await rig.send("POST", "/v1/chat/completions", body=CHAT)
    assert answered.status == 200
    assert bodies(rig).held == 0


async def test_a_body_declared_over_the_limit_is_a_413_unread(rig: Rig) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
    try:
        writer.write(head_of(128 * 1024 + 1))
        await writer.drain()
        refused = await read_response(reader)
        openai_error(refused, 413, "request_too_large")
        assert refused.closes
        assert await closed_by_server(reader)
    finally:
        writer.close()
    assert bodies(rig).held == 0
    rig.assert_untouched()


async def test_a_client_leaving_mid_upload_logs_no_error(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    await forget_leftovers(caplog)
    caplog.set_level(logging.INFO)
    for _ in range(3):
        _, writer = await asyncio.open_connection("127.0.0.1", rig.port)
        writer.write(head_of(UPLOAD) + b" " * 4096)
        await writer.drain()
        await eventually(lambda: bodies(rig).held >= 4096)
        writer.close()
        await eventually(lambda: bodies(rig).held == 0)
    await eventually(
        lambda: sum("client left mid-upload" in r.getMessage() for r in caplog.records) == 3
    )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if r.exc_info]
    assert "Traceback" not in caplog.text
    rig.assert_untouched()
