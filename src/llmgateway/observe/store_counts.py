"""The store's key counts as a process that serves metrics last read them (`StoreCounts`).

`llm_gateway_keys_total` (the original llmGateway's gauge, kept for its dashboards) and the
Keeper's `llmgateway_keys`/`llmgateway_key_states` are the store's counts of active (key,
model) rows by provider, model and status. Reading them is one grouped query, so each process
that serves `/metrics` (every gateway process, the Keeper) reads them in the background every
`REFRESH_SEC`, bounded by `TIMEOUT_SEC`, and a scrape shows the last counts read: neither a
request nor a scrape waits on the database. A read that fails keeps the last counts; the
failure is logged once, and so is the recovery.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from llmgateway.records import StatusCount

log = logging.getLogger("llmgateway.metrics")

REFRESH_SEC = 30.0
"""How often the counts are read again (the original's metrics cache was 30 s too)."""
TIMEOUT_SEC = 10.0
"""How long one read may take before it counts as failed."""

Read = Callable[[], Awaitable[Sequence[StatusCount]]]
"""One read of the store's counts (`Store.status_counts`)."""


@dataclass(slots=True)
class StoreCounts:
    """The last key counts read from the store; `refresh()` reads them again, `follow()`
    keeps doing so every `interval` seconds."""

    read: Read
    interval: float = REFRESH_SEC
    timeout: float = TIMEOUT_SEC
    counts: tuple[StatusCount, ...] = ()
    failing: bool = False

    async def refresh(self) -> bool:
        """Read the counts once (at most `timeout` seconds); True when they were read. On a
        failure the last counts stay, and only the first failure in a row is logged."""
        try:
            async with asyncio.timeout(self.timeout):
                counts = tuple(await self.read())
        except Exception as error:  # the store is down or slow: keep showing the last counts
            if not self.failing:
                log.warning(
                    "key counts for the metrics could not be read from the store (%s); the "
                    "last ones read stay on /metrics until a read succeeds (every %g s)",
                    "timed out" if isinstance(error, TimeoutError) else type(error).__name__,
                    self.interval,
                )
            self.failing = True
            return False
        if self.failing:
            log.info("key counts for the metrics read from the store again")
        self.failing = False
        self.counts = counts
        return True

    async def follow(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Refresh every `interval` seconds, forever (the first read is the caller's)."""
        while True:
            await sleep(self.interval)
            await self.refresh()
