"""The batch loop the write-behinds share (`write_behind.write_batches`, used by `UsageWriter`
and `TokenWriter`): batch by batch, what a failing store or a cancelled flush did not write is
put back, and the writer's tally counts the slots written and the batches refused."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from llmgateway.conductor.write_behind import write_batches


@dataclass
class Writes:
    """A store taking batches of records, then failing (`fail`) or hanging (`hang`) at the
    batch numbered `stop`; and a writer's tally and put-back."""

    stop: int
    hang: bool = False
    written: int = 0
    failures: int = 0

    def __post_init__(self) -> None:
        self.batches: list[Sequence[str]] = []
        self.put_back: list[tuple[int, int]] = []
        self.started = asyncio.Event()

    async def write(self, records: Sequence[str]) -> None:
        if len(self.batches) == self.stop:
            if not self.hang:
                raise ConnectionError("store unreachable")
            self.started.set()
            await asyncio.Event().wait()
        self.batches.append(records)

    def keep(self, slots: list[tuple[int, int]]) -> None:
        self.put_back.extend(slots)


TAKEN = {slot: slot * 10 for slot in range(5)}


def record(slot: int, value: int) -> str:
    return f"{slot}={value}"


async def test_a_failing_store_gets_the_rest_put_back() -> None:
    writes = Writes(stop=1)
    error = await write_batches(TAKEN, record, writes.write, writes.keep, 2, writes)
    assert isinstance(error, ConnectionError)
    assert writes.batches == [["0=0", "1=10"]]
    assert writes.put_back == [(2, 20), (3, 30), (4, 40)]
    assert (writes.written, writes.failures) == (2, 1)
    everything = Writes(stop=-1)
    assert (
        await write_batches(TAKEN, record, everything.write, everything.keep, 2, everything) is None
    )
    assert (everything.written, len(everything.batches), everything.put_back) == (5, 3, [])


async def test_a_flush_cancelled_mid_write_puts_the_rest_back() -> None:
    writes = Writes(stop=1, hang=True)
    flushing = asyncio.create_task(
        write_batches(TAKEN, record, writes.write, writes.keep, 2, writes)
    )
    await writes.started.wait()
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert writes.put_back == [(2, 20), (3, 30), (4, 40)]
    assert (writes.written, writes.failures) == (2, 0)
