"""Write-behind of the gateway's key-status findings: bounded, coalesced, batched.

The request path only calls `offer()`, which is a dict assignment. A background task drains the
pending changes to the store in one transaction per batch. Changes to the same key × model
coalesce (the latest wins, a cooldown deadline never moves earlier), so the queue is bounded by
the number of keys, not by the request rate. While the store is down the changes wait and are
written once it is back. At a graceful stop `drain()` writes everything still pending, for as
long as `gateway.shutdown_drain_timeout_sec` allows a store that does not answer; a process
killed outright loses what waited (at most one write interval of findings, learnt again from
the next answers), never what was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from llmgateway.core.outcomes import KeyStatus
from llmgateway.core.pool_keys import StatusChange
from llmgateway.records import StatusEvent

log = logging.getLogger("llmgateway.events")

RECHECK_AFTER_SEC = 60.0
"""A key the gateway marked bad is re-probed by the Keeper this soon (or at its cooldown's end)."""


@dataclass(slots=True)
class StatusWriter:
    """Collects status changes and writes them to the store in batches."""

    write: Callable[[Sequence[StatusEvent]], Awaitable[object]]
    batch_size: int = 500
    interval_sec: float = 0.5
    _pending: dict[tuple[int, str], StatusEvent] = field(default_factory=dict)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    written: int = 0
    failures: int = 0

    def offer(self, provider: str, change: StatusChange, now: float) -> None:
        """Queue one change (called on the request path: no I/O, O(1))."""
        del provider  # the key id is enough for the store; kept for the call sites' clarity
        recheck = None
        if change.status is not KeyStatus.VALID:
            recheck = max(now + RECHECK_AFTER_SEC, change.cooldown_until or 0.0)
        event = StatusEvent(
            key_id=change.key_id,
            model=change.model,
            status=change.status,
            reason=change.reason,
            cooldown_until=change.cooldown_until,
            status_code=change.status_code,
            error_message=None,
            observed_at=now,
            next_check_at=recheck,
        )
        slot = (change.key_id, change.model)
        previous = self._pending.get(slot)
        if previous is not None and previous.cooldown_until is not None:
            later = max(previous.cooldown_until, event.cooldown_until or 0.0)
            if event.status is not KeyStatus.VALID:
                event = replace(event, cooldown_until=later)
        self._pending[slot] = event
        if len(self._pending) >= self.batch_size:
            self._wakeup.set()

    def holds(self, key_id: int, model: str) -> bool:
        """Whether a finding about this key × model waits to be written (so the store's row
        is older than what this gateway knows)."""
        return (key_id, model) in self._pending

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> int:
        """Write what is pending now; on failure it stays pending. Returns how many were written."""
        if not self._pending:
            return 0
        batch = list(self._pending.items())[: self.batch_size]
        try:
            await self.write([event for _, event in batch])
        except Exception as error:  # the store is down: keep everything, try again later
            self.failures += 1
            log.warning("status write failed, %d changes kept for later: %s", self.pending, error)
            return 0
        for slot, event in batch:
            if self._pending.get(slot) is event:  # not superseded while we wrote
                del self._pending[slot]
        self.written += len(batch)
        return len(batch)

    async def drain(self, within: float) -> int:
        """Write everything pending (at a graceful stop), retrying a failing store until
        `within` seconds have passed. Returns how many changes were dropped (0: none); a drop
        is logged as a warning with its count."""
        backoff = 0.05
        try:
            async with asyncio.timeout(within):
                while self._pending:
                    if not await self.flush():
                        await asyncio.sleep(backoff)  # the store failed: try again shortly
                        backoff = min(backoff * 2, 1.0)
        except TimeoutError:
            pass
        dropped = self.pending
        if dropped:
            log.warning(
                "stopping with %d status changes unwritten: the store did not take them "
                "within gateway.shutdown_drain_timeout_sec (%g s); they are learnt again from "
                "the next answers",
                dropped,
                within,
            )
        return dropped

    async def run(self) -> None:
        """Drain forever (cancel to stop; then `drain()` writes what is left)."""
        backoff = self.interval_sec
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=backoff)
            self._wakeup.clear()
            before = self.failures
            while await self.flush() == self.batch_size:
                pass
            failed = self.failures > before
            backoff = min(backoff * 2, 10.0) if failed else self.interval_sec
