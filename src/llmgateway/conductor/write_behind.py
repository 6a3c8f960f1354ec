"""The loops the gateway's write-behinds share (`UsageWriter`, `TokenWriter`): write what is
pending batch by batch, flush on a schedule, backing off while the store fails, and flush what
is left at a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

Slot = TypeVar("Slot")
Value = TypeVar("Value")
Record = TypeVar("Record")

Flush = Callable[[], Awaitable[bool]]
"""Write what is pending; False when the store refused some of it (kept for the next try)."""

MAX_BACKOFF_SEC = 60.0


class Tally(Protocol):
    """A write-behind's own counts of its writes."""

    written: int  # slots written
    failures: int  # batches the store refused


async def write_batches(
    taken: dict[Slot, Value],
    record: Callable[[Slot, Value], Record],
    write: Callable[[Sequence[Record]], Awaitable[object]],
    put_back: Callable[[list[tuple[Slot, Value]]], None],
    batch_size: int,
    tally: Tally,
    written: Callable[[list[tuple[Slot, Value]]], None] | None = None,
) -> Exception | None:
    """Write the slots `taken` from a write-behind, `batch_size` per transaction, each slot as
    `record` makes it (each batch the store took is handed to `written`, when given). When the
    store fails, or the flush is cancelled mid-write (the batch rolled back: the drain writes
    it), what was not written is `put_back` for the next flush. Returns the store's error, None
    when everything was written."""
    slots = list(taken.items())
    for start in range(0, len(slots), batch_size):
        batch = slots[start : start + batch_size]
        try:
            await write([record(slot, value) for slot, value in batch])
        except asyncio.CancelledError:
            put_back(slots[start:])
            raise
        except Exception as error:  # the store is down: keep the rest for later
            tally.failures += 1
            put_back(slots[start:])
            return error
        tally.written += len(batch)
        if written is not None:
            written(batch)
    return None


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
