"""Write-behind of the gateway's usage counts: a dict increment per attempt, written in batches.

The request path calls `count()`, which adds to one integer in a dict keyed by provider, key,
model and hour (requests in the low 32 bits, failures above), so the memory held is bounded by
the keys used, not by the request rate, and never exceeds `limit` slots (an outage of the store
long enough to fill it drops the counts of new slots, counted in `dropped`). A background task
takes everything every `interval_sec` and writes it in batches of `batch_size` slots, one
transaction each (`llmgateway.store.usage.record`); a batch the store refuses goes back to be
added again next time. At a graceful stop `drain()` writes what is left; a process killed
outright loses at most one interval of counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from llmgateway.conductor.write_behind import flush_forever, flush_within, write_batches
from llmgateway.records import USAGE_FLUSH_SEC, USAGE_HOUR, UsageCount

log = logging.getLogger("llmgateway.events")

_SHIFT = 32
_ONE = 1
_FAILED = 1 + (1 << _SHIFT)
_LOW = (1 << _SHIFT) - 1

BATCH_SIZE = 1000
"""Counts written per statement (at 5,000 the flush's transient memory lifted a 100,000-key
gateway's peak resident memory past its bound)."""

Slot = tuple[str, int, str, int]
"""(provider, key id, model scope, hour start)."""


@dataclass(slots=True)
class UsageWriter:
    """Counts the attempts each key served and writes the counts to the store in batches."""

    write: Callable[[Sequence[UsageCount], float], Awaitable[object]]
    clock: Callable[[], float] = time.time
    interval_sec: float = USAGE_FLUSH_SEC
    batch_size: int = BATCH_SIZE
    limit: int = 250_000
    _pending: dict[Slot, int] = field(default_factory=dict)
    written: int = 0
    failures: int = 0
    dropped: int = 0

    def count(self, provider: str, key_id: int, model: str, failed: bool, now: float) -> None:
        """Count one attempt with the key (the request path: no I/O, O(1))."""
        slot = (provider, key_id, model, int(now // USAGE_HOUR) * USAGE_HOUR)
        pending = self._pending
        held = pending.get(slot)
        if held is None:
            if len(pending) >= self.limit:
                self.dropped += 1
                return
            held = 0
        pending[slot] = held + (_FAILED if failed else _ONE)

    @property
    def pending(self) -> int:
        """Slots waiting to be written."""
        return len(self._pending)

    async def flush(self) -> bool:
        """Write everything counted so far, a batch per transaction. False: the store failed;
        what was not written is kept for the next flush."""
        taken, self._pending = self._pending, {}
        if not taken:
            return True
        now = self.clock()
        error = await write_batches(
            taken,
            _count,
            lambda counts: self.write(counts, now),
            self._put_back,
            self.batch_size,
            self,
        )
        if error is not None:
            log.warning("usage write failed, %d counts kept for later: %s", self.pending, error)
        return error is None

    def _put_back(self, slots: list[tuple[Slot, int]]) -> None:
        pending = self._pending
        for slot, value in slots:
            held = pending.get(slot)
            if held is None and len(pending) >= self.limit:
                self.dropped += value & _LOW
                continue
            pending[slot] = (held or 0) + value

    async def drain(self, within: float) -> int:
        """Write everything pending (at a graceful stop), retrying a failing store until
        `within` seconds have passed. Returns how many slots were left unwritten."""
        await flush_within(self.flush, within)
        if self.pending:
            log.warning("stopping with %d usage counts unwritten", self.pending)
        return self.pending

    async def run(self) -> None:
        """Flush every `interval_sec` forever, backing off while the store fails (cancel to
        stop; then `drain()` writes what is left)."""
        await flush_forever(self.flush, self.interval_sec)


def _count(slot: Slot, value: int) -> UsageCount:
    provider, key_id, model, hour = slot
    return UsageCount(provider, key_id, model, hour, value & _LOW, value >> _SHIFT)
