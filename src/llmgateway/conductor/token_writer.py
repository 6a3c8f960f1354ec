"""Write-behind of the tokens the gateway relayed: a few list increments per answer, written in
batches by a background task.

The request path calls `count()` once an answer has been relayed (its usage read from the bytes
as they went by, `providers.usage`): six integers added in a list keyed by client, route,
provider, model, key and hour. Memory is bounded by the distinct slots (at most `limit`; a store
outage long enough to fill it drops the counts of new slots, counted in `dropped`), not by the
request rate. Every `interval_sec` everything pending is written in batches of `batch_size`
slots, one transaction each (`llmgateway.store.token_usage.record`); a batch the store refuses
is added back for the next flush. At a graceful stop `drain()` writes what is left.

The clients' quota spends (`conductor.quotas`) are told each answer's tokens and each batch
written. Each answer also counts in `llmgateway_tokens_total` (the provider's metrics, model label
bounded; never a key or a client label).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from llmgateway.conductor.quotas import Quotas
from llmgateway.conductor.write_behind import flush_forever, flush_within, write_batches
from llmgateway.observe.metrics import Metrics
from llmgateway.providers.usage import Tokens
from llmgateway.records import USAGE_FLUSH_SEC, USAGE_HOUR, TokenCount

log = logging.getLogger("llmgateway.events")

BATCH_SIZE = 1000
"""Slots written per transaction."""

Slot = tuple[int, str, str, str, str, int]
"""(hour start, client, route, provider, model, key id)."""


@dataclass(slots=True)
class TokenWriter:
    """Counts each relayed answer's tokens and writes the counts to the store in batches."""

    write: Callable[[Sequence[TokenCount]], Awaitable[object]]
    metrics: Metrics | None = None
    clock: Callable[[], float] = time.time
    interval_sec: float = USAGE_FLUSH_SEC
    batch_size: int = BATCH_SIZE
    limit: int = 250_000
    quotas: Quotas | None = None  # the clients' quota spends, told what is counted and written
    _pending: dict[Slot, list[int]] = field(default_factory=dict)
    written: int = 0
    failures: int = 0
    dropped: int = 0

    def count(
        self,
        client: str,
        route: str,
        provider: str,
        model: str,
        key_id: int,
        tokens: Tokens | None,
    ) -> None:
        """Count one relayed answer (the request path: no I/O, O(1)); `tokens` None: the
        answer carried no usage."""
        hour = int(self.clock() // USAGE_HOUR) * USAGE_HOUR
        slot = (hour, client, route, provider, model, key_id)
        held = self._pending.get(slot)
        if held is None:
            if len(self._pending) >= self.limit:
                self.dropped += 1
                return
            held = self._pending[slot] = [0, 0, 0, 0, 0, 0]
        held[0] += 1
        if tokens is None:
            held[5] += 1
        else:
            held[1] += tokens.input
            held[2] += tokens.output
            held[3] += tokens.cached
            held[4] += tokens.reasoning
            if self.quotas is not None:
                self.quotas.count(client, hour, tokens.input + tokens.output)
        if self.metrics is not None:
            self.metrics.for_provider(provider).tokens(model, tokens)

    @property
    def pending(self) -> int:
        """Slots waiting to be written."""
        return len(self._pending)

    async def flush(self) -> bool:
        """Write everything counted so far, a batch per transaction. False: the store failed;
        what was not written is kept for the next flush."""
        taken, self._pending = self._pending, {}
        error = await write_batches(
            taken, _record, self.write, self._put_back, self.batch_size, self, self._written
        )
        if error is not None:
            log.warning("token write failed, %d counts kept for later: %s", self.pending, error)
        return error is None

    def _written(self, batch: list[tuple[Slot, list[int]]]) -> None:
        """The quotas learn what the store now holds (they stop adding it on their own)."""
        if self.quotas is not None:
            for slot, values in batch:
                self.quotas.written(slot[1], slot[0], values[1] + values[2])

    def _put_back(self, slots: list[tuple[Slot, list[int]]]) -> None:
        pending = self._pending
        for slot, values in slots:
            held = pending.get(slot)
            if held is None:
                if len(pending) >= self.limit:
                    self.dropped += values[0]
                    continue
                pending[slot] = values
                continue
            for index, value in enumerate(values):
                held[index] += value

    async def drain(self, within: float) -> int:
        """Write everything pending (at a graceful stop), retrying a failing store until
        `within` seconds have passed. Returns how many slots were left unwritten."""
        await flush_within(self.flush, within)
        if self.pending:
            log.warning("stopping with %d token counts unwritten", self.pending)
        return self.pending

    async def run(self) -> None:
        """Flush every `interval_sec` forever, backing off while the store fails."""
        await flush_forever(self.flush, self.interval_sec)


def _record(slot: Slot, values: list[int]) -> TokenCount:
    return TokenCount(*slot, *values)
