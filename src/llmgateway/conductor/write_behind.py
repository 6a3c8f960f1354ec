"""The loops the gateway's write-behinds share (`UsageWriter`, `TokenWriter`): flush on a
schedule, backing off while the store fails, and flush what is left at a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

Flush = Callable[[], Awaitable[bool]]
"""Write what is pending; False when the store refused some of it (kept for the next try)."""

MAX_BACKOFF_SEC = 60.0


async def flush_forever(flush: Flush, interval_sec: float) -> None:
    """`flush` every `interval_sec` forever, the wait doubling (to a minute at most) while it
    fails (cancel to stop)."""
    wait = interval_sec
    while True:
        await asyncio.sleep(wait)
        ok = await flush()
        wait = interval_sec if ok else min(wait * 2, MAX_BACKOFF_SEC)


async def flush_within(flush: Flush, within: float) -> None:
    """`flush` until it succeeds or `within` seconds have passed, retrying with a short
    backoff (a graceful stop)."""
    backoff = 0.05
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while not await flush():
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
