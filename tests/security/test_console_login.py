"""Guessing the admin token through the console's login form, over a real socket: failures
are counted and logged (throttled, never the token), an address that keeps failing must wait
longer and longer (a try during the wait is refused unread, even with the right token), other
addresses are not held up, and the form's body is bounded."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from llmgateway.console.login_guard import (
    FIRST_WAIT_SEC,
    FREE_FAILURES,
    MAX_WAIT_SEC,
    LoginGuard,
)
from tests.console_rig import ADMIN_TOKEN, ConsoleRig

WRONG = "console-admin-token-5d1f0a9e7c3b2a4X"


async def fail(rig: ConsoleRig, token: str = WRONG) -> int:
    answer = await rig.post("/login", data={"token": token})
    assert answer.cookie is None
    return answer.status


async def test_failures_are_counted_and_answered_with_the_form(rig: ConsoleRig) -> None:
    wrong = await rig.post("/login", data={"token": WRONG, "next": "/admin/proxies"})
    assert wrong.status == 401
    assert "Wrong token." in wrong.text
    assert 'value="/admin/proxies"' in wrong.text  # where to go once right
    assert WRONG not in wrong.text
    assert (await rig.post("/login", data={"token": ""})).status == 401
    assert rig.auth_failures("wrong") == 1
    assert rig.auth_failures("missing") == 1


async def test_an_address_that_keeps_failing_waits_longer_each_time(rig: ConsoleRig) -> None:
    for _ in range(FREE_FAILURES):
        assert await fail(rig) == 401
    expected = FIRST_WAIT_SEC
    for _ in range(12):
        assert await fail(rig) == 401  # a failure after the wait: the wait doubles
        held = await rig.post("/login", data={"token": ADMIN_TOKEN})
        assert held.status == 429, "the right token is not even looked at during the wait"
        assert held.cookie is None
        assert int(held.headers["Retry-After"]) == max(1, round(expected + 0.49))
        rig.clock.advance(expected - 0.01)
        assert (await rig.post("/login", data={"token": ADMIN_TOKEN})).status == 429
        rig.clock.advance(0.01)
        expected = min(MAX_WAIT_SEC, expected * 2)
    assert expected == MAX_WAIT_SEC
    assert (await rig.post("/login", data={"token": ADMIN_TOKEN})).status == 303
    # success forgives: the next failure is free again
    assert await fail(rig) == 401
    assert await fail(rig) == 401


async def test_bearer_guesses_share_the_wait(rig: ConsoleRig) -> None:
    for _ in range(FREE_FAILURES + 1):
        await fail(rig)
    right = await rig.get("/", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert right.status == 429
    rig.clock.advance(FIRST_WAIT_SEC)
    assert (await rig.get("/", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})).status == 200


@pytest.fixture
async def from_another_address(rig: ConsoleRig) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def test_another_address_is_not_held_up(
    rig: ConsoleRig, from_another_address: aiohttp.ClientSession
) -> None:
    for _ in range(FREE_FAILURES + 1):
        await fail(rig)
    assert (await rig.post("/login", data={"token": ADMIN_TOKEN})).status == 429
    async with from_another_address.post(
        rig.base + "/login", data={"token": ADMIN_TOKEN}, allow_redirects=False
    ) as answer:
        assert answer.status == 303


def test_the_guard_remembers_a_bounded_number_of_addresses() -> None:
    guard = LoginGuard(max_addresses=100)
    for i in range(10_000):
        for _ in range(FREE_FAILURES + 1):
            guard.failed(f"10.0.{i // 256}.{i % 256}", 1000.0)
    assert len(guard) == 100
    assert guard.wait("10.0.39.15", 1000.0) == FIRST_WAIT_SEC  # the most recent: kept
    assert guard.wait("10.0.0.1", 1000.0) == 0.0  # the oldest: forgotten
    assert guard.wait("10.0.39.15", 1000.0 + 3600) == 0.0  # an hour later: forgotten


async def test_failures_are_logged_throttled_without_the_token(
    rig: ConsoleRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for i in range(3):
        rig.clock.advance(FIRST_WAIT_SEC * 2**i)
        await fail(rig)
    refusals = [r for r in caplog.records if r.name == "llmgateway.auth"]
    assert [r.getMessage() for r in refusals] == ["refused a request: wrong admin token"]
    assert refusals[0].__dict__["surface"] == "admin"
    assert refusals[0].__dict__["sent_as"] == "login-form"
    assert refusals[0].__dict__["token_length"] == len(WRONG)
    rig.clock.advance(61)
    await fail(rig)
    refusals = [r for r in caplog.records if r.name == "llmgateway.auth"]
    assert len(refusals) == 2
    assert refusals[1].__dict__["not_logged_before"] == 2
    rig.clock.advance(FIRST_WAIT_SEC)  # the fourth failure must wait
    await rig.login()
    everything = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert ADMIN_TOKEN not in everything
    assert WRONG not in everything


async def test_an_oversized_login_body_is_refused_unread(rig: ConsoleRig) -> None:
    big = {"token": "x" * 5000}
    answer = await rig.post("/login", data=big)
    assert answer.status == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: read up to the limit
        yield b"token="
        for _ in range(100):
            yield b"y" * 100

    streamed = await rig.post(
        "/login",
        data=chunks(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert streamed.status == 413
    many = "&".join(f"f{i}=1" for i in range(50))
    fields = await rig.post(
        "/login", data=many, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert fields.status == 400
    assert rig.auth_failures("wrong") == 0


@pytest.mark.parametrize(
    "target",
    ["//evil.example/", "https://evil.example/", "/admin//evil.example", "/elsewhere",
     "/admin/login", "/admin\\@evil", "javascript:alert(1)"],
)  # fmt: skip
async def test_login_goes_only_to_a_console_page(rig: ConsoleRig, target: str) -> None:
    answer = await rig.post("/login", data={"token": ADMIN_TOKEN, "next": target})
    assert answer.status == 303
    assert answer.headers["Location"] == "/admin/"
    page = await rig.get(f"/login?next={target}")
    assert 'name="next" value="/admin/"' in page.text
