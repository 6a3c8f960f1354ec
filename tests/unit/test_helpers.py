"""The shared waiting helper: it waits for a plain or async condition, and says what did not
happen within how long."""

from __future__ import annotations

import asyncio
import time

import pytest
from tests.helpers import eventually


async def test_eventually_waits_until_a_condition_holds_and_says_how_long() -> None:
    loop = asyncio.get_running_loop()
    due = loop.time() + 0.05
    took = await eventually(lambda: loop.time() >= due, within=5)
    assert 0.04 <= took < 5


async def test_eventually_awaits_an_async_condition() -> None:
    looks: list[int] = []

    async def third_look() -> bool:
        looks.append(1)
        return len(looks) == 3

    await eventually(third_look, within=5, step=0)
    assert len(looks) == 3


async def test_eventually_fails_saying_what_did_not_happen_within_how_long() -> None:
    never_filled: list[int] = []
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"not within 0\.1 s: .*lambda: never_filled"):
        await eventually(lambda: never_filled, within=0.1)
    assert time.monotonic() - started >= 0.1
    with pytest.raises(AssertionError, match=r"not within 0 s: the queue emptying"):
        await eventually(lambda: False, within=0, what="the queue emptying")
