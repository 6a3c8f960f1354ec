"""`LazyTimer`: a deadline moved later sets no new timer; when the timer fires early, `check`
says when to look again; a sooner deadline replaces the timer; `cancel` stops it."""

from __future__ import annotations

import asyncio

from tests.helpers import eventually

from llmgateway.transport.lazy_timer import LazyTimer


async def test_a_deadline_moved_later_is_looked_at_once_it_is_due() -> None:
    loop = asyncio.get_running_loop()
    looked: list[float] = []
    due = loop.time() + 0.05

    def check(now: float) -> float | None:
        looked.append(now)
        return due if now < due else None

    timer = LazyTimer(loop, check)
    timer.at(due)
    due = loop.time() + 0.15  # moved later: the set timer stays and looks again when it fires
    timer.at(due)
    await asyncio.sleep(0.3)  # a window past both deadlines: it must hold exactly two looks
    assert len(looked) == 2
    assert looked[0] < due <= looked[1]


async def test_a_sooner_deadline_replaces_the_timer_and_cancel_stops_it() -> None:
    loop = asyncio.get_running_loop()
    looked: list[float] = []

    def check(now: float) -> float | None:
        looked.append(now)
        return None

    timer = LazyTimer(loop, check)
    start = loop.time()
    timer.at(start + 10.0)
    timer.at(start + 0.05)
    await eventually(lambda: looked, within=5)
    assert len(looked) == 1
    assert looked[0] < start + 1.0
    timer.at(loop.time() + 0.05)
    timer.cancel()
    await asyncio.sleep(0.15)  # past the cancelled deadline: no look must come
    assert len(looked) == 1


async def test_a_closed_timer_lets_go_of_its_owner() -> None:
    """Owner → timer → owner's bound method is a cycle; `close` breaks it, so the owner goes
    as soon as it is dropped (a response per request must not wait for the collector)."""
    import gc
    import weakref

    class Owner:
        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self.timer = LazyTimer(loop, self.check)

        def check(self, now: float) -> float | None:
            return None

    loop = asyncio.get_running_loop()
    owner = Owner(loop)
    owner.timer.at(loop.time() + 10.0)
    owner.timer.close()
    gone = weakref.ref(owner)
    gc.disable()
    try:
        del owner
        assert gone() is None
    finally:
        gc.enable()
